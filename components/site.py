"""ClientSite: one organisation's SuperNode, its ClientApp executor (GPU pods) and its study data."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import pulumi
import pulumi_kubernetes as k8s
import yaml

from components import kube, naming, superexec
from components.config import FederationConfig, SiteConfig
from components.pki_resources import CertificateAuthority, ServerCertificate, SupernodeKey

TYPE = "flowerbed:index:ClientSite"

SUPERNODE = "supernode"
EXECUTOR = "clientapp-executor"
TASK = "clientapp-task"
CA_SECRET = "federation-ca"
AUTH_SECRET = "supernode-auth"
RUNTIME_TLS_SECRET = "supernode-runtime-tls"

_AUTH_DIR = "/etc/flowerbed/auth"
_FLWR_HOME = "/var/lib/flowerbed/flwr-home"
_SUPERNODE_SIZING = kube.Sizing("100m", "256Mi", "1", "1Gi")


@dataclass(frozen=True)
class ClientSiteArgs:
    config: FederationConfig
    site: SiteConfig
    # The site's index in the stack's site list: the ClientApp's `partition-id`.
    partition_id: int
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


def supernode_args(config: FederationConfig, site: SiteConfig, partition_id: int) -> list[str]:
    tls = naming.TLS_DIR
    return [
        "--superlink", f"{config.server.endpoint}:{config.server.public_port}",
        "--root-certificates", f"{naming.CA_DIR}/ca.crt",
        "--auth-supernode-private-key", f"{_AUTH_DIR}/supernode.key",
        "--isolation", "process",
        "--node-config", naming.node_config(site.name, partition_id, len(config.sites)),
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
        config, site = args.config, args.site
        fed, ns_name = config.federation, site.namespace
        child = pulumi.ResourceOptions(parent=self)

        def meta(obj_name: str, role: str) -> k8s.meta.v1.ObjectMetaArgs:
            return kube.metadata(obj_name, ns_name, kube.labels(fed, role, site.name))

        ns = kube.namespace(f"{name}-namespace", ns_name, kube.labels(fed, "site", site.name), child)
        in_ns = pulumi.ResourceOptions(parent=self, depends_on=[ns])
        data_opts = pulumi.ResourceOptions(parent=self, depends_on=[ns], protect=config.data_safety.protect,
                                           retain_on_delete=config.data_safety.retain_on_delete)

        # --- secrets: the CA (to trust SuperLink), the SuperNode key, the Runtime API certificate.
        ca_secret = k8s.core.v1.Secret(f"{name}-ca", metadata=meta(CA_SECRET, "site"),
                                       string_data={"ca.crt": args.ca.cert_pem}, opts=in_ns)
        auth_secret = k8s.core.v1.Secret(f"{name}-auth", metadata=meta(AUTH_SECRET, SUPERNODE),
                                         string_data={"supernode.key": args.supernode_key.private_openssh},
                                         opts=in_ns)
        runtime_cert = ServerCertificate(
            f"{name}-runtime-certificate", ca=args.ca, dns_names=naming.supernode_runtime_names(ns_name),
            validity_days=config.pki.validity_days, renew_before_days=config.pki.renew_before_days, opts=child)
        runtime_tls = k8s.core.v1.Secret(f"{name}-runtime-tls", metadata=meta(RUNTIME_TLS_SECRET, SUPERNODE),
                                         type="kubernetes.io/tls", string_data={
                                             "tls.crt": runtime_cert.cert_pem, "tls.key": runtime_cert.key_pem,
                                             "ca.crt": args.ca.cert_pem}, opts=in_ns)

        # --- study data: new volumes are retained (configurable); existing claims are only referenced.
        claims = [kube.claim(f"{name}-study-{data.study}-{data.dataset}",
                             meta(naming.study_claim_name(data.study, data.dataset), TASK),
                             data.size, data.storage_class, data_opts)
                  for data in site.study_data if data.size is not None]

        # --- SuperNode.
        supernode_selector = kube.selector(fed, SUPERNODE)
        supernode_container = kube.container(
            "supernode", config.images.platform, config.images, command=["flower-supernode"],
            args=supernode_args(config, site, args.partition_id), sizing=_SUPERNODE_SIZING,
            env={"FLWR_HOME": _FLWR_HOME},
            ports=[k8s.core.v1.ContainerPortArgs(name="runtime", container_port=naming.SUPERNODE_RUNTIME_PORT)],
            mounts=[kube.mount("ca", naming.CA_DIR), kube.mount("auth", _AUTH_DIR), kube.mount("tls", naming.TLS_DIR),
                    kube.mount("flwr-home", _FLWR_HOME, read_only=False)],
            probe=kube.https_probe(naming.SUPERNODE_RUNTIME_PORT))
        supernode = k8s.apps.v1.Deployment(f"{name}-supernode", metadata=meta(SUPERNODE, SUPERNODE),
                                           spec=k8s.apps.v1.DeploymentSpecArgs(
            replicas=1,
            # One key, one node: never two SuperNodes of this site at once.
            strategy=k8s.apps.v1.DeploymentStrategyArgs(type="Recreate"),
            selector=k8s.meta.v1.LabelSelectorArgs(match_labels=supernode_selector),
            template=k8s.core.v1.PodTemplateSpecArgs(
                metadata=k8s.meta.v1.ObjectMetaArgs(labels=kube.labels(fed, SUPERNODE, site.name)),
                spec=kube.pod_spec(config.images, [supernode_container], [
                    kube.secret_volume("ca", CA_SECRET), kube.secret_volume("auth", AUTH_SECRET),
                    kube.secret_volume("tls", RUNTIME_TLS_SECRET),
                    k8s.core.v1.VolumeArgs(name="flwr-home", empty_dir=k8s.core.v1.EmptyDirVolumeSourceArgs(
                        size_limit="2Gi"))]))),
            opts=pulumi.ResourceOptions(parent=self, depends_on=[ca_secret, auth_secret, runtime_tls]))
        runtime_service = k8s.core.v1.Service(f"{name}-runtime", metadata=meta(naming.SUPERNODE_SERVICE, SUPERNODE),
                                              spec=k8s.core.v1.ServiceSpecArgs(
            type="ClusterIP", selector=supernode_selector,
            ports=[k8s.core.v1.ServicePortArgs(name="runtime", port=naming.SUPERNODE_RUNTIME_PORT,
                                               target_port="runtime", protocol="TCP")]), opts=in_ns)

        # --- ClientApp executor: one pod per ClientApp run, with the site's GPUs and data.
        executor_sa = kube.service_account(f"{name}-executor-sa", meta(EXECUTOR, EXECUTOR), config.images,
                                           automount=True, opts=in_ns)
        task_sa = kube.service_account(f"{name}-task-sa", meta(TASK, TASK), config.images, automount=False,
                                       opts=in_ns)
        rbac = kube.executor_rbac(f"{name}-executor", meta(EXECUTOR, EXECUTOR), EXECUTOR, ns_name, in_ns)
        executor_map = k8s.core.v1.ConfigMap(f"{name}-executor-config", metadata=meta(EXECUTOR, EXECUTOR), data={
            superexec.CONFIG_FILE: yaml.safe_dump(executor_config(config, site), sort_keys=True)}, opts=in_ns)
        runtime_address = naming.service_address(naming.SUPERNODE_SERVICE, ns_name, naming.SUPERNODE_RUNTIME_PORT)
        k8s.apps.v1.Deployment(f"{name}-executor", metadata=meta(EXECUTOR, EXECUTOR), spec=superexec.deployment_spec(
            federation=fed, role=EXECUTOR, images=config.images, runtime_address=runtime_address,
            ca_secret=CA_SECRET), opts=pulumi.ResourceOptions(
            parent=self, depends_on=[executor_sa, task_sa, *rbac, executor_map, ca_secret, runtime_service, *claims]))

        # --- NetworkPolicies: out only to the server endpoint (and DNS); in only from this site's pods.
        kube.baseline_policies(name, ns_name, kube.labels(fed, "site", site.name), in_ns)
        to_runtime = kube.Flow(ports=(naming.SUPERNODE_RUNTIME_PORT,), pods=supernode_selector)
        kube.network_policy(f"{name}-supernode-policy", meta(SUPERNODE, SUPERNODE), supernode_selector,
                            ingress=[kube.Flow(ports=(naming.SUPERNODE_RUNTIME_PORT,), pods=kube.selector(fed, role))
                                     for role in (EXECUTOR, TASK)],
                            egress=[kube.Flow(ports=(config.server.public_port,),
                                              cidrs=config.server.endpoint_cidrs)], opts=in_ns)
        api_server = kube.Flow(ports=(443, 6443), cidrs=config.clusters[site.cluster].api_server_cidrs)
        kube.network_policy(f"{name}-executor-policy", meta(EXECUTOR, EXECUTOR), kube.selector(fed, EXECUTOR),
                            egress=[to_runtime, api_server], opts=in_ns)
        kube.network_policy(f"{name}-task-policy", meta(TASK, TASK), kube.selector(fed, TASK),
                            egress=[to_runtime], opts=in_ns)

        self.namespace = ns.metadata.name
        self.supernode = supernode
        self.register_outputs({"namespace": self.namespace})
