"""Files the config is read from: the directories and YAML files of the project that
the config names (`sitesDir`, a hub's `members`, a site stack's `bundle.file`). Each problem is one
`ConfigError` naming the file."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from components.config.wording import ConfigError


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
