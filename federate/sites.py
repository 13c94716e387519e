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
    """Site names of a stack file, validated by the same parser the Pulumi program uses.

    ValueError naming the file when it is missing (`pulumi stack rm` deletes Pulumi.<stack>.yaml),
    unreadable, not YAML, or not a stack config the program accepts."""
    from components.config import parse  # the one schema for stack config

    try:
        text = stack_file.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ValueError(f"--stack-file {stack_file}: no such file (`pulumi stack rm` deletes Pulumi.<stack>.yaml); "
                         "pass another --stack-file, or the site names with --sites a,b,c") from None
    except (OSError, UnicodeDecodeError) as err:
        raise ValueError(f"--stack-file {stack_file}: cannot be read ({err})") from None
    try:
        document = yaml.safe_load(text) or {}
    except yaml.YAMLError as err:
        raise ValueError(f"--stack-file {stack_file}: not YAML ({_yaml_problem(err)})") from None
    config = document.get("config") if isinstance(document, dict) else None
    if not isinstance(config, dict):
        raise ValueError(f"--stack-file {stack_file}: not a Pulumi stack file (a YAML mapping whose `config` "
                         f"holds the {CONFIG_NAMESPACE}* keys)")
    raw = {key.removeprefix(CONFIG_NAMESPACE): value for key, value in config.items()
           if key.startswith(CONFIG_NAMESPACE)}
    try:
        return [site.name for site in parse(raw).sites]
    except ValueError as err:
        raise ValueError(f"--stack-file {stack_file}: {err}") from None


def _yaml_problem(err: yaml.YAMLError) -> str:
    mark, problem = getattr(err, "problem_mark", None), getattr(err, "problem", None)
    if mark is not None and problem:
        return f"line {mark.line + 1}, column {mark.column + 1}: {problem}"
    return str(err).splitlines()[0]
