"""The whole stack config: its shape by `role`, its sites (inline and from `sitesDir`), `parse` and `load`."""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pydantic import Field, PrivateAttr, TypeAdapter, ValidationError, ValidationInfo, field_validator, model_validator

from components.config.fields import Choice, DnsLabel, List, Text
from components.config.files import project_directory, yaml_file
from components.config.sections import BundleSource, Clusters, DataSafety, Images, PkiConfig
from components.config.sites import FleetEndpoint, Scope, ServerConfig, SiteConfig
from components.config.wording import ConfigError, Section, check_keys, one_line, validated

if TYPE_CHECKING:
    from components.exchange import AdmittedSite, JoinBundle

ROLES = ("federation", "hub", "site")
Role = Choice(*ROLES)
# Per role: the keys it must have besides federation, images and clusters (sites: or sitesDir) ...
_ROLE_REQUIRED = {"federation": ("server", "sites"), "hub": ("server", "members"), "site": ("bundle", "sites")}
# ... and the keys it refuses, each with the reason.
_NO_SITE = ("a hub deploys no site: each member deploys its own with a site stack (role: site), and the hub admits "
            "it by its join file in members")
_ROLE_REFUSED = {
    "federation": {
        "members": "only a consortium's hub stack (role: hub) admits members by their join files",
        "bundle": "only a consortium's site stack (role: site) reads a join bundle",
    },
    "hub": {
        "sites": _NO_SITE,
        "sitesDir": _NO_SITE,
        "bundle": "a hub makes the join bundle (its joinBundle output); it reads none",
    },
    "site": {
        "server": "a site stack runs no server: the coordinator's hub stack does, and this stack dials the "
                  "endpoint of its join bundle (bundle)",
        "members": "only the coordinator's hub stack (role: hub) admits members",
    },
}
_ROLE, _TEXT, _LIST = TypeAdapter(Role), TypeAdapter(Text), TypeAdapter(List(Any))


class FederationConfig(Section):
    """The stack's `flowerbed:*` config, validated as a whole (components/README.md, Stack configuration).

    Three shapes, by `role`: `federation` deploys the server and every site; a consortium's `hub` the
    server, admitting member sites by their join files (`members`); each member's `site` stack its own
    sites, trusting the federation through the hub's join bundle (`bundle`). What the other parties
    published is read in by components/exchange.resolve (`members`, `bundle`).
    """

    role: Role = "federation"
    federation: DnsLabel
    images: Images
    clusters: Clusters
    server: ServerConfig | None = None  # None in a site stack: the hub runs the server
    sites: tuple[SiteConfig, ...] = ()  # () in a hub: its members deploy their own
    sites_dir: Text | None = None  # read into `sites`
    members_dir: Text | None = Field(None, alias="members")
    bundle_source: BundleSource | None = Field(None, alias="bundle")
    pki: PkiConfig = PkiConfig()
    data_safety: DataSafety = DataSafety()
    _members: tuple[AdmittedSite, ...] = PrivateAttr(())
    _bundle: JoinBundle | None = PrivateAttr(None)

    @classmethod
    def check_shape(cls, raw: Any) -> Mapping[str, Any]:
        """Known keys; then the role, and the keys it refuses and requires (before any value is checked:
        a wrong key names itself rather than making another shape)."""
        check_keys(raw, cls.config_keys())
        role = validated(_ROLE, "federation" if raw.get("role") is None else raw["role"], "role")
        for key, reason in _ROLE_REFUSED[role].items():
            if raw.get(key) is not None:
                raise ConfigError(f"{key}: not allowed in a {role} stack (role: {role}); {reason}")
        for key in ("federation", "images", "clusters", *_ROLE_REQUIRED[role]):
            if key == "sites" and raw.get("sitesDir") is not None:
                continue  # _site_entries checks that there is at least one site
            if raw.get(key) in (None, "", [], {}):
                raise ConfigError(f"{key}: missing; it is required")
        return raw

    @model_validator(mode="before")
    @classmethod
    def _site_entries(cls, raw: dict[str, Any], info: ValidationInfo) -> dict[str, Any]:
        """`sites` as (where each came from, its entry): `sites[i]` inline, then one per `*.yaml` file of
        `sitesDir` (in name order, relative to the project), each an entry of the same shape."""
        if raw.get("role") == "hub":
            return raw
        entries: list[tuple[str, Any]] = []
        if raw.get("sites") is not None:
            entries += [(f"sites[{i}]", entry) for i, entry in enumerate(validated(_LIST, raw["sites"], "sites"))]
        if raw.get("sitesDir") is not None:
            directory, label = project_directory(validated(_TEXT, raw["sitesDir"], "sitesDir"), "sitesDir",
                                                 info.context or Path("."))
            entries += [(f"{label}/{path.name}", yaml_file(path, f"{label}/{path.name}"))
                        for path in sorted(directory.glob("*.yaml"))]
        if not entries:
            where = f"; sitesDir {raw['sitesDir']!r} holds no *.yaml file" if raw.get("sitesDir") is not None else ""
            raise ConfigError(f"sites: missing; it is required (a non-empty list, or sitesDir: a directory of one "
                              f"file per site){where}")
        return {**raw, "sites": entries}

    @field_validator("server", mode="before")
    @classmethod
    def _server_in_scope(cls, raw: Any, info: ValidationInfo) -> ServerConfig | None:
        scope = _scope(info)
        return None if scope is None else ServerConfig.model_validate(raw, context=scope)

    @field_validator("sites", mode="before")
    @classmethod
    def _sites_in_scope(cls, entries: list[tuple[str, Any]], info: ValidationInfo) -> tuple[SiteConfig, ...]:
        """Each site (a message names it by where it came from), then the names and namespaces they share."""
        scope = _scope(info)
        if scope is None:
            return ()
        sites = []
        for label, entry in entries:
            try:
                sites.append(SiteConfig.model_validate(entry, context=scope))
            except ValidationError as err:
                raise one_line(err, label) from None
        _distinct([label for label, _ in entries], sites, info.data.get("server"))
        return tuple(sites)

    @property
    def members(self) -> tuple[AdmittedSite, ...]:
        """A hub's admitted sites, read from `members` (components/exchange.read_members)."""
        return self._members

    @property
    def bundle(self) -> JoinBundle | None:
        """A site stack's join bundle, read from `bundle` (components/exchange.read_bundle)."""
        return self._bundle

    def with_published(self, members: tuple[AdmittedSite, ...] = (), bundle: JoinBundle | None = None
                       ) -> FederationConfig:
        """This config with what the other parties published read in (components/exchange.resolve)."""
        resolved = self.model_copy()
        resolved._members, resolved._bundle = members, bundle
        return resolved

    @property
    def fleet(self) -> FleetEndpoint:
        """Where this stack's SuperNodes dial: its own server's endpoint, or a site stack's join bundle's."""
        if self.server is not None:
            return self.server.fleet
        if self.bundle is None:
            raise ValueError("the join bundle has not been read (components/exchange.read_bundle)")
        return self.bundle.fleet


def _scope(info: ValidationInfo) -> Scope | None:
    """None when the federation or its clusters were refused: that error is the one reported."""
    if "federation" not in info.data or "clusters" not in info.data:
        return None
    return Scope(info.data["federation"], info.data["clusters"])


def _distinct(labels: list[str], sites: list[SiteConfig], server: ServerConfig | None) -> None:
    """Site names are unique; no two sites (or a site and the server) share a namespace on a cluster."""
    names: dict[str, str] = {}
    namespaces = {(server.cluster, server.namespace): "server.namespace"} if server is not None else {}
    for label, site in zip(labels, sites):
        if site.name in names:
            raise ConfigError(f"{label}.name: {site.name!r} is used by another site ({names[site.name]}); "
                              "site names must be unique")
        names[site.name] = label
        for namespace, role in ((site.namespace, f"{label}.namespace"),
                                (site.supernode_namespace, f"{label}.namespace (its SuperNode's)")):
            owner = namespaces.setdefault((site.cluster, namespace), role)
            if owner != role:
                raise ConfigError(f"{label}.namespace: {namespace!r} on cluster {site.cluster!r} is already "
                                  f"used by {owner}; every site needs its own namespaces")


def parse(raw: Mapping[str, Any], project: Path = Path(".")) -> FederationConfig:
    """Validate the stack's `flowerbed:*` values (without the prefix) as a whole; `sitesDir` is read
    relative to `project`. A hub's members and a site's bundle are named here and read by
    components/exchange.py. Raises ConfigError: one line naming the field and what is allowed."""
    given = {key: value for key, value in raw.items() if value is not None}  # unset keys arrive as None
    try:
        return FederationConfig.model_validate(given, context=project)
    except ValidationError as err:
        raise one_line(err) from None


def load() -> FederationConfig:
    """Read the current stack's `flowerbed:*` configuration and validate it (the program runs in the
    project directory, so `sitesDir` is read from there)."""
    import pulumi  # only here: parse() stays importable without the Pulumi engine

    config = pulumi.Config("flowerbed")
    # Every key the stack sets, not only the known ones: a misspelt key must reach parse() and fail.
    keys = {*FederationConfig.config_keys(), *_stack_keys(config.name)}
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
