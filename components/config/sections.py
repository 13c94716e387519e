"""The stack config's sections that stand alone: images, clusters, storage, PKI, data safety, a site
stack's bundle source. Each key is a field (camelCase in the stack file, snake_case here), validated by
its type (components/config/fields.py) and the rules of its model."""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import AfterValidator, Field, PrivateAttr, create_model, field_validator, model_validator

from components.config.fields import Boolean, Choice, Cidrs, DnsLabel, DnsName, Integer, LabelMap, List, Quantity, Text
from components.config.wording import Invalid, Section, expect, refused
from components.flower_release import FLOWER_RELEASE, release_of

# NodeLocal DNSCache's default listen address (the `__PILLAR__LOCAL__DNS__` of its manifest), on every node.
NODE_LOCAL_DNS_ADDRESS = "169.254.20.10"


class Images(Section):
    """The platform image (SuperLink, SuperNode, SuperExec, nginx) and the job image (task pods): both
    must run the Flower release this program's flags are written for, named by their tags
    (components/flower_release.py), so a skewed stack stops at preview instead of crash-looping."""

    platform: Text
    job: Text
    pull_policy: Choice("Always", "IfNotPresent", "Never") = "IfNotPresent"
    pull_secrets: List(DnsName) = ()

    @model_validator(mode="after")
    def _one_flower_release(self) -> Images:
        platform = release_of(self.platform)
        for key, image in (("platform", self.platform), ("job", self.job)):
            release = release_of(image)
            if release is None:
                raise Invalid(f"'{image}' does not say which Flower release it runs; expected a tag ending in "
                              f"-flwr<release> as make images tags it (e.g. :0.1.0-flwr{FLOWER_RELEASE}, "
                              f"-flwr{FLOWER_RELEASE}-cpu for the cpu job variant)", at=key)
            if key == "job" and release != platform:
                raise Invalid(f"'{image}' runs Flower {release}, but images.platform runs Flower {platform}; task "
                              "pods must run the Flower of the SuperLink and SuperNodes they talk to", at=key)
            if release != FLOWER_RELEASE:
                raise Invalid(f"'{image}' runs Flower {release}, but this flowerbed's flags and configs are "
                              f"written for Flower {FLOWER_RELEASE}; expected images built by this checkout's "
                              f"make images (-flwr{FLOWER_RELEASE}), or the flowerbed release made for Flower "
                              f"{release} (README: Upgrading Flower)", at=key)
        return self


class DnsConfig(Section):
    """Where pods of a cluster send DNS queries: `allow-dns` admits exactly these."""

    # The DNS server pods (kube-dns/CoreDNS by default): their namespace and labels.
    namespace: DnsLabel = "kube-system"
    pod_labels: LabelMap = {"k8s-app": "kube-dns"}
    node_local_cache: Boolean = False
    extra_cidrs: Cidrs | None = Field(None, alias="cidrs")

    @field_validator("pod_labels")
    @classmethod
    def _some_label(cls, labels: dict[str, str]) -> dict[str, str]:
        if not labels:
            raise refused(labels, "at least one label of the DNS server pods")
        return labels

    @property
    def cidrs(self) -> tuple[str, ...]:
        """Addresses of DNS servers outside any pod selector, each once: NodeLocal DNSCache's link-local
        address on the host network (`nodeLocalCache`), then `cidrs` (a DNS service by IP)."""
        node_local = [f"{NODE_LOCAL_DNS_ADDRESS}/32"] if self.node_local_cache else []
        return tuple(dict.fromkeys([*node_local, *(self.extra_cidrs or ())]))


class ClusterConfig(Section):
    render_dir: Text | None = None
    kubeconfig: Text | None = None
    context: Text | None = None
    # Where the executors may reach the Kubernetes API (NetworkPolicy cannot name it).
    api_server_cidrs: Cidrs = ("0.0.0.0/0",)
    dns: DnsConfig = DnsConfig()
    _name: str = PrivateAttr("")

    @property
    def name(self) -> str:
        """Its key in `clusters`."""
        return self._name

    @model_validator(mode="after")
    def _one_target(self) -> ClusterConfig:
        if (self.render_dir is None) == (self.kubeconfig is None):
            raise Invalid("set exactly one of renderDir (write YAML) or kubeconfig (a real cluster; for a local "
                          "control plane `make cluster STACK=<stack>` sets it)")
        if self.context is not None and self.render_dir is not None:
            raise Invalid("only allowed with kubeconfig", at="context")
        return self


def _named(clusters: dict[str, ClusterConfig]) -> dict[str, ClusterConfig]:
    for name, cluster in clusters.items():
        cluster._name = name  # a private attribute: the models stay frozen
    return clusters


Clusters = Annotated[dict[DnsLabel, ClusterConfig], Field(min_length=1),
                     expect("a non-empty mapping of cluster name to {renderDir} or {kubeconfig, context}"),
                     AfterValidator(_named)]


class Storage(Section):
    size: Quantity
    storage_class: Text | None = None


def SizedStorage(size: str) -> Any:  # noqa: N802 (a type, used as one)
    """`{size, storageClass}` of a claim whose size defaults to `size` (the key left out)."""
    sized = create_model("Storage", __base__=Storage, size=(Quantity, size))
    return Annotated[sized, Field(default_factory=sized)]


class Resources(Section):
    """Of each launched ServerApp pod."""

    cpu: Quantity = "2"
    memory: Quantity = "4Gi"
    gpus: Integer(0) = 0


class PkiConfig(Section):
    ca_validity_days: Integer(2) = 3650
    validity_days: Integer(2) = 365
    renew_before_days: Integer(1) = 30

    @model_validator(mode="after")
    def _renewal_fits(self) -> PkiConfig:
        if self.renew_before_days >= self.validity_days:
            raise refused(self.renew_before_days, f"fewer days than pki.validityDays ({self.validity_days})",
                          at="renewBeforeDays")
        if self.validity_days > self.ca_validity_days:
            raise refused(self.validity_days, f"at most pki.caValidityDays ({self.ca_validity_days})",
                          at="validityDays")
        return self


class DataSafety(Section):
    retain_on_delete: Boolean = True
    protect: Boolean = False

    def namespace_options(self, *, managed_claims: bool, existing_claims: bool) -> tuple[bool, bool]:
        """(retain_on_delete, protect) of a namespace holding these claims.

        Kubernetes deletes every claim in a deleted namespace, so a namespace is kept whenever a
        claim in it must survive: claims this program manages (as `dataSafety` says) and existing
        claims (never this program's to delete).
        """
        retain = (managed_claims and self.retain_on_delete) or existing_claims
        return retain, managed_claims and self.protect


class BundleSource(Section):
    """Where a site stack reads its join bundle: a file of its project, or another stack's output."""

    file: Text | None = None
    stack: Text | None = None

    @model_validator(mode="after")
    def _one_source(self) -> BundleSource:
        if (self.file is None) == (self.stack is None):
            raise Invalid("set exactly one of file (the hub's join bundle, a file of this project) or stack (the hub "
                          "stack's name in this backend, whose joinBundle output it reads)")
        return self

    @property
    def config_key(self) -> str:
        return "bundle.file" if self.file is not None else "bundle.stack"
