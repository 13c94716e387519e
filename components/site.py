"""ClientSite: one organisation's SuperNode, its ClientApp executor (GPU pods) and its study data."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import pulumi
import pulumi_kubernetes as k8s

from components import kube, naming, superexec
from components.config import FederationConfig, SiteConfig
from components.pki_resources import CertificateAuthority, ServerCertificate, SupernodeKey

TYPE = "flowerbed:index:ClientSite"

SUPERNODE = "supernode"
EXECUTOR = "clientapp-executor"
TASK = "clientapp-task"
AUTH_SECRET = "supernode-auth"
RUNTIME_TLS_SECRET = "supernode-runtime-tls"

_AUTH_DIR = "/etc/flowerbed/auth"
_FLWR_HOME = "/var/lib/flowerbed/flwr-home"
_SUPERNODE_SIZING = kube.Sizing("100m", "256Mi", "1", "1Gi")


@dataclass(frozen=True)
class ClientSiteArgs:
    config: FederationConfig
    site: SiteConfig
    ca: CertificateAuthority
    supernode_key: SupernodeKey


def _study_volume(index: int) -> str:
    return f"study-{index}"


def executor_config(config: FederationConfig, site: SiteConfig) -> dict[str, Any]:
    """The Flower Kubernetes executor's config for this site's ClientApp task pods."""
    volumes: list[dict[str, Any]] = []
    mounts: list[dict[str, Any]] = []
    for index, data in enumerate(site.study_data):
        claim = data.existing_claim or naming.study_claim_name(data.study, data.dataset)
        volumes.append({"name": _study_volume(index),
                        "persistentVolumeClaim": {"claimName": claim, "readOnly": data.read_only}})
        mounts.append({"name": _study_volume(index), "mountPath": naming.study_mount_path(data.study, data.dataset),
                       "readOnly": data.read_only})
    volumes.append({"name": "scratch", "emptyDir": {"sizeLimit": site.scratch_size}})
    mounts.append({"name": "scratch", "mountPath": naming.SCRATCH_DIR})
    extra: dict[str, Any] = {"active-pod-budget": site.max_concurrent_tasks}
    if site.node_selector:
        extra["node-selector"] = dict(site.node_selector)
    if site.tolerations:
        extra["tolerations"] = [dict(t) for t in site.tolerations]
    return superexec.executor_config(
        namespace=site.namespace, images=config.images, federation=config.federation, task_role=TASK,
        resources=superexec.task_resources(site.cpu, site.memory, site.gpus),
        volumes=volumes, volume_mounts=mounts, **extra)


def supernode_args(config: FederationConfig, site: SiteConfig) -> list[str]:
    tls = naming.TLS_DIR
    return [
        "--superlink", f"{config.server.endpoint}:{config.server.public_port}",
        "--root-certificates", f"{naming.CA_DIR}/ca.crt",
        "--auth-supernode-private-key", f"{_AUTH_DIR}/supernode.key",
        "--isolation", "process",
        "--node-config", naming.node_config(site.name),
        # The Runtime API (for this site's SuperExec and task pods) on all interfaces, over TLS.
        "--host", "0.0.0.0",
        "--port", str(naming.SUPERNODE_RUNTIME_PORT),
        "--ssl-certfile", f"{tls}/tls.crt",
        "--ssl-keyfile", f"{tls}/tls.key",
        "--ssl-ca-certfile", f"{tls}/ca.crt",
    ]


class ClientSite(pulumi.ComponentResource):
    """One client site: everything in its namespace on its cluster."""

    namespace: pulumi.Output[str]

    def __init__(self, name: str, args: ClientSiteArgs, opts: pulumi.ResourceOptions | None = None) -> None:
        super().__init__(TYPE, name, None, opts)
        self._name = name
        self._config = args.config
        self._site = args.site
        site = args.site
        self._ns = site.namespace
        # The data of this namespace's Secrets and ConfigMaps, for the pod templates' digests.
        self._contents: dict[str, Mapping[str, pulumi.Input[str]]] = {}
        self._in_ns, self.namespace = kube.namespace(
            f"{name}-namespace", self._ns, self._labels("site"), existing=site.existing_namespace,
            keep=args.config.data_safety.namespace_options(
                managed_claims=any(d.size is not None for d in site.study_data),
                existing_claims=any(d.existing_claim is not None for d in site.study_data)), parent=self)

        secrets = self._secrets(args.ca, args.supernode_key)
        claims = self._study_data()
        runtime_service = self._supernode(depends_on=secrets)
        self._executor(depends_on=[secrets[0], runtime_service, *claims])
        self._network_policies()

        self.register_outputs({"namespace": self.namespace})

    def _labels(self, role: str) -> dict[str, str]:
        return kube.labels(self._config.federation, role, self._site.name)

    def _meta(self, obj_name: str, role: str) -> k8s.meta.v1.ObjectMetaArgs:
        return kube.metadata(obj_name, self._ns, self._labels(role))

    def _after(self, depends_on: Sequence[pulumi.Resource]) -> pulumi.ResourceOptions:
        return pulumi.ResourceOptions.merge(self._in_ns, pulumi.ResourceOptions(depends_on=list(depends_on)))

    def _secrets(self, ca: CertificateAuthority, key: SupernodeKey) -> list[k8s.core.v1.Secret]:
        """The CA (to trust SuperLink), the SuperNode key, and the certificate of the SuperNode's Runtime API."""
        pki = self._config.pki
        runtime_cert = ServerCertificate(
            f"{self._name}-runtime-certificate", ca=ca, dns_names=naming.supernode_runtime_names(self._ns),
            validity_days=pki.validity_days, renew_before_days=pki.renew_before_days,
            opts=pulumi.ResourceOptions(parent=self))
        data = {
            naming.CA_SECRET: {"ca.crt": ca.cert_pem},
            AUTH_SECRET: {"supernode.key": key.private_openssh},
            RUNTIME_TLS_SECRET: {"tls.crt": runtime_cert.cert_pem, "tls.key": runtime_cert.key_pem,
                                 "ca.crt": ca.cert_pem},
        }
        self._contents.update({kube.content_key("Secret", name): values for name, values in data.items()})
        ca_secret = k8s.core.v1.Secret(f"{self._name}-ca", metadata=self._meta(naming.CA_SECRET, "site"),
                                       string_data=data[naming.CA_SECRET], opts=self._in_ns)
        auth_secret = k8s.core.v1.Secret(f"{self._name}-auth", metadata=self._meta(AUTH_SECRET, SUPERNODE),
                                         string_data=data[AUTH_SECRET], opts=self._in_ns)
        runtime_tls = k8s.core.v1.Secret(f"{self._name}-runtime-tls",
                                         metadata=self._meta(RUNTIME_TLS_SECRET, SUPERNODE),
                                         type="kubernetes.io/tls", string_data=data[RUNTIME_TLS_SECRET],
                                         opts=self._in_ns)
        return [ca_secret, auth_secret, runtime_tls]

    def _study_data(self) -> list[k8s.core.v1.PersistentVolumeClaim]:
        """New study-data volumes, retained by default; existing claims are only referenced."""
        safety = self._config.data_safety
        opts = pulumi.ResourceOptions.merge(self._in_ns, pulumi.ResourceOptions(
            retain_on_delete=safety.retain_on_delete, protect=safety.protect))
        return [kube.claim(f"{self._name}-study-{data.study}-{data.dataset}",
                           naming.study_claim_name(data.study, data.dataset), self._ns, self._labels(TASK),
                           data.size, data.storage_class, opts)
                for data in self._site.study_data if data.size is not None]

    def _supernode(self, depends_on: Sequence[pulumi.Resource]) -> k8s.core.v1.Service:
        """The SuperNode and the Service of its Runtime API (for this site's SuperExec and task pods)."""
        config, images = self._config, self._config.images
        supernode = kube.container(
            "supernode", images.platform, images, command=["flower-supernode"],
            args=supernode_args(config, self._site), sizing=_SUPERNODE_SIZING,
            env={"FLWR_HOME": _FLWR_HOME},
            ports=[k8s.core.v1.ContainerPortArgs(name="runtime", container_port=naming.SUPERNODE_RUNTIME_PORT)],
            mounts=[kube.mount("ca", naming.CA_DIR), kube.mount("auth", _AUTH_DIR), kube.mount("tls", naming.TLS_DIR),
                    kube.mount("flwr-home", _FLWR_HOME, read_only=False)],
            probe=kube.https_probe(naming.SUPERNODE_RUNTIME_PORT))
        k8s.apps.v1.Deployment(f"{self._name}-supernode", metadata=self._meta(SUPERNODE, SUPERNODE),
                               spec=k8s.apps.v1.DeploymentSpecArgs(
            replicas=1,
            # One key, one node: never two SuperNodes of this site at once.
            strategy=k8s.apps.v1.DeploymentStrategyArgs(type="Recreate"),
            selector=k8s.meta.v1.LabelSelectorArgs(match_labels=self._pods(SUPERNODE)),
            template=kube.pod_template(self._labels(SUPERNODE), kube.pod_spec(images, [supernode], [
                kube.secret_volume("ca", naming.CA_SECRET), kube.secret_volume("auth", AUTH_SECRET),
                kube.secret_volume("tls", RUNTIME_TLS_SECRET),
                k8s.core.v1.VolumeArgs(name="flwr-home", empty_dir=k8s.core.v1.EmptyDirVolumeSourceArgs(
                    size_limit="2Gi"))]), self._contents)), opts=self._after(depends_on))
        return k8s.core.v1.Service(f"{self._name}-runtime", metadata=self._meta(naming.SUPERNODE_SERVICE, SUPERNODE),
                                   spec=k8s.core.v1.ServiceSpecArgs(
            type="ClusterIP", selector=self._pods(SUPERNODE),
            ports=[k8s.core.v1.ServicePortArgs(name="runtime", port=naming.SUPERNODE_RUNTIME_PORT,
                                               target_port="runtime", protocol="TCP")]), opts=self._in_ns)

    def _pods(self, role: str) -> dict[str, str]:
        return kube.selector(self._config.federation, role)

    def _executor(self, depends_on: Sequence[pulumi.Resource]) -> None:
        """SuperExec launching one ClientApp pod per run, with the site's GPUs and data."""
        config = self._config
        superexec.declare(
            self._name, meta=lambda role: self._meta(role, role), federation=config.federation, namespace=self._ns,
            images=config.images, executor_role=EXECUTOR, task_role=TASK, config=executor_config(config, self._site),
            runtime_address=naming.service_address(naming.SUPERNODE_SERVICE, self._ns, naming.SUPERNODE_RUNTIME_PORT),
            contents=self._contents, opts=self._in_ns, depends_on=depends_on)

    def _network_policies(self) -> None:
        """Out only to the server endpoint (and DNS); in only from this site's own pods."""
        config, name = self._config, self._name
        kube.baseline_policies(name, self._ns, self._labels("site"), config.clusters[self._site.cluster].dns,
                               kube.baseline_scope(config.federation, self._site.existing_namespace), self._in_ns)
        to_runtime = kube.Flow(ports=(naming.SUPERNODE_RUNTIME_PORT,), pods=self._pods(SUPERNODE))
        kube.network_policy(f"{name}-supernode-policy", self._meta(SUPERNODE, SUPERNODE), self._pods(SUPERNODE),
                            ingress=[kube.Flow(ports=(naming.SUPERNODE_RUNTIME_PORT,), pods=self._pods(role))
                                     for role in (EXECUTOR, TASK)],
                            egress=[kube.Flow(ports=(config.server.public_port,),
                                              cidrs=config.server.endpoint_cidrs)], opts=self._in_ns)
        api_server = kube.Flow(ports=kube.API_SERVER_PORTS, cidrs=config.clusters[self._site.cluster].api_server_cidrs)
        kube.network_policy(f"{name}-executor-policy", self._meta(EXECUTOR, EXECUTOR), self._pods(EXECUTOR),
                            egress=[to_runtime, api_server], opts=self._in_ns)
        kube.network_policy(f"{name}-task-policy", self._meta(TASK, TASK), self._pods(TASK),
                            egress=[to_runtime], opts=self._in_ns)
