"""ClientSite: one organisation's ClientApp executor (GPU pods), its study data and its SuperNode.

The SuperNode lives in a namespace of its own (components/supernode.py), away from the executor.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import pulumi
import pulumi_kubernetes as k8s

from components import kube, naming, superexec, supernode
from components.config import FederationConfig, SiteConfig
from components.pki_resources import SupernodeKey
from components.supernode import SiteTrust

TYPE = "flowerbed:index:ClientSite"

EXECUTOR = "clientapp-executor"
TASK = "clientapp-task"


@dataclass(frozen=True)
class ClientSiteArgs:
    config: FederationConfig
    site: SiteConfig
    trust: SiteTrust
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
    # What must outlive a SuperNode restart and a resumed run (the DP ledger above all).
    volumes.append({"name": "state", "persistentVolumeClaim": {"claimName": naming.STATE_CLAIM}})
    mounts.append({"name": "state", "mountPath": naming.STATE_DIR})
    extra: dict[str, Any] = {"active-pod-budget": site.max_concurrent_tasks}
    if site.node_selector:
        extra["node-selector"] = dict(site.node_selector)
    if site.tolerations:
        extra["tolerations"] = [dict(t) for t in site.tolerations]
    return superexec.executor_config(
        namespace=site.namespace, images=config.images, federation=config.federation, task_role=TASK,
        resources=superexec.task_resources(site.cpu, site.memory, site.gpus),
        volumes=volumes, volume_mounts=mounts, **extra)


class ClientSite(pulumi.ComponentResource):
    """One client site: its namespace and its SuperNode's, on its cluster."""

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
            # The site's state claim is always managed here, so the namespace keeps it as dataSafety says.
            keep=args.config.data_safety.namespace_options(
                managed_claims=True, existing_claims=any(d.existing_claim is not None for d in site.study_data)),
            parent=self)

        self._trust = args.trust
        ca_secret = self._ca()
        claims = [*self._study_data(), self._state()]
        node = supernode.declare(name, config=self._config, site=site, trust=args.trust, key=args.supernode_key,
                                 clients=(EXECUTOR, TASK), parent=self)
        self._executor(depends_on=[ca_secret, *node, *claims])
        self._network_policies()

        self.supernode_namespace = pulumi.Output.from_input(site.supernode_namespace)
        self.register_outputs({"namespace": self.namespace, "supernodeNamespace": self.supernode_namespace})

    def _labels(self, role: str) -> dict[str, str]:
        return kube.labels(self._config.federation, role, self._site.name)

    def _meta(self, obj_name: str, role: str) -> k8s.meta.v1.ObjectMetaArgs:
        return kube.metadata(obj_name, self._ns, self._labels(role))

    def _ca(self) -> k8s.core.v1.Secret:
        """The CA that signed the SuperNode's Runtime API certificate, for the executor and task pods to trust."""
        data = {"ca.crt": self._trust.runtime_ca.cert_pem}
        secret = self._trust.runtime_ca_secret
        self._contents[kube.content_key("Secret", secret)] = data
        return k8s.core.v1.Secret(f"{self._name}-ca", metadata=self._meta(secret, "site"),
                                  string_data=data, opts=self._in_ns)

    def _claim_options(self) -> pulumi.ResourceOptions:
        """The claims this program manages: retained / protected as `dataSafety` says."""
        safety = self._config.data_safety
        return pulumi.ResourceOptions.merge(self._in_ns, pulumi.ResourceOptions(
            retain_on_delete=safety.retain_on_delete, protect=safety.protect))

    def _study_data(self) -> list[k8s.core.v1.PersistentVolumeClaim]:
        """New study-data volumes, retained by default; existing claims are only referenced."""
        opts = self._claim_options()
        return [kube.claim(f"{self._name}-study-{data.study}-{data.dataset}",
                           naming.study_claim_name(data.study, data.dataset), self._ns, self._labels(TASK),
                           data.size, data.storage_class, opts)
                for data in self._site.study_data if data.size is not None]

    def _state(self) -> k8s.core.v1.PersistentVolumeClaim:
        """The ClientApp pods' state volume (site_state.py in training/), retained as `dataSafety` says."""
        storage = self._site.state_storage
        return kube.claim(f"{self._name}-state", naming.STATE_CLAIM, self._ns, self._labels(TASK),
                          storage.size, storage.storage_class, self._claim_options())

    def _pods(self, role: str) -> dict[str, str]:
        return kube.selector(self._config.federation, role)

    def _executor(self, depends_on: Sequence[pulumi.Resource]) -> None:
        """SuperExec launching one ClientApp pod per run, with the site's GPUs and data."""
        config = self._config
        superexec.declare(
            self._name, meta=lambda role: self._meta(role, role), federation=config.federation, namespace=self._ns,
            images=config.images, executor_role=EXECUTOR, task_role=TASK, config=executor_config(config, self._site),
            runtime_address=supernode.runtime_address(self._site), pending_timeout=self._site.pending_timeout,
            contents=self._contents, opts=self._in_ns, depends_on=depends_on, ca_secret=self._trust.runtime_ca_secret)

    def _network_policies(self) -> None:
        """Nothing in; out only to the SuperNode's Runtime API (and the executor to the Kubernetes API, DNS)."""
        config, name, site = self._config, self._name, self._site
        kube.baseline_policies(name, self._ns, self._labels("site"), config.clusters[site.cluster].dns,
                               kube.baseline_scope(config.federation, site.existing_namespace), self._in_ns)
        to_runtime = kube.Flow(ports=(naming.SUPERNODE_RUNTIME_PORT,), pods=self._pods(supernode.SUPERNODE),
                               namespace=site.supernode_namespace)
        api_server = kube.Flow(ports=kube.API_SERVER_PORTS, cidrs=config.clusters[site.cluster].api_server_cidrs)
        kube.network_policy(f"{name}-executor-policy", self._meta(EXECUTOR, EXECUTOR), self._pods(EXECUTOR),
                            egress=[to_runtime, api_server], opts=self._in_ns)
        kube.network_policy(f"{name}-task-policy", self._meta(TASK, TASK), self._pods(TASK),
                            egress=[to_runtime], opts=self._in_ns)
