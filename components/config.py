"""The stack configuration: the ONLY reader of `pulumi.Config`, typed and validated.

`parse` checks the whole configuration before anything is declared, so a config
that cannot work fails `pulumi preview` with one message naming the field and what is
allowed. It is pure (plain dicts in, frozen dataclasses out) but for the site files a
`sitesDir` names, which are this stack's own config split into files.
`load` reads the stack's `flowerbed:*` values and calls `parse`.

Three shapes of stack, chosen by `role` (components/README.md, "A consortium"):
`federation` (the default) deploys the server and every site; a consortium's `hub`
deploys the server and admits member sites by their join files; each member's `site`
stack deploys its own sites and trusts the federation through the hub's join bundle.
What crosses between the stacks (join requests, the bundle) is read by
components/exchange.py into the `AdmittedSite` and `JoinBundle` types below.
"""

from __future__ import annotations

import ipaddress
import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from dataclasses import field as dataclass_field
from pathlib import Path
from typing import Any

import yaml

_DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$")
_DNS_NAME = re.compile(r"^(?=.{1,253}$)[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?(\.[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?)*$")
# A Kubernetes resource quantity as users write them ("500m", "2", "16Gi", "1.5").
_QUANTITY = re.compile(r"^[0-9]+(\.[0-9]+)?(m|k|Ki|Mi|Gi|Ti|Pi|Ei|M|G|T|P|E)?$")
_LABEL_KEY = re.compile(r"^([a-z0-9]([-a-z0-9.]{0,251}[a-z0-9])?/)?[A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?$")

ROLES = ("federation", "hub", "site")
PULL_POLICIES = ("Always", "IfNotPresent", "Never")
SERVICE_TYPES = ("LoadBalancer", "NodePort", "ClusterIP")
DATA_MODES = ("ro", "rw")
TOLERATION_KEYS = ("key", "operator", "value", "effect", "tolerationSeconds")
# Names this program derives from the federation and site names must stay DNS labels.
SERVER_NAMESPACE_SUFFIX = "-server"
# Each site's SuperNode (and its private key) lives in `<site namespace><suffix>`, a namespace the
# site's executor has no Role in: the executor lists Secrets in its own namespace (flwr 1.41).
SUPERNODE_NAMESPACE_SUFFIX = "-supernode"
# Seconds a launched task pod may take to start (scheduling, image pull) before the reaper deletes
# it: below half a minute, ordinary scheduling and pulls would be cut off.
PENDING_TIMEOUT_DEFAULT = 600
PENDING_TIMEOUT_MINIMUM = 30
# Kubernetes' default --service-node-port-range.
NODE_PORT_RANGE = (30000, 32767)
# NodeLocal DNSCache's default listen address (the `__PILLAR__LOCAL__DNS__` of its manifest), on every node.
NODE_LOCAL_DNS_ADDRESS = "169.254.20.10"


class ConfigError(ValueError):
    """A stack configuration that cannot work; the message names the field and what is allowed."""


@dataclass(frozen=True)
class Images:
    platform: str
    job: str
    pull_policy: str
    pull_secrets: tuple[str, ...]


@dataclass(frozen=True)
class DnsConfig:
    """Where pods of a cluster send DNS queries: `allow-dns` admits exactly these."""

    # The DNS server pods (kube-dns/CoreDNS by default): their namespace and labels.
    namespace: str
    pod_labels: Mapping[str, str]
    # Addresses of DNS servers outside any pod selector: NodeLocal DNSCache's link-local
    # address on the host network, or a DNS service by IP.
    cidrs: tuple[str, ...]


@dataclass(frozen=True)
class ClusterConfig:
    name: str
    render_dir: str | None
    kubeconfig: str | None
    context: str | None
    # Where the executors may reach the Kubernetes API (NetworkPolicy cannot name it).
    api_server_cidrs: tuple[str, ...]
    dns: DnsConfig


@dataclass(frozen=True)
class Storage:
    size: str
    storage_class: str | None


@dataclass(frozen=True)
class Resources:
    cpu: str
    memory: str
    gpus: int


@dataclass(frozen=True)
class FleetEndpoint:
    """Where SuperNodes dial SuperLink's Fleet API, and the addresses `host` resolves to (their only egress)."""

    host: str
    port: int
    cidrs: tuple[str, ...]

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"


@dataclass(frozen=True)
class ServerConfig:
    cluster: str
    endpoint: str
    namespace: str
    # True: the namespace exists already; the program neither creates, labels nor deletes it.
    existing_namespace: bool
    service_type: str
    load_balancer_ip: str | None
    service_annotations: Mapping[str, str]
    # LoadBalancer only: whether `up` waits (the provider's ~10 minutes at most) for the address.
    wait_for_address: bool
    public_port: int
    # NodePort/LoadBalancer: the Fleet Service's node port; None lets Kubernetes pick one.
    node_port: int | None
    # The addresses `endpoint` resolves to; client sites may dial only these.
    endpoint_cidrs: tuple[str, ...]
    state_storage: Storage
    artifacts_storage: Storage
    server_app: Resources
    pending_timeout: int

    @property
    def fleet(self) -> FleetEndpoint:
        return FleetEndpoint(self.endpoint, self.public_port, self.endpoint_cidrs)


@dataclass(frozen=True)
class StudyData:
    study: str
    dataset: str
    size: str | None
    storage_class: str | None
    existing_claim: str | None
    mode: str

    @property
    def read_only(self) -> bool:
        return self.mode == "ro"


@dataclass(frozen=True)
class SiteConfig:
    name: str
    cluster: str
    namespace: str
    existing_namespace: bool
    gpus: int
    cpu: str
    memory: str
    max_concurrent_tasks: int
    node_selector: Mapping[str, str]
    tolerations: tuple[Mapping[str, Any], ...]
    study_data: tuple[StudyData, ...]
    scratch_size: str
    state_storage: Storage  # the ClientApp pods' state volume (naming.STATE_CLAIM at naming.STATE_DIR)
    pending_timeout: int
    # Raising it makes a new SuperNode key pair (rotation); the old key is refused once the
    # server registers the new one (components/pki_resources.SupernodeKey).
    key_version: int = 1
    # Who to call about the site; a consortium member's site stack puts it in its join request.
    contact: Mapping[str, str] = dataclass_field(default_factory=dict)

    @property
    def supernode_namespace(self) -> str:
        """Always created by the program, also next to an existing site namespace."""
        return f"{self.namespace}{SUPERNODE_NAMESPACE_SUFFIX}"


@dataclass(frozen=True)
class PkiConfig:
    ca_validity_days: int
    validity_days: int
    renew_before_days: int


@dataclass(frozen=True)
class DataSafety:
    retain_on_delete: bool
    protect: bool

    def namespace_options(self, *, managed_claims: bool, existing_claims: bool) -> tuple[bool, bool]:
        """(retain_on_delete, protect) of a namespace holding these claims.

        Kubernetes deletes every claim in a deleted namespace, so a namespace is kept whenever a
        claim in it must survive: claims this program manages (as `dataSafety` says) and existing
        claims (never this program's to delete).
        """
        retain = (managed_claims and self.retain_on_delete) or existing_claims
        return retain, managed_claims and self.protect


@dataclass(frozen=True)
class AdmittedSite:
    """A site a hub admits: its name and SuperNode public key, from its join file (components/exchange.py)."""

    name: str
    public_key: str  # one-line OpenSSH EC public key, as Flower registers it
    contact: Mapping[str, str]
    source: str  # the join file it was read from, for messages


@dataclass(frozen=True)
class JoinBundle:
    """What a site stack trusts the federation by: the hub's public material (components/exchange.py)."""

    federation: str
    fleet: FleetEndpoint
    ca_certificate: str  # PEM of the federation CA (its certificate only)
    source: str


@dataclass(frozen=True)
class BundleSource:
    """Where a site stack reads its join bundle: a file of its project, or another stack's output."""

    file: str | None
    stack: str | None

    @property
    def config_key(self) -> str:
        return "bundle.file" if self.file is not None else "bundle.stack"


@dataclass(frozen=True)
class FederationConfig:
    federation: str
    images: Images
    clusters: Mapping[str, ClusterConfig]
    server: ServerConfig | None  # None in a site stack: the hub runs the server
    sites: tuple[SiteConfig, ...]  # () in a hub: its members deploy their own
    pki: PkiConfig
    data_safety: DataSafety
    role: str = "federation"
    # hub: the directory of join files, read by components/exchange.read_members into `members`
    members_dir: str | None = None
    members: tuple[AdmittedSite, ...] = ()
    # site: where the join bundle is, read by components/exchange.read_bundle into `bundle`
    bundle_source: BundleSource | None = None
    bundle: JoinBundle | None = None

    @property
    def fleet(self) -> FleetEndpoint:
        """Where this stack's SuperNodes dial: its own server's endpoint, or a site stack's join bundle's."""
        if self.server is not None:
            return self.server.fleet
        if self.bundle is None:
            raise ValueError("the join bundle has not been read (components/exchange.read_bundle)")
        return self.bundle.fleet


# --- small typed readers: each raises ConfigError naming the field ----------------------


def _fail(field: str, value: Any, allowed: str) -> ConfigError:
    return ConfigError(f"{field}: {value!r} is not allowed; expected {allowed}")


def _mapping(value: Any, field: str, allowed: Sequence[str], required: Sequence[str] = ()) -> Mapping[str, Any]:
    if not isinstance(value, Mapping):
        raise _fail(field, value, f"a mapping with keys {', '.join(allowed)}")
    unknown = sorted(set(value) - set(allowed))
    if unknown:
        raise ConfigError(f"{field}.{unknown[0]}: unknown key; allowed keys are {', '.join(allowed)}")
    for key in required:
        if value.get(key) in (None, ""):
            raise ConfigError(f"{field}.{key}: missing; it is required")
    return value


def _string(value: Any, field: str) -> str:
    if not isinstance(value, str) or not value:
        raise _fail(field, value, "a non-empty string")
    return value


def _optional_string(value: Any, field: str) -> str | None:
    return None if value is None else _string(value, field)


def _dns_label(value: Any, field: str) -> str:
    if not isinstance(value, str) or not _DNS_LABEL.match(value):
        raise ConfigError(f"{field}: {value!r} is not a DNS label (lowercase a-z, 0-9, '-', max 63)")
    return value


def _dns_name(value: Any, field: str) -> str:
    if not isinstance(value, str) or not _DNS_NAME.match(value):
        raise ConfigError(f"{field}: {value!r} is not a DNS name (lowercase labels separated by '.', max 253)")
    return value


def _integer(value: Any, field: str, minimum: int, maximum: int | None = None) -> int:
    in_range = isinstance(value, int) and not isinstance(value, bool) and value >= minimum
    if not in_range or (maximum is not None and value > maximum):
        upper = f" and at most {maximum}" if maximum is not None else ""
        raise _fail(field, value, f"an integer of at least {minimum}{upper}")
    return int(value)


def _pending_timeout(raw: Mapping[str, Any], field: str) -> int:
    return _integer(raw.get("pendingTimeout", PENDING_TIMEOUT_DEFAULT), f"{field}.pendingTimeout",
                    PENDING_TIMEOUT_MINIMUM)


def _boolean(value: Any, field: str) -> bool:
    if not isinstance(value, bool):
        raise _fail(field, value, "true or false")
    return value


def _choice(value: Any, field: str, choices: Sequence[str]) -> str:
    if value not in choices:
        raise _fail(field, value, f"one of {', '.join(choices)}")
    return str(value)


def _quantity(value: Any, field: str) -> str:
    text = str(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else value
    if not isinstance(text, str) or not _QUANTITY.match(text):
        raise _fail(field, value, "a Kubernetes quantity such as 500m, 2, 4Gi")
    return text


def _cidrs(value: Any, field: str) -> tuple[str, ...]:
    if not isinstance(value, list) or not value:
        raise _fail(field, value, "a non-empty list of CIDRs such as 203.0.113.10/32")
    for index, cidr in enumerate(value):
        try:
            ipaddress.ip_network(cidr)
        except (TypeError, ValueError):
            raise _fail(f"{field}[{index}]", cidr, "a CIDR such as 203.0.113.10/32") from None
    return tuple(value)


def _string_map(value: Any, field: str, *, label_keys: bool = False) -> Mapping[str, str]:
    if not isinstance(value, Mapping):
        raise _fail(field, value, "a mapping of strings to strings")
    for key, item in value.items():
        if not isinstance(key, str) or (label_keys and not _LABEL_KEY.match(key)):
            raise _fail(f"{field}", key, "keys that are Kubernetes label keys")
        if not isinstance(item, str):
            raise _fail(f"{field}.{key}", item, "a string")
    return dict(value)


def _list(value: Any, field: str) -> list[Any]:
    if not isinstance(value, list):
        raise _fail(field, value, "a list")
    return value


# --- sections ------------------------------------------------------------------------------


def _images(raw: Any) -> Images:
    field = "images"
    images = _mapping(raw, field, ("platform", "job", "pullPolicy", "pullSecrets"), ("platform", "job"))
    secrets = _list(images.get("pullSecrets", []), f"{field}.pullSecrets")
    return Images(
        platform=_string(images["platform"], f"{field}.platform"),
        job=_string(images["job"], f"{field}.job"),
        pull_policy=_choice(images.get("pullPolicy", "IfNotPresent"), f"{field}.pullPolicy", PULL_POLICIES),
        pull_secrets=tuple(_dns_name(s, f"{field}.pullSecrets[{i}]") for i, s in enumerate(secrets)),
    )


def _clusters(raw: Any) -> dict[str, ClusterConfig]:
    if not isinstance(raw, Mapping) or not raw:
        raise _fail("clusters", raw, "a non-empty mapping of cluster name to {renderDir} or {kubeconfig, context}")
    clusters = {}
    for name, value in raw.items():
        field = f"clusters.{name}"
        _dns_label(name, field)
        entry = _mapping(value, field, ("renderDir", "kubeconfig", "context", "apiServerCidrs", "dns"))
        if ("renderDir" in entry) == ("kubeconfig" in entry):
            raise ConfigError(f"{field}: set exactly one of renderDir (write YAML) or kubeconfig (a real cluster; "
                              "for a local control plane `make cluster STACK=<stack>` sets it)")
        if "context" in entry and "renderDir" in entry:
            raise ConfigError(f"{field}.context: only allowed with kubeconfig")
        clusters[name] = ClusterConfig(
            name=name,
            render_dir=_optional_string(entry.get("renderDir"), f"{field}.renderDir"),
            kubeconfig=_optional_string(entry.get("kubeconfig"), f"{field}.kubeconfig"),
            context=_optional_string(entry.get("context"), f"{field}.context"),
            api_server_cidrs=_cidrs(entry.get("apiServerCidrs", ["0.0.0.0/0"]), f"{field}.apiServerCidrs"),
            dns=_dns(entry.get("dns", {}), f"{field}.dns"),
        )
    return clusters


def _dns(raw: Any, field: str) -> DnsConfig:
    dns = _mapping(raw, field, ("namespace", "podLabels", "nodeLocalCache", "cidrs"))
    labels = _string_map(dns.get("podLabels", {"k8s-app": "kube-dns"}), f"{field}.podLabels", label_keys=True)
    if not labels:
        raise _fail(f"{field}.podLabels", labels, "at least one label of the DNS server pods")
    node_local = [f"{NODE_LOCAL_DNS_ADDRESS}/32"] if _boolean(dns.get("nodeLocalCache", False),
                                                                f"{field}.nodeLocalCache") else []
    extra = _cidrs(dns["cidrs"], f"{field}.cidrs") if "cidrs" in dns else ()
    return DnsConfig(
        namespace=_dns_label(dns.get("namespace", "kube-system"), f"{field}.namespace"),
        pod_labels=labels,
        cidrs=tuple(dict.fromkeys([*node_local, *extra])),
    )


def _storage(raw: Any, field: str, default_size: str) -> Storage:
    storage = _mapping(raw, field, ("size", "storageClass"))
    return Storage(
        size=_quantity(storage.get("size", default_size), f"{field}.size"),
        storage_class=_optional_string(storage.get("storageClass"), f"{field}.storageClass"),
    )


def _namespace(raw: Any, field: str, default: str) -> tuple[str, bool]:
    """(name, existing): a name the program creates, or `{name, existing: true}` for one it must not own."""
    if not isinstance(raw, Mapping):
        return _dns_label(default if raw is None else raw, field), False
    entry = _mapping(raw, field, ("name", "existing"), ("name",))
    return _dns_label(entry["name"], f"{field}.name"), _boolean(entry.get("existing", False), f"{field}.existing")


def _cluster_ref(value: Any, field: str, clusters: Mapping[str, ClusterConfig]) -> str:
    if value not in clusters:
        raise _fail(field, value, f"one of the configured clusters ({', '.join(clusters)})")
    return str(value)


def _server(raw: Any, federation: str, clusters: Mapping[str, ClusterConfig]) -> ServerConfig:
    field = "server"
    keys = ("cluster", "endpoint", "namespace", "serviceType", "loadBalancerIP", "serviceAnnotations",
            "publicPort", "endpointCidrs", "stateStorage", "artifactsStorage", "serverApp", "waitForAddress",
            "pendingTimeout", "nodePort")
    server = _mapping(raw, field, keys, ("cluster", "endpoint"))
    service_type = _choice(server.get("serviceType", "LoadBalancer"), f"{field}.serviceType", SERVICE_TYPES)
    load_balancer_ip = server.get("loadBalancerIP")
    if load_balancer_ip is not None:
        if service_type != "LoadBalancer":
            raise ConfigError(f"{field}.loadBalancerIP: only allowed with serviceType LoadBalancer")
        try:
            ipaddress.ip_address(load_balancer_ip)
        except (TypeError, ValueError):
            raise _fail(f"{field}.loadBalancerIP", load_balancer_ip, "an IP address") from None
    if "waitForAddress" in server and service_type != "LoadBalancer":
        raise ConfigError(f"{field}.waitForAddress: only allowed with serviceType LoadBalancer")
    if "nodePort" in server and service_type == "ClusterIP":
        raise ConfigError(f"{field}.nodePort: only allowed with serviceType NodePort or LoadBalancer")
    app = _mapping(server.get("serverApp", {}), f"{field}.serverApp", ("cpu", "memory", "gpus"))
    namespace, existing = _namespace(server.get("namespace"), f"{field}.namespace",
                                     f"{federation}{SERVER_NAMESPACE_SUFFIX}")
    return ServerConfig(
        cluster=_cluster_ref(server["cluster"], f"{field}.cluster", clusters),
        endpoint=_dns_name(server["endpoint"], f"{field}.endpoint"),
        namespace=namespace,
        existing_namespace=existing,
        service_type=service_type,
        load_balancer_ip=load_balancer_ip,
        service_annotations=_string_map(server.get("serviceAnnotations", {}), f"{field}.serviceAnnotations"),
        wait_for_address=_boolean(server.get("waitForAddress", True), f"{field}.waitForAddress"),
        public_port=_integer(server.get("publicPort", 443), f"{field}.publicPort", 1, 65535),
        node_port=(_integer(server["nodePort"], f"{field}.nodePort", *NODE_PORT_RANGE)
                   if "nodePort" in server else None),
        endpoint_cidrs=_cidrs(server.get("endpointCidrs", ["0.0.0.0/0"]), f"{field}.endpointCidrs"),
        state_storage=_storage(server.get("stateStorage", {}), f"{field}.stateStorage", "5Gi"),
        artifacts_storage=_storage(server.get("artifactsStorage", {}), f"{field}.artifactsStorage", "10Gi"),
        server_app=Resources(
            cpu=_quantity(app.get("cpu", "2"), f"{field}.serverApp.cpu"),
            memory=_quantity(app.get("memory", "4Gi"), f"{field}.serverApp.memory"),
            gpus=_integer(app.get("gpus", 0), f"{field}.serverApp.gpus", 0),
        ),
        pending_timeout=_pending_timeout(server, field),
    )


def _study_data(raw: Any, field: str) -> StudyData:
    entry = _mapping(raw, field, ("study", "dataset", "size", "storageClass", "existingClaim", "mode"),
                     ("study", "dataset"))
    if ("size" in entry) == ("existingClaim" in entry):
        raise ConfigError(f"{field}: set exactly one of size (a new volume) or existingClaim (an existing PVC)")
    if "storageClass" in entry and "existingClaim" in entry:
        raise ConfigError(f"{field}.storageClass: only allowed with size, not with existingClaim")
    return StudyData(
        study=_dns_label(entry["study"], f"{field}.study"),
        dataset=_dns_label(entry["dataset"], f"{field}.dataset"),
        size=_quantity(entry["size"], f"{field}.size") if "size" in entry else None,
        storage_class=_optional_string(entry.get("storageClass"), f"{field}.storageClass"),
        existing_claim=(_dns_name(entry["existingClaim"], f"{field}.existingClaim")
                        if "existingClaim" in entry else None),
        mode=_choice(entry.get("mode", "ro"), f"{field}.mode", DATA_MODES),
    )


def _tolerations(raw: Any, field: str) -> tuple[Mapping[str, Any], ...]:
    return tuple(dict(_mapping(t, f"{field}[{i}]", TOLERATION_KEYS)) for i, t in enumerate(_list(raw, field)))


def _site(raw: Any, field: str, federation: str, clusters: Mapping[str, ClusterConfig]) -> SiteConfig:
    keys = ("name", "cluster", "namespace", "gpus", "cpu", "memory", "maxConcurrentTasks", "nodeSelector",
            "tolerations", "studyData", "scratchSize", "stateStorage", "pendingTimeout", "keyVersion", "contact")
    site = _mapping(raw, field, keys, ("name", "cluster"))
    name = _dns_label(site["name"], f"{field}.name")
    study_data = tuple(
        _study_data(entry, f"{field}.studyData[{i}]")
        for i, entry in enumerate(_list(site.get("studyData", []), f"{field}.studyData"))
    )
    seen: set[tuple[str, str]] = set()
    for i, data in enumerate(study_data):
        if (data.study, data.dataset) in seen:
            raise ConfigError(f"{field}.studyData[{i}]: {data.study}/{data.dataset} is listed twice; "
                              "each study/dataset may appear once per site")
        seen.add((data.study, data.dataset))
    namespace, existing = _namespace(site.get("namespace"), f"{field}.namespace", f"{federation}-{name}")
    room = 63 - len(SUPERNODE_NAMESPACE_SUFFIX)
    if len(namespace) > room:
        raise ConfigError(f"{field}.namespace: {namespace!r} is too long; at most {room} characters, so that "
                          f"its SuperNode's namespace ({namespace}{SUPERNODE_NAMESPACE_SUFFIX}) is a DNS label too")
    return SiteConfig(
        name=name,
        cluster=_cluster_ref(site["cluster"], f"{field}.cluster", clusters),
        namespace=namespace,
        existing_namespace=existing,
        gpus=_integer(site.get("gpus", 0), f"{field}.gpus", 0),
        cpu=_quantity(site.get("cpu", "2"), f"{field}.cpu"),
        memory=_quantity(site.get("memory", "8Gi"), f"{field}.memory"),
        max_concurrent_tasks=_integer(site.get("maxConcurrentTasks", 1), f"{field}.maxConcurrentTasks", 1),
        node_selector=_string_map(site.get("nodeSelector", {}), f"{field}.nodeSelector", label_keys=True),
        tolerations=_tolerations(site.get("tolerations", []), f"{field}.tolerations"),
        study_data=study_data,
        scratch_size=_quantity(site.get("scratchSize", "10Gi"), f"{field}.scratchSize"),
        state_storage=_storage(site.get("stateStorage", {}), f"{field}.stateStorage", "1Gi"),
        pending_timeout=_pending_timeout(site, field),
        key_version=_integer(site.get("keyVersion", 1), f"{field}.keyVersion", 1),
        contact=_string_map(site.get("contact", {}), f"{field}.contact"),
    )


def _site_entries(raw: Mapping[str, Any], project: Path) -> list[tuple[str, Any]]:
    """(field, raw entry) of every site: `sites[i]` inline, then one per `*.yaml` file of `sitesDir`
    (in name order), each file one entry of the same shape, named by its path in messages."""
    entries: list[tuple[str, Any]] = []
    if raw.get("sites") is not None:
        entries += [(f"sites[{i}]", entry) for i, entry in enumerate(_list(raw["sites"], "sites"))]
    if raw.get("sitesDir") is not None:
        directory, label = project_directory(raw["sitesDir"], "sitesDir", project)
        entries += [(f"{label}/{path.name}", yaml_file(path, f"{label}/{path.name}"))
                    for path in sorted(directory.glob("*.yaml"))]
    if not entries:
        where = f"; sitesDir {raw['sitesDir']!r} holds no *.yaml file" if raw.get("sitesDir") is not None else ""
        raise ConfigError(f"sites: missing; it is required (a non-empty list, or sitesDir: a directory of one "
                          f"file per site){where}")
    return entries


def _sites(entries: Sequence[tuple[str, Any]], federation: str, server: ServerConfig | None,
           clusters: Mapping[str, ClusterConfig]) -> tuple[SiteConfig, ...]:
    sites = tuple(_site(entry, field, federation, clusters) for field, entry in entries)
    names: dict[str, str] = {}
    namespaces = {(server.cluster, server.namespace): "server.namespace"} if server is not None else {}
    for (field, _), site in zip(entries, sites):
        if site.name in names:
            raise ConfigError(f"{field}.name: {site.name!r} is used by another site ({names[site.name]}); "
                              "site names must be unique")
        names[site.name] = field
        for namespace, role in ((site.namespace, f"{field}.namespace"),
                                (site.supernode_namespace, f"{field}.namespace (its SuperNode's)")):
            owner = namespaces.setdefault((site.cluster, namespace), role)
            if owner != role:
                raise ConfigError(f"{field}.namespace: {namespace!r} on cluster {site.cluster!r} is already "
                                  f"used by {owner}; every site needs its own namespaces")
    return sites


def _pki(raw: Any) -> PkiConfig:
    field = "pki"
    pki = _mapping(raw, field, ("caValidityDays", "validityDays", "renewBeforeDays"))
    ca_days = _integer(pki.get("caValidityDays", 3650), f"{field}.caValidityDays", 2)
    days = _integer(pki.get("validityDays", 365), f"{field}.validityDays", 2)
    renew = _integer(pki.get("renewBeforeDays", 30), f"{field}.renewBeforeDays", 1)
    if renew >= days:
        raise _fail(f"{field}.renewBeforeDays", renew, f"fewer days than {field}.validityDays ({days})")
    if days > ca_days:
        raise _fail(f"{field}.validityDays", days, f"at most {field}.caValidityDays ({ca_days})")
    return PkiConfig(ca_validity_days=ca_days, validity_days=days, renew_before_days=renew)


def _data_safety(raw: Any) -> DataSafety:
    field = "dataSafety"
    safety = _mapping(raw, field, ("retainOnDelete", "protect"))
    return DataSafety(
        retain_on_delete=_boolean(safety.get("retainOnDelete", True), f"{field}.retainOnDelete"),
        protect=_boolean(safety.get("protect", False), f"{field}.protect"),
    )


def _bundle_source(raw: Any) -> BundleSource:
    field = "bundle"
    entry = _mapping(raw, field, ("file", "stack"))
    if ("file" in entry) == ("stack" in entry):
        raise ConfigError(f"{field}: set exactly one of file (the hub's join bundle, a file of this project) or "
                          "stack (the hub stack's name in this backend, whose joinBundle output it reads)")
    return BundleSource(file=_optional_string(entry.get("file"), f"{field}.file"),
                        stack=_optional_string(entry.get("stack"), f"{field}.stack"))


def project_directory(value: Any, field: str, project: Path) -> tuple[Path, str]:
    """(the directory, its name as given) of a path relative to the project directory; it must exist."""
    directory = project / _string(value, field)
    if not directory.is_dir():
        raise ConfigError(f"{field}: {value!r} is not a directory (paths are relative to the project directory, "
                          "where Pulumi.yaml is)")
    return directory, value.rstrip("/")


def yaml_file(path: Path, field: str) -> Any:
    """A YAML document read from `path`; a file that is not YAML fails naming it as `field`."""
    try:
        return yaml.safe_load(path.read_text())
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as err:
        problem = str(err).splitlines()[0] if str(err) else type(err).__name__
        raise ConfigError(f"{field}: cannot be read as YAML ({problem})") from None


TOP_LEVEL_KEYS = ("role", "federation", "images", "clusters", "server", "sites", "sitesDir", "members", "bundle",
                  "pki", "dataSafety")
# Per role: the keys it must have besides federation, images and clusters (sites: or sitesDir) ...
_ROLE_REQUIRED = {"federation": ("server", "sites"), "hub": ("server", "members"), "site": ("bundle", "sites")}
# ... and the keys it refuses, each with the reason.
_ROLE_REFUSED = {
    "federation": {
        "members": "only a consortium's hub stack (role: hub) admits members by their join files",
        "bundle": "only a consortium's site stack (role: site) reads a join bundle",
    },
    "hub": {
        "sites": "a hub deploys no site: each member deploys its own with a site stack (role: site), and the hub "
                 "admits it by its join file in members",
        "sitesDir": "a hub deploys no site: each member deploys its own with a site stack (role: site), and the "
                    "hub admits it by its join file in members",
        "bundle": "a hub makes the join bundle (its joinBundle output); it reads none",
    },
    "site": {
        "server": "a site stack runs no server: the coordinator's hub stack does, and this stack dials the "
                  "endpoint of its join bundle (bundle)",
        "members": "only the coordinator's hub stack (role: hub) admits members",
    },
}


def parse(raw: Mapping[str, Any], project: Path = Path(".")) -> FederationConfig:
    """Validate the stack's `flowerbed:*` values (without the prefix) as a whole; `sitesDir` is read
    relative to `project`. A hub's members and a site's bundle are named here and read by
    components/exchange.py."""
    unknown = sorted(k for k, v in raw.items() if k not in TOP_LEVEL_KEYS and v is not None)
    if unknown:
        raise ConfigError(f"{unknown[0]}: unknown key; allowed keys are {', '.join(TOP_LEVEL_KEYS)}")
    role = _choice("federation" if raw.get("role") is None else raw["role"], "role", ROLES)
    for key, reason in _ROLE_REFUSED[role].items():
        if raw.get(key) is not None:
            raise ConfigError(f"{key}: not allowed in a {role} stack (role: {role}); {reason}")
    for key in ("federation", "images", "clusters", *_ROLE_REQUIRED[role]):
        if key == "sites" and raw.get("sitesDir") is not None:
            continue  # _site_entries checks that there is at least one site
        if raw.get(key) in (None, "", [], {}):
            raise ConfigError(f"{key}: missing; it is required")
    federation = _dns_label(raw["federation"], "federation")
    clusters = _clusters(raw["clusters"])
    server = _server(raw["server"], federation, clusters) if role != "site" else None
    return FederationConfig(
        federation=federation,
        images=_images(raw["images"]),
        clusters=clusters,
        server=server,
        sites=_sites(_site_entries(raw, project), federation, server, clusters) if role != "hub" else (),
        pki=_pki(raw.get("pki") or {}),
        data_safety=_data_safety(raw.get("dataSafety") or {}),
        role=role,
        members_dir=_string(raw["members"], "members") if role == "hub" else None,
        bundle_source=_bundle_source(raw["bundle"]) if role == "site" else None,
    )


def load() -> FederationConfig:
    """Read the current stack's `flowerbed:*` configuration and validate it (the program runs in the
    project directory, so `sitesDir` is read from there)."""
    import pulumi  # only here: parse() stays importable without the Pulumi engine

    config = pulumi.Config("flowerbed")
    # Every key the stack sets, not only the known ones: a misspelt key must reach parse() and fail.
    keys = {*TOP_LEVEL_KEYS, *_stack_keys(config.name)}
    return parse({key: _decode(config.get(key)) for key in sorted(keys)}, Path.cwd())


def _stack_keys(namespace: str) -> set[str]:
    """The keys (without `namespace:`) the stack sets, as the engine handed them to this program."""
    from pulumi.runtime.config import CONFIG, get_config_env

    prefix = f"{namespace}:"
    return {key.removeprefix(prefix) for key in {**get_config_env(), **CONFIG.get()} if key.startswith(prefix)}


def _decode(text: str | None) -> Any:
    """Stack values arrive as text: structured ones as JSON, plain strings as themselves."""
    if text is None:
        return None
    try:
        return json.loads(text)
    except ValueError:
        return text
