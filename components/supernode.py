"""A site's SuperNode in a namespace of its own: the only namespace that holds the site's private key.

Flower 1.42's Kubernetes executor lists the Secrets of the namespace it launches task pods into
(`list_namespaced_secret` with a label selector; RBAC cannot narrow a list to some Secrets), so
its ServiceAccount can read every Secret there. The SuperNode, its authentication key and its
Runtime API certificate therefore live in `SiteConfig.supernode_namespace`, where no Role grants
anything; the site's executor and task pods reach the Runtime API across the namespace boundary.
This namespace holds no data: removing the site deletes it, and the key with it.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import pulumi
import pulumi_kubernetes as k8s

from components import kube, naming
from components.config import FederationConfig, SiteConfig
from components.pki_resources import CertificateAuthority, ServerCertificate, SupernodeKey

SUPERNODE = "supernode"
AUTH_SECRET = "supernode-auth"
RUNTIME_TLS_SECRET = "supernode-runtime-tls"

_AUTH_DIR = "/etc/flowerbed/auth"
_FLWR_HOME = "/var/lib/flowerbed/flwr-home"
_SIZING = kube.Sizing("100m", "256Mi", "1", "1Gi")


@dataclass(frozen=True)
class SiteTrust:
    """The two CAs a site works with.

    In one stack both are the federation CA. A consortium member's site stack has the federation
    CA's certificate only (from the join bundle), not its key, so a CA of its own, in its own state,
    signs its SuperNodes' Runtime API certificates; its executor and task pods trust that CA,
    from the Secret `runtime_ca_secret` of the site's namespace.
    """

    federation_ca: pulumi.Input[str]  # PEM: the SuperNode verifies SuperLink's certificate with it
    runtime_ca: CertificateAuthority  # signs the SuperNode's Runtime API certificate
    runtime_ca_secret: str = naming.CA_SECRET


def supernode_args(config: FederationConfig, site: SiteConfig) -> list[str]:
    tls = naming.TLS_DIR
    return [
        "--superlink", config.fleet.address,
        "--root-certificates", f"{naming.CA_DIR}/ca.crt",
        "--auth-supernode-private-key", f"{_AUTH_DIR}/supernode.key",
        "--isolation", "process",
        "--node-config", naming.node_config(site.name, config.federation),
        # The Runtime API (for this site's SuperExec and task pods) on all interfaces, over TLS.
        "--host", "0.0.0.0",
        "--port", str(naming.SUPERNODE_RUNTIME_PORT),
        "--ssl-certfile", f"{tls}/tls.crt",
        "--ssl-keyfile", f"{tls}/tls.key",
        "--ssl-ca-certfile", f"{tls}/ca.crt",
    ]


def runtime_address(site: SiteConfig) -> str:
    """Where the site's SuperExec and task pods dial the SuperNode's Runtime API."""
    return naming.service_address(naming.SUPERNODE_SERVICE, site.supernode_namespace, naming.SUPERNODE_RUNTIME_PORT)


def declare(prefix: str, *, config: FederationConfig, site: SiteConfig, trust: SiteTrust,
            key: SupernodeKey, clients: Sequence[str], parent: pulumi.Resource) -> list[pulumi.Resource]:
    """The SuperNode's namespace, Secrets, Deployment, Runtime API Service and NetworkPolicies.

    `clients` are the roles of the site-namespace pods that may call the Runtime API. Returns
    what those clients need to exist first (the Service and the SuperNode's Secrets).
    """
    namespace = site.supernode_namespace

    def labels(role: str) -> dict[str, str]:
        return kube.labels(config.federation, role, site.name)

    def meta(obj_name: str, role: str = SUPERNODE) -> k8s.meta.v1.ObjectMetaArgs:
        return kube.metadata(obj_name, namespace, labels(role))

    in_ns, _ = kube.namespace(f"{prefix}-supernode-namespace", namespace, labels(SUPERNODE), existing=False,
                              keep=(False, False), parent=parent)
    pki = config.pki
    runtime_cert = ServerCertificate(
        f"{prefix}-runtime-certificate", ca=trust.runtime_ca, dns_names=naming.supernode_runtime_names(namespace),
        validity_days=pki.validity_days, renew_before_days=pki.renew_before_days,
        opts=pulumi.ResourceOptions(parent=parent))
    data: dict[str, Mapping[str, pulumi.Input[str]]] = {
        naming.CA_SECRET: {"ca.crt": trust.federation_ca},
        AUTH_SECRET: {"supernode.key": key.private_openssh},
        RUNTIME_TLS_SECRET: {"tls.crt": runtime_cert.cert_pem, "tls.key": runtime_cert.key_pem,
                             "ca.crt": trust.runtime_ca.cert_pem},
    }
    secrets = [k8s.core.v1.Secret(f"{prefix}-{resource}", metadata=meta(name), string_data=data[name],
                                  type="kubernetes.io/tls" if name == RUNTIME_TLS_SECRET else None, opts=in_ns)
               for resource, name in (("supernode-ca", naming.CA_SECRET), ("auth", AUTH_SECRET),
                                      ("runtime-tls", RUNTIME_TLS_SECRET))]

    images = config.images
    container = kube.container(
        "supernode", images.platform, images, command=["flower-supernode"], args=supernode_args(config, site),
        sizing=_SIZING, env={"FLWR_HOME": _FLWR_HOME},
        ports=[k8s.core.v1.ContainerPortArgs(name="runtime", container_port=naming.SUPERNODE_RUNTIME_PORT)],
        mounts=[kube.mount("ca", naming.CA_DIR), kube.mount("auth", _AUTH_DIR), kube.mount("tls", naming.TLS_DIR),
                kube.mount("flwr-home", _FLWR_HOME, read_only=False)],
        probe=kube.https_probe(naming.SUPERNODE_RUNTIME_PORT))
    pods = kube.selector(config.federation, SUPERNODE)
    k8s.apps.v1.Deployment(f"{prefix}-supernode", metadata=meta(SUPERNODE), spec=k8s.apps.v1.DeploymentSpecArgs(
        replicas=1,
        # One key, one node: never two SuperNodes of this site at once.
        strategy=k8s.apps.v1.DeploymentStrategyArgs(type="Recreate"),
        selector=k8s.meta.v1.LabelSelectorArgs(match_labels=pods),
        template=kube.pod_template(labels(SUPERNODE), kube.pod_spec(images, [container], [
            kube.secret_volume("ca", naming.CA_SECRET), kube.secret_volume("auth", AUTH_SECRET),
            kube.secret_volume("tls", RUNTIME_TLS_SECRET),
            k8s.core.v1.VolumeArgs(name="flwr-home", empty_dir=k8s.core.v1.EmptyDirVolumeSourceArgs(
                size_limit="2Gi"))]), {kube.content_key("Secret", name): values for name, values in data.items()})),
        opts=pulumi.ResourceOptions.merge(in_ns, pulumi.ResourceOptions(depends_on=secrets)))
    service = k8s.core.v1.Service(f"{prefix}-runtime", metadata=meta(naming.SUPERNODE_SERVICE),
                                  spec=k8s.core.v1.ServiceSpecArgs(
        type="ClusterIP", selector=pods,
        ports=[k8s.core.v1.ServicePortArgs(name="runtime", port=naming.SUPERNODE_RUNTIME_PORT,
                                           target_port="runtime", protocol="TCP")]), opts=in_ns)

    # In: the Runtime API from the site's own clients only. Out: the server endpoint only (and DNS).
    kube.baseline_policies(f"{prefix}-supernode", namespace, labels(SUPERNODE), config.clusters[site.cluster].dns,
                           kube.baseline_scope(config.federation, False), in_ns)
    kube.network_policy(f"{prefix}-supernode-policy", meta(SUPERNODE), pods, ingress=[
        kube.Flow(ports=(naming.SUPERNODE_RUNTIME_PORT,), pods=kube.selector(config.federation, role),
                  namespace=site.namespace) for role in clients], egress=fleet_flows(config, site), opts=in_ns)
    return [*secrets, service]


def fleet_flows(config: FederationConfig, site: SiteConfig) -> list[kube.Flow]:
    """Where a SuperNode may connect: the fleet endpoint (its addresses, the public port).

    On the server's own cluster (one-stack shape) kube-proxy rewrites a connection to the endpoint's node port or
    load-balancer address into one to the SuperLink pod's fleet listener before any policy sees it
    (NetworkPolicies apply to pod addresses, after Service translation), so there the SuperLink pods'
    fleet port is admitted too; kube-router refused the connection without it (tests/pods).
    """
    flows = [kube.Flow(ports=(config.fleet.port,), cidrs=config.fleet.cidrs)]
    if config.server is not None and site.cluster == config.server.cluster:
        flows.append(kube.Flow(ports=(naming.FLEET_PORT,), pods=kube.selector(config.federation, naming.SUPERLINK),
                               namespace=config.server.namespace))
    return flows
