"""Which sites take part: the dev stack's topology, or names given on the command line."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import yaml

from components import naming

CONFIG_NAMESPACE = "flowerbed:"
FEDERATION = "local"  # node config `federation`: keys the sites' state under their state directories


@dataclass(frozen=True)
class Site:
    """One client site. Its node config holds only its own facts: the ServerApp assigns
    built-in datasets' partitions per run, so adding a site leaves the others' configs alone."""

    name: str

    def node_config(self, data_root: Path, state_dir: Path) -> str:
        """The SuperNode's `--node-config`, built as the pods get it, with local data and state directories."""
        return naming.node_config(self.name, FEDERATION, str(data_root), str(state_dir))


def sites_from_names(names: Sequence[str]) -> list[Site]:
    return [Site(name) for name in names]


def site_names_from_stack(stack_file: Path) -> list[str]:
    """Site names of a stack file, validated by the same parser the Pulumi program uses."""
    from components.config import parse  # the one schema for stack config

    document = yaml.safe_load(stack_file.read_text(encoding="utf-8")) or {}
    raw = {
        key.removeprefix(CONFIG_NAMESPACE): value
        for key, value in (document.get("config") or {}).items()
        if key.startswith(CONFIG_NAMESPACE)
    }
    return [site.name for site in parse(raw).sites]
