"""What crosses between a consortium's stacks: public material only (components/README.md, "A consortium").

Site to hub, one join request per site: a small YAML file that the site stack's `up` makes (its
`joinRequests` output; `make up` writes it to out/<stack>/join/<site>.yaml) and that the coordinator
commits into the hub's `members` directory, so admitting a site is a pull request whose
`pulumi preview` shows what it adds:

    federation: demo                             # the federation the site asks to join
    name: hospital-a                             # its SuperNode's name at the SuperLink
    publicKey: ecdsa-sha2-nistp384 AAAA...       # its SuperNode's public key (the private one never leaves)
    contact: {organisation: ..., email: ...}     # optional, strings

Hub to site, the join bundle: the federation's name, the Fleet endpoint and the federation CA's
certificate (the hub stack's `joinBundle` output; `make up` writes out/<stack>/join-bundle.yaml),
which a site stack reads from a file of its project or from the hub stack (`bundle: {stack: ...}`,
when both stacks share a backend).

Reading is validation: every file is a model built the way the stack config's are (components/config/),
and a bad one stops `preview` with one line naming the file and the field.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any

import yaml
from pydantic import (AfterValidator, PrivateAttr, TypeAdapter, ValidationError, ValidationInfo, field_validator,
                      model_validator)

from components import pki
from components.config import ConfigError, FederationConfig, FleetEndpoint, project_directory, yaml_file
from components.config.fields import Cidrs, DnsLabel, DnsName, Integer, StringMap, Text, not_a_dns_label
from components.config.wording import Invalid, Section, one_line, refused

# The output a hub stack publishes its bundle as, and the one a site stack publishes its requests as.
BUNDLE_OUTPUT = "joinBundle"
REQUESTS_OUTPUT = "joinRequests"
# Kubernetes refuses a ConfigMap whose data (names and values) exceeds 1 MiB; the hub's registration Job
# reads every admitted key from one (components/registration.py): about 4,000 sites of ~240 bytes.
CONFIG_MAP_BYTES = 1024 * 1024


class _Dumper(yaml.SafeDumper):
    """Readable YAML for the PEM certificate: a literal block, not one line of "\\n" escapes."""


_Dumper.add_representer(str, lambda dumper, text: dumper.represent_scalar(
    "tag:yaml.org,2002:str", text, style="|" if "\n" in text else None))


def join_request(federation: str, site: str, public_key: str, contact: Mapping[str, str]) -> str:
    """The text of `site`'s join request (public material only)."""
    document: dict[str, Any] = {"federation": federation, "name": site, "publicKey": public_key}
    if contact:
        document["contact"] = dict(contact)
    return (f"# flowerbed join request: site {site} asks to join federation {federation}.\n"
            f"# Its SuperNode's public key only; fingerprint {pki.fingerprint(public_key)}.\n"
            f"# The coordinator admits it by committing this file into the hub's members directory.\n"
            + yaml.dump(document, Dumper=_Dumper, sort_keys=False))


def join_bundle(federation: str, fleet: FleetEndpoint, ca_certificate: str) -> str:
    """The text of the hub's join bundle (public material only: the CA's certificate, never its key)."""
    document = {"federation": federation, "endpoint": fleet.host, "publicPort": fleet.port,
                "endpointCidrs": list(fleet.cidrs), "caCertificate": ca_certificate}
    return (f"# flowerbed join bundle of federation {federation}: where SuperNodes dial and the CA they trust.\n"
            "# Public material only. A site stack reads it with flowerbed:bundle: {file: <this file>}.\n"
            + yaml.dump(document, Dumper=_Dumper, sort_keys=False))


@dataclass(frozen=True)
class Reading:
    """What a join file is read against (the validation context): this stack's federation, the file (or
    stack output) it comes from, and the config key that names it (`bundle.file`; none for a join request)."""

    federation: str
    source: str
    config_key: str = ""


class AdmittedSite(Section):
    """A site a hub admits: a join request as the site stack wrote it (`join_request`), from the file `source`."""

    federation: Any  # the hub's own; checked below
    name: Any  # a DNS label, checked after the key: a file whose key is not one says that first
    public_key: Annotated[Text, AfterValidator(pki.supernode_public_key)]  # one line, as Flower registers it
    contact: StringMap = {}
    _source: str = PrivateAttr("")

    @field_validator("federation")
    @classmethod
    def _this_federation(cls, federation: Any, info: ValidationInfo) -> str:
        hub = info.context.federation
        if federation != hub:
            raise refused(federation, f"{hub} (this hub's federation): the site asked to join another federation")
        return hub

    @model_validator(mode="after")
    def _named(self, info: ValidationInfo) -> AdmittedSite:
        try:
            _DNS_LABEL.validate_python(self.name)
        except ValidationError:
            raise Invalid(not_a_dns_label(self.name), at="name") from None
        self._source = info.context.source
        return self

    @property
    def source(self) -> str:
        """The join file it was read from, for messages and the hub's `members` output."""
        return self._source


_DNS_LABEL = TypeAdapter(DnsLabel)


class JoinBundle(Section):
    """What a site stack trusts the federation by: the hub's public material (`join_bundle`), from `source`."""

    federation: DnsLabel
    endpoint: DnsName
    public_port: Integer(1, 65535) = 443
    endpoint_cidrs: Cidrs = ("0.0.0.0/0",)
    ca_certificate: Annotated[Text, AfterValidator(pki.ca_certificate)]  # PEM of the federation CA, no key
    _source: str = PrivateAttr("")

    @field_validator("federation")
    @classmethod
    def _this_federation(cls, bundled: str, info: ValidationInfo) -> str:
        reading: Reading = info.context
        if bundled != reading.federation:
            raise ConfigError(f"{reading.config_key}: {reading.source} is the join bundle of federation {bundled!r}; "
                              f"this site stack's federation is {reading.federation!r} (flowerbed:federation)")
        return bundled

    @model_validator(mode="after")
    def _from(self, info: ValidationInfo) -> JoinBundle:
        self._source = info.context.source
        return self

    @property
    def source(self) -> str:
        return self._source

    @property
    def fleet(self) -> FleetEndpoint:
        return FleetEndpoint(self.endpoint, self.public_port, self.endpoint_cidrs)


def admitted_site(document: Any, source: str, federation: str) -> AdmittedSite:
    """One join request, validated; `source` names the file in messages."""
    try:
        return AdmittedSite.model_validate(document, context=Reading(federation, source))
    except ValidationError as err:
        raise one_line(err, source) from None


def read_members(config: FederationConfig, project: Path) -> tuple[AdmittedSite, ...]:
    """Every join request in the hub's `members` directory (`*.yaml`, in name order), each name and key once."""
    directory, label = project_directory(config.members_dir, "members", project)
    members = [admitted_site(yaml_file(path, f"{label}/{path.name}"), f"{label}/{path.name}", config.federation)
               for path in sorted(directory.glob("*.yaml"))]
    names: dict[str, AdmittedSite] = {}
    keys: dict[str, AdmittedSite] = {}
    for member in members:
        if member.name in names:
            raise ConfigError(f"{member.source}.name: {member.name!r} is already admitted by "
                              f"{names[member.name].source}; member names must be unique")
        if member.public_key in keys:
            raise ConfigError(f"{member.source}.publicKey: the same key as {keys[member.public_key].source} "
                              f"({keys[member.public_key].name}); every site needs a key pair of its own")
        names[member.name], keys[member.public_key] = member, member
    # What Kubernetes counts against the limit: every key name and value of the ConfigMap's data.
    size = sum(len(f"{member.name}.pub") + len(member.public_key) for member in members)
    if size > CONFIG_MAP_BYTES:
        raise ConfigError(f"members: {len(members)} join files hold {size:,} bytes of public keys; the registration "
                          f"ConfigMap holds at most {CONFIG_MAP_BYTES:,} (about 4,000 sites)")
    return tuple(members)


def bundle(document: Any, source: str, field: str, federation: str) -> JoinBundle:
    """A join bundle, validated: `source` names where it came from, `field` the config key that named it."""
    try:
        return JoinBundle.model_validate(document, context=Reading(federation, source, field))
    except ValidationError as err:
        raise one_line(err, source) from None


StackOutputs = Callable[[str], Mapping[str, Any]]


def read_bundle(config: FederationConfig, project: Path, stack_outputs: StackOutputs) -> JoinBundle:
    """The site stack's join bundle, from the file or the hub stack its `bundle` names."""
    source: BundleSource = config.bundle_source
    if source.file is not None:
        path = project / source.file
        if not path.is_file():
            raise ConfigError(f"bundle.file: {source.file!r} does not exist (relative to the project directory); "
                              "the coordinator's hub stack makes it: `pulumi stack output joinBundle`")
        return bundle(yaml_file(path, source.file), source.file, source.config_key, config.federation)
    try:
        outputs = stack_outputs(source.stack)
    except Exception as err:  # the engine's own message: no such stack, no access to the backend
        reason = str(err).strip().splitlines()[-1].rsplit("returned an error: ", 1)[-1]
        raise ConfigError(f"bundle.stack: the outputs of stack {source.stack!r} cannot be read ({reason})") from None
    if not isinstance(outputs.get(BUNDLE_OUTPUT), str):
        raise ConfigError(f"bundle.stack: stack {source.stack!r} has no {BUNDLE_OUTPUT} output; name the hub "
                          "stack (role: hub) of this backend, after its first `pulumi up`")
    label = f"{source.stack} ({BUNDLE_OUTPUT})"
    try:
        document = yaml.safe_load(outputs[BUNDLE_OUTPUT])
    except yaml.YAMLError:
        raise ConfigError(f"bundle.stack: {label} is not YAML") from None
    return bundle(document, label, source.config_key, config.federation)


def stack_outputs(name: str) -> Mapping[str, Any]:
    """Another stack's outputs in this stack's backend, as plain values.

    The engine's built-in `pulumi:pulumi:readStackOutputs`, the read behind `pulumi.StackReference`,
    called as a synchronous invoke, so the bundle is known before any resource is declared (a
    StackReference's outputs would be Outputs, and the endpoint would reach the SuperNode's flags
    and NetworkPolicy only as unknowns in a preview).
    """
    import pulumi.runtime  # only here: this module stays importable without the engine

    return pulumi.runtime.invoke("pulumi:pulumi:readStackOutputs", {"name": name}).value["outputs"]


def resolve(config: FederationConfig, project: Path, outputs: StackOutputs = stack_outputs) -> FederationConfig:
    """`config` with what the other parties published read in: a hub's members, a site stack's bundle."""
    if config.role == "hub":
        return config.with_published(members=read_members(config, project))
    if config.role == "site":
        return config.with_published(bundle=read_bundle(config, project, outputs))
    return config
