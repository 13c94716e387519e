"""Files the config is read from: stack files, and the directories and YAML files of the project that
the config names (`sitesDir`, a hub's `members`, a site stack's `bundle.file`). Each problem is one
`ConfigError` naming the file."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from components.config.wording import ConfigError

NAMESPACE = "flowerbed:"


def project_directory(value: str, field: str, project: Path) -> tuple[Path, str]:
    """(the directory, its name as given) of a path relative to the project directory; it must exist."""
    directory = project / value
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


def stack_file(path: Path) -> dict[str, Any]:
    """The `config:` of a stack file (`Pulumi.<stack>.yaml`), every key with its namespace, for the tools
    that read a stack without the engine. A missing file (`pulumi stack rm` deletes it), one that is not
    YAML or holds no mapping fails naming it."""
    if not path.is_file():
        raise ConfigError(f"{path.name}: no such stack file in {path.parent} (`pulumi stack init` and `pulumi "
                          "config set` make one; `pulumi stack rm` deletes it)")
    document = yaml_file(path, path.name)
    if document is None:
        return {}  # an empty stack file: no config yet
    config = document.get("config") if isinstance(document, dict) else None
    if not isinstance(document, dict) or not isinstance(config, dict | None):
        raise ConfigError(f"{path.name}: not a stack file (expected a mapping with a config: mapping of "
                          "<namespace>:<key> values)")
    return dict(config or {})


def flowerbed_values(config: dict[str, Any]) -> dict[str, Any]:
    """The `flowerbed:*` values of a stack's config without their namespace, as `parse` takes them."""
    return {key.removeprefix(NAMESPACE): value for key, value in config.items() if key.startswith(NAMESPACE)}
