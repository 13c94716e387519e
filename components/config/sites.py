"""The server site and the client sites: the sections placed on a cluster, in a namespace of the federation.

They are validated within their federation (`Scope`, the validation context): a `cluster` must be one of
`clusters`, and a namespace left out is named after the federation.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Annotated, Any

from pydantic import Field, PlainValidator, TypeAdapter, ValidationInfo, field_validator, model_validator

from components.config.fields import (Boolean, Choice, Cidrs, DnsLabel, DnsName, Integer, IpAddress, LabelMap, List,
                                      Quantity, StringMap, Text, Toleration)
from components.config.sections import ClusterConfig, Resources, SizedStorage
from components.config.wording import Invalid, Section, refused

# Names this program derives from the federation and site names must stay DNS labels.
SERVER_NAMESPACE_SUFFIX = "-server"
# Each site's SuperNode (and its private key) lives in `<site namespace><suffix>`, a namespace the
# site's executor has no Role in: the executor lists Secrets in its own namespace (flwr 1.42).
SUPERNODE_NAMESPACE_SUFFIX = "-supernode"
# Seconds a launched task pod may take to start (scheduling, image pull) before the reaper deletes
# it: below half a minute, ordinary scheduling and pulls would be cut off.
PENDING_TIMEOUT_DEFAULT = 600
PendingTimeout = Integer(30)
# Kubernetes' default --service-node-port-range.
NodePort = Integer(30000, 32767)


@dataclass(frozen=True)
class Scope:
    """What a site is checked against: its federation's name and clusters."""

    federation: str
    clusters: Mapping[str, ClusterConfig]


def _configured_cluster(value: Any, info: ValidationInfo) -> str:
    clusters = info.context.clusters
    if not isinstance(value, str) or value not in clusters:
        raise refused(value, f"one of the configured clusters ({', '.join(clusters)})")
    return value


ClusterName = Annotated[str, PlainValidator(_configured_cluster)]


@dataclass(frozen=True)
class FleetEndpoint:
    """Where SuperNodes dial SuperLink's Fleet API, and the addresses `host` resolves to (their only egress)."""

    host: str
    port: int
    cidrs: tuple[str, ...]

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"


class NamespaceRef(Section):
    """A namespace the program creates, or (`existing: true`) one that exists already, which the program
    neither creates, labels (Pod Security) nor deletes."""

    name: DnsLabel
    existing: Boolean = False


_DNS_LABEL = TypeAdapter(DnsLabel)


def namespace_ref(raw: Any, default: str | None) -> Any:
    """`namespace` as written: a name, `{name, existing}`, or left out for `default`."""
    if isinstance(raw, Mapping) or (raw is None and default is None):
        return raw
    return {"name": _DNS_LABEL.validate_python(default if raw is None else raw)}


class _InNamespace:
    """`namespace` and `existing_namespace` of a section whose `namespace_ref` is its `namespace` key."""

    @property
    def namespace(self) -> str:
        return self.namespace_ref.name

    @property
    def existing_namespace(self) -> bool:
        """True: the namespace exists already; the program neither creates, labels nor deletes it."""
        return self.namespace_ref.existing


class ServerConfig(_InNamespace, Section):
    cluster: ClusterName
    endpoint: DnsName
    namespace_ref: NamespaceRef = Field(None, alias="namespace", validate_default=True)
    service_type: Choice("LoadBalancer", "NodePort", "ClusterIP") = "LoadBalancer"
    load_balancer_ip: IpAddress | None = Field(None, alias="loadBalancerIP")
    service_annotations: StringMap = {}
    public_port: Integer(1, 65535) = 443
    # The addresses `endpoint` resolves to; client sites may dial only these.
    endpoint_cidrs: Cidrs = ("0.0.0.0/0",)
    state_storage: SizedStorage("5Gi")
    artifacts_storage: SizedStorage("10Gi")
    server_app: Resources = Resources()
    # LoadBalancer only: whether `up` waits (the provider's ~10 minutes at most) for the address.
    wait_for_address: Boolean = True
    pending_timeout: PendingTimeout = PENDING_TIMEOUT_DEFAULT
    # NodePort/LoadBalancer: the Fleet Service's node port; None lets Kubernetes pick one.
    node_port: NodePort | None = None

    @field_validator("namespace_ref", mode="before")
    @classmethod
    def _default_namespace(cls, raw: Any, info: ValidationInfo) -> Any:
        return namespace_ref(raw, f"{info.context.federation}{SERVER_NAMESPACE_SUFFIX}")

    @model_validator(mode="after")
    def _exposure_fits(self) -> ServerConfig:
        if self.load_balancer_ip is not None and self.service_type != "LoadBalancer":
            raise Invalid("only allowed with serviceType LoadBalancer", at="loadBalancerIP")
        if "wait_for_address" in self.model_fields_set and self.service_type != "LoadBalancer":
            raise Invalid("only allowed with serviceType LoadBalancer", at="waitForAddress")
        if self.node_port is not None and self.service_type == "ClusterIP":
            raise Invalid("only allowed with serviceType NodePort or LoadBalancer", at="nodePort")
        return self

    @property
    def fleet(self) -> FleetEndpoint:
        return FleetEndpoint(self.endpoint, self.public_port, self.endpoint_cidrs)


class StudyData(Section):
    study: DnsLabel
    dataset: DnsLabel
    size: Quantity | None = None
    storage_class: Text | None = None
    existing_claim: DnsName | None = None
    mode: Choice("ro", "rw") = "ro"

    @model_validator(mode="after")
    def _one_volume(self) -> StudyData:
        if (self.size is None) == (self.existing_claim is None):
            raise Invalid("set exactly one of size (a new volume) or existingClaim (an existing PVC)")
        if self.storage_class is not None and self.existing_claim is not None:
            raise Invalid("only allowed with size, not with existingClaim", at="storageClass")
        return self

    @property
    def read_only(self) -> bool:
        return self.mode == "ro"


class SiteConfig(_InNamespace, Section):
    name: DnsLabel
    cluster: ClusterName
    namespace_ref: NamespaceRef = Field(None, alias="namespace", validate_default=True)
    gpus: Integer(0) = 0
    cpu: Quantity = "2"
    memory: Quantity = "8Gi"
    max_concurrent_tasks: Integer(1) = 1
    node_selector: LabelMap = {}
    tolerations: List(Toleration) = ()
    study_data: List(StudyData) = ()
    scratch_size: Quantity = "10Gi"
    # The ClientApp pods' state volume (naming.STATE_CLAIM at naming.STATE_DIR).
    state_storage: SizedStorage("1Gi")
    pending_timeout: PendingTimeout = PENDING_TIMEOUT_DEFAULT
    # Raising it makes a new SuperNode key pair (rotation); the old key is refused once the
    # server registers the new one (components/pki_resources.SupernodeKey).
    key_version: Integer(1) = 1
    # Who to call about the site; a consortium member's site stack puts it in its join request.
    contact: StringMap = {}

    @field_validator("namespace_ref", mode="before")
    @classmethod
    def _default_namespace(cls, raw: Any, info: ValidationInfo) -> Any:
        name = info.data.get("name")  # absent when the name was refused (that error is the one reported)
        return namespace_ref(raw, f"{info.context.federation}-{name}" if name is not None else None)

    @field_validator("namespace_ref")
    @classmethod
    def _room_for_supernode(cls, ref: NamespaceRef) -> NamespaceRef:
        room = 63 - len(SUPERNODE_NAMESPACE_SUFFIX)
        if len(ref.name) > room:
            raise Invalid(f"{ref.name!r} is too long; at most {room} characters, so that its SuperNode's namespace "
                          f"({ref.name}{SUPERNODE_NAMESPACE_SUFFIX}) is a DNS label too")
        return ref

    @field_validator("study_data")
    @classmethod
    def _each_dataset_once(cls, study_data: tuple[StudyData, ...]) -> tuple[StudyData, ...]:
        seen: set[tuple[str, str]] = set()
        for i, data in enumerate(study_data):
            if (data.study, data.dataset) in seen:
                raise Invalid(f"{data.study}/{data.dataset} is listed twice; each study/dataset may appear once "
                              "per site", at=f"[{i}]")
            seen.add((data.study, data.dataset))
        return study_data

    @property
    def supernode_namespace(self) -> str:
        """Always created by the program, also next to an existing site namespace."""
        return f"{self.namespace}{SUPERNODE_NAMESPACE_SUFFIX}"
