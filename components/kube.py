"""Small Kubernetes building blocks shared by the server and the client sites.

Every container flowerbed declares goes through `container()`, so the security
rules (non-root uid 49999, read-only root filesystem, no privilege escalation,
no capabilities, seccomp RuntimeDefault, requests and limits) hold by
construction; the manifest tests check them again on the output.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import pulumi
import pulumi_kubernetes as k8s

from components.config import DnsConfig, Images

from components.hardening import (  # noqa: F401  (kube.<name> is how the components use them)
    APP_UID, FEDERATION_LABEL, MANAGED_BY_LABEL, ROLE_LABEL, SITE_LABEL, container_security_context, labels,
    pod_security_context, selector)
# Set by Kubernetes on every namespace (immutable): what a NetworkPolicy selects a namespace by.
NAMESPACE_NAME_LABEL = "kubernetes.io/metadata.name"
TMP_VOLUME = "tmp"
# Executors reach the Kubernetes API through the `kubernetes` Service (443) or the server directly (6443).
API_SERVER_PORTS = (443, 6443)


@dataclass(frozen=True)
class Sizing:
    """Requests and limits of one container."""

    cpu_request: str
    memory_request: str
    cpu_limit: str
    memory_limit: str

    def args(self) -> k8s.core.v1.ResourceRequirementsArgs:
        return k8s.core.v1.ResourceRequirementsArgs(
            requests={"cpu": self.cpu_request, "memory": self.memory_request},
            limits={"cpu": self.cpu_limit, "memory": self.memory_limit},
        )


def metadata(name: str, namespace: str, object_labels: Mapping[str, str],
             annotations: Mapping[str, str] | None = None) -> k8s.meta.v1.ObjectMetaArgs:
    return k8s.meta.v1.ObjectMetaArgs(name=name, namespace=namespace, labels=dict(object_labels),
                                      annotations=dict(annotations) if annotations else None)


def container(name: str, image: str, images: Images, *, args: Sequence[str], sizing: Sizing,
              mounts: Sequence[k8s.core.v1.VolumeMountArgs] = (),
              ports: Sequence[k8s.core.v1.ContainerPortArgs] = (),
              env: Mapping[str, str] | None = None,
              probe: k8s.core.v1.ProbeArgs | None = None,
              command: Sequence[str] | None = None) -> k8s.core.v1.ContainerArgs:
    """A hardened container; `/tmp` is always a writable emptyDir (see `pod_spec`)."""
    return k8s.core.v1.ContainerArgs(
        name=name,
        image=image,
        image_pull_policy=images.pull_policy,
        command=list(command) if command else None,
        args=list(args),
        ports=list(ports) or None,
        env=[k8s.core.v1.EnvVarArgs(name=k, value=v) for k, v in sorted((env or {}).items())] or None,
        volume_mounts=[k8s.core.v1.VolumeMountArgs(name=TMP_VOLUME, mount_path="/tmp"), *mounts],
        resources=sizing.args(),
        security_context=container_security_context(),
        readiness_probe=probe,
        liveness_probe=probe,
    )


def pod_spec(images: Images, containers: Sequence[k8s.core.v1.ContainerArgs],
             volumes: Sequence[k8s.core.v1.VolumeArgs], *, service_account: str | None = None,
             restart_policy: str | None = None,
             init_containers: Sequence[k8s.core.v1.ContainerArgs] = ()) -> k8s.core.v1.PodSpecArgs:
    """A pod spec with the restricted security context, pull secrets and a `/tmp` emptyDir."""
    return k8s.core.v1.PodSpecArgs(
        init_containers=list(init_containers) or None,
        containers=list(containers),
        volumes=[k8s.core.v1.VolumeArgs(name=TMP_VOLUME, empty_dir=k8s.core.v1.EmptyDirVolumeSourceArgs(
            size_limit="1Gi")), *volumes],
        security_context=pod_security_context(),
        image_pull_secrets=pull_secrets(images),
        service_account_name=service_account,
        # Only pods that call the Kubernetes API get a token.
        automount_service_account_token=service_account is not None,
        restart_policy=restart_policy,
        enable_service_links=False,
    )


# Processes read their certificates, keys and configs once, at start: a pod template carrying the
# digest of what it mounts is rolled by Kubernetes exactly when one of those objects changes.
MOUNTED_DIGEST_ANNOTATION = "flowerbed.dev/mounted-sha256"
# What a component's Secrets and ConfigMaps hold, keyed "<Kind>/<name>": the same data they are declared with.
Contents = Mapping[str, Mapping[str, pulumi.Input[str]]]


def content_key(kind: str, name: str) -> str:
    return f"{kind}/{name}"


def mounted_objects(volumes: Sequence[k8s.core.v1.VolumeArgs]) -> list[str]:
    """The content keys of the Secrets and ConfigMaps these volumes mount (projected ones too)."""
    keys = []
    for volume in volumes:
        if volume.secret is not None:
            keys.append(content_key("Secret", volume.secret.secret_name))
        elif volume.config_map is not None:
            keys.append(content_key("ConfigMap", volume.config_map.name))
        elif volume.projected is not None:
            keys += [content_key("ConfigMap", source.config_map.name) for source in volume.projected.sources
                     if source.config_map is not None]
    return keys


def digest(contents: Mapping[str, Mapping[str, str]]) -> str:
    return hashlib.sha256(json.dumps(contents, sort_keys=True).encode()).hexdigest()


def pod_template(object_labels: Mapping[str, str], spec: k8s.core.v1.PodSpecArgs,
                 contents: Contents) -> k8s.core.v1.PodTemplateSpecArgs:
    """A Deployment's pod template annotated with the digest of exactly the Secrets and ConfigMaps it mounts.

    Every one of them must be in `contents` (a KeyError otherwise): nothing mounted goes unwatched.
    The digest is not secret: it reveals nothing of the keys it covers.
    """
    mounted = {key: contents[key] for key in mounted_objects(spec.volumes or [])}
    annotation = pulumi.Output.unsecret(pulumi.Output.from_input(mounted).apply(digest))
    return k8s.core.v1.PodTemplateSpecArgs(metadata=k8s.meta.v1.ObjectMetaArgs(
        labels=dict(object_labels), annotations={MOUNTED_DIGEST_ANNOTATION: annotation}), spec=spec)


def pull_secrets(images: Images) -> list[k8s.core.v1.LocalObjectReferenceArgs] | None:
    return [k8s.core.v1.LocalObjectReferenceArgs(name=name) for name in images.pull_secrets] or None


def https_probe(port: int, path: str = "/health") -> k8s.core.v1.ProbeArgs:
    return k8s.core.v1.ProbeArgs(
        http_get=k8s.core.v1.HTTPGetActionArgs(path=path, port=port, scheme="HTTPS"),
        period_seconds=10, failure_threshold=6, timeout_seconds=5,
    )


def grpc_probe(port: int) -> k8s.core.v1.ProbeArgs:
    return k8s.core.v1.ProbeArgs(grpc=k8s.core.v1.GRPCActionArgs(port=port),
                                 period_seconds=10, failure_threshold=6, timeout_seconds=5)


def secret_volume(name: str, secret: str) -> k8s.core.v1.VolumeArgs:
    return k8s.core.v1.VolumeArgs(
        name=name, secret=k8s.core.v1.SecretVolumeSourceArgs(secret_name=secret, default_mode=0o440))


def config_volume(name: str, config_map: str) -> k8s.core.v1.VolumeArgs:
    return k8s.core.v1.VolumeArgs(
        name=name, config_map=k8s.core.v1.ConfigMapVolumeSourceArgs(name=config_map, default_mode=0o444))


def claim_volume(name: str, claim: str, *, read_only: bool = False) -> k8s.core.v1.VolumeArgs:
    return k8s.core.v1.VolumeArgs(name=name, persistent_volume_claim=k8s.core.v1.PersistentVolumeClaimVolumeSourceArgs(
        claim_name=claim, read_only=read_only or None))


def mount(name: str, path: str, *, read_only: bool = True) -> k8s.core.v1.VolumeMountArgs:
    return k8s.core.v1.VolumeMountArgs(name=name, mount_path=path, read_only=read_only)


def namespace(resource_name: str, name: str, object_labels: Mapping[str, str], *, existing: bool,
              keep: tuple[bool, bool], parent: pulumi.Resource) -> tuple[pulumi.ResourceOptions, pulumi.Output[str]]:
    """The namespace a component's objects live in: the options that put a child there, and its name.

    A namespace the program creates admits only Pod Security `restricted` pods; `keep` is its
    (retain_on_delete, protect), see `DataSafety.namespace_options`. An `existing` one is only
    used: never created, labelled or deleted.
    """
    if existing:
        return pulumi.ResourceOptions(parent=parent), pulumi.Output.from_input(name)
    psa = {f"pod-security.kubernetes.io/{mode}": "restricted" for mode in ("enforce", "audit", "warn")}
    retain, protect = keep
    created = k8s.core.v1.Namespace(resource_name, metadata=k8s.meta.v1.ObjectMetaArgs(
        name=name, labels={**object_labels, **psa}), opts=pulumi.ResourceOptions(
        parent=parent, retain_on_delete=retain, protect=protect))
    return pulumi.ResourceOptions(parent=parent, depends_on=[created]), created.metadata.name


# The pinned provider (4.25, pkg/await/awaiters.go) awaits a PVC on every update as on creation: on a
# WaitForFirstConsumer StorageClass it waits for `Pending`, which a bound claim never returns to, so
# growing a claim stalls `up` for 5 minutes and fails it (pulumi/pulumi-kubernetes#4179, fixed in 4.27
# by #4181). The annotation makes it skip that await (SkipAwaitLogic); pods mounting a claim wait anyway.
SKIP_AWAIT = {"pulumi.com/skipAwait": "true"}


def claim(resource_name: str, name: str, namespace_name: str, object_labels: Mapping[str, str], size: str,
          storage_class: str | None, opts: pulumi.ResourceOptions) -> k8s.core.v1.PersistentVolumeClaim:
    spec = k8s.core.v1.PersistentVolumeClaimSpecArgs(
        access_modes=["ReadWriteOnce"], storage_class_name=storage_class,
        resources=k8s.core.v1.VolumeResourceRequirementsArgs(requests={"storage": size}))
    return k8s.core.v1.PersistentVolumeClaim(resource_name, metadata=metadata(
        name, namespace_name, object_labels, SKIP_AWAIT), spec=spec, opts=opts)


# --- network policies ------------------------------------------------------------------


@dataclass(frozen=True)
class Flow:
    """One allowed connection: to/from `peers` (None = anywhere) on TCP `ports`.

    `pods` are selected in the policy's own namespace, or in `namespace` when given.
    """

    ports: tuple[int, ...]
    pods: Mapping[str, str] | None = None
    cidrs: tuple[str, ...] = ()
    anywhere: bool = False
    namespace: str | None = None

    def peers(self) -> list[k8s.networking.v1.NetworkPolicyPeerArgs] | None:
        if self.anywhere:
            return None
        peers = [k8s.networking.v1.NetworkPolicyPeerArgs(ip_block=k8s.networking.v1.IPBlockArgs(cidr=c))
                 for c in self.cidrs]
        if self.pods is not None:
            peers.append(k8s.networking.v1.NetworkPolicyPeerArgs(
                pod_selector=k8s.meta.v1.LabelSelectorArgs(match_labels=dict(self.pods)),
                namespace_selector=None if self.namespace is None else k8s.meta.v1.LabelSelectorArgs(
                    match_labels={NAMESPACE_NAME_LABEL: self.namespace})))
        return peers

    def port_args(self) -> list[k8s.networking.v1.NetworkPolicyPortArgs]:
        return [k8s.networking.v1.NetworkPolicyPortArgs(port=p, protocol="TCP") for p in self.ports]


def network_policy(resource_name: str, meta: k8s.meta.v1.ObjectMetaArgs, pods: Mapping[str, str], *,
                   ingress: Sequence[Flow] = (), egress: Sequence[Flow] = (),
                   opts: pulumi.ResourceOptions) -> k8s.networking.v1.NetworkPolicy:
    """Allow exactly `ingress` into and `egress` out of the selected pods (on top of default deny)."""
    types = [t for t, flows in (("Ingress", ingress), ("Egress", egress)) if flows]
    return k8s.networking.v1.NetworkPolicy(resource_name, metadata=meta, spec=k8s.networking.v1.NetworkPolicySpecArgs(
        pod_selector=k8s.meta.v1.LabelSelectorArgs(match_labels=dict(pods)),
        policy_types=types,
        ingress=[k8s.networking.v1.NetworkPolicyIngressRuleArgs(from_=f.peers(), ports=f.port_args())
                 for f in ingress] or None,
        egress=[k8s.networking.v1.NetworkPolicyEgressRuleArgs(to=f.peers(), ports=f.port_args())
                for f in egress] or None,
    ), opts=opts)


def baseline_scope(federation: str, existing_namespace: bool) -> dict[str, str]:
    """The pods the baseline policies cover: all of a namespace the program owns; in an existing
    namespace only this federation's (other workloads there are not the program's to cut off)."""
    return {FEDERATION_LABEL: federation} if existing_namespace else {}


def baseline_policies(prefix: str, namespace_name: str, object_labels: Mapping[str, str], dns: DnsConfig,
                      pods: Mapping[str, str], opts: pulumi.ResourceOptions) -> list[k8s.networking.v1.NetworkPolicy]:
    """Deny all traffic of `pods` ({}: every pod of the namespace), then let them resolve names through DNS."""
    everything = k8s.meta.v1.LabelSelectorArgs(match_labels=dict(pods) or None)
    deny = k8s.networking.v1.NetworkPolicy(f"{prefix}-default-deny", metadata=metadata(
        "default-deny", namespace_name, object_labels), spec=k8s.networking.v1.NetworkPolicySpecArgs(
        pod_selector=everything, policy_types=["Ingress", "Egress"]), opts=opts)
    dns_pods = k8s.networking.v1.NetworkPolicyPeerArgs(
        namespace_selector=k8s.meta.v1.LabelSelectorArgs(
            match_labels={NAMESPACE_NAME_LABEL: dns.namespace}),
        pod_selector=k8s.meta.v1.LabelSelectorArgs(match_labels=dict(dns.pod_labels)))
    # NodeLocal DNSCache answers on a link-local address on the host network, which no pod
    # selector matches; such servers are admitted by address.
    dns_addresses = [k8s.networking.v1.NetworkPolicyPeerArgs(ip_block=k8s.networking.v1.IPBlockArgs(cidr=cidr))
                     for cidr in dns.cidrs]
    allow = k8s.networking.v1.NetworkPolicy(f"{prefix}-allow-dns", metadata=metadata(
        "allow-dns", namespace_name, object_labels), spec=k8s.networking.v1.NetworkPolicySpecArgs(
        pod_selector=everything, policy_types=["Egress"],
        egress=[k8s.networking.v1.NetworkPolicyEgressRuleArgs(to=[dns_pods, *dns_addresses], ports=[
            k8s.networking.v1.NetworkPolicyPortArgs(port=53, protocol=p) for p in ("UDP", "TCP")])]), opts=opts)
    return [deny, allow]


# --- RBAC for the Flower Kubernetes executor ---------------------------------------------

# Exactly the calls flwr 1.42's KubernetesExecutor makes for cold (one pod per task) dispatch
# (flwr/supercore/superexec/executor/kubernetes_executor.py): create/list/delete of the task
# Pod and of its AppIO credential Secret. No get/watch (it lists), no patch or pods/exec (only
# warm pools use them, and flowerbed configures none). The pending reaper in the executor's pod
# lists and deletes the same pods and adds only `create` of the Event it records for each.
EXECUTOR_RULES: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("pods", ("create", "delete", "list")),
    ("secrets", ("create", "delete", "list")),
    ("events", ("create",)),
)


def executor_rbac(prefix: str, meta: k8s.meta.v1.ObjectMetaArgs, service_account: str, namespace_name: str,
                  opts: pulumi.ResourceOptions) -> tuple[k8s.rbac.v1.Role, k8s.rbac.v1.RoleBinding]:
    role = k8s.rbac.v1.Role(f"{prefix}-role", metadata=meta, rules=[
        k8s.rbac.v1.PolicyRuleArgs(api_groups=[""], resources=[resource], verbs=list(verbs))
        for resource, verbs in EXECUTOR_RULES], opts=opts)
    binding = k8s.rbac.v1.RoleBinding(f"{prefix}-rolebinding", metadata=meta, role_ref=k8s.rbac.v1.RoleRefArgs(
        api_group="rbac.authorization.k8s.io", kind="Role", name=role.metadata.name),
        subjects=[k8s.rbac.v1.SubjectArgs(kind="ServiceAccount", name=service_account,
                                          namespace=namespace_name)], opts=opts)
    return role, binding


def service_account(resource_name: str, meta: k8s.meta.v1.ObjectMetaArgs, images: Images, *, automount: bool,
                    opts: pulumi.ResourceOptions) -> k8s.core.v1.ServiceAccount:
    """A ServiceAccount; its pull secrets also reach the pods the executor launches with it."""
    return k8s.core.v1.ServiceAccount(resource_name, metadata=meta, image_pull_secrets=pull_secrets(images),
                                      automount_service_account_token=automount, opts=opts)
