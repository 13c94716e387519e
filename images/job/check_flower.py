"""Refuse a Flower App that asks for another flwr than the platform runs.

The task pods' flwr-serverapp and flwr-clientapp talk to the platform image's
SuperLink and SuperNodes, which run the flwr of requirements/requirements.lock.
The job image installs every app on top of that same flwr; an app whose
dependencies exclude it stops the build here, with the two versions named,
before the resolver fails on it with a less direct message.

Usage: python check_flower.py APP_PYPROJECT LOCK
"""

from __future__ import annotations

import sys
import tomllib
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

FLOWER = "flwr"


def platform_flower(lock: Path) -> Version:
    """flwr's version in uv's `name==version` lock lines."""
    for line in lock.read_text(encoding="utf-8").splitlines():
        name, _, version = line.partition("==")
        if canonicalize_name(name.strip()) == FLOWER and version:
            return Version(version.strip())
    raise ValueError(f"{lock}: no {FLOWER}==VERSION line")


def check(pyproject: Path, lock: Path) -> str:
    """One line saying what the app asks for; ValueError naming both versions if flwr is excluded."""
    platform = platform_flower(lock)
    dependencies = tomllib.loads(pyproject.read_text(encoding="utf-8")).get("project", {}).get("dependencies", [])
    asked = [r for r in map(Requirement, dependencies)
             if canonicalize_name(r.name) == FLOWER and (r.marker is None or r.marker.evaluate())]
    for requirement in asked:
        if not requirement.specifier.contains(platform, prereleases=True):
            raise ValueError(
                f"{pyproject}: the app asks for '{requirement}', but the platform runs flwr {platform} "
                f"(requirements/requirements.lock), and the job image must run the platform's Flower. "
                f"Change the requirement to 'flwr=={platform}' (or a range that contains {platform})."
            )
    wanted = ", ".join(f"'{r}'" for r in asked) or "no flwr requirement"
    return f"flwr: the app asks for {wanted}; the image installs the platform's flwr {platform}"


def main(argv: list[str]) -> int:
    if len(argv) != 3:
        print(__doc__.strip().splitlines()[-1], file=sys.stderr)
        return 2
    try:
        print(check(Path(argv[1]), Path(argv[2])))
    except ValueError as err:
        print(f"check_flower: {err}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
