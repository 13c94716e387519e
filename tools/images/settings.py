"""What `make images` builds: its settings (environment or `make images NAME=value`), checked
before any builder runs, each bad value named in one line.

    REGISTRY      registry and path the images are named for      (default localhost:5000/flowerbed)
    TAG           image tag, before the -flwr<release> make images appends
                                            (default: the commit, `git describe --always --dirty`)
    JOB_VARIANTS  job image variants, of cuda and cpu             (default "cuda")
    APP           a Flower App directory: build its job image instead of training/'s and the platform's
    PUSH=1        push every image once all are built
    BUILDER       docker, buildah or auto (default auto: Docker where an engine answers, else buildah)
"""

from __future__ import annotations

import re
import subprocess
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
VARIANTS = ("cuda", "cpu")
BUILDERS = ("auto", "docker", "buildah")
# Docker's reference grammar: a lowercase repository path; a tag of at most 128 characters (100 here, as
# "-flwr<release>" and the cpu variant's "-cpu" follow it).
_REGISTRY = re.compile(r"^[a-z0-9]([a-z0-9._:/-]*[a-z0-9])?$")
_TAG = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,99}$")
_REPOSITORY = re.compile(r"^[a-z0-9]+([._-][a-z0-9]+)*$")


class SettingError(ValueError):
    """A setting that cannot work; the message names it and what is allowed."""


@dataclass(frozen=True)
class Settings:
    registry: str
    tag: str
    variants: tuple[str, ...]
    app: Path | None  # absolute; None: training/ and the platform image
    push: bool
    builder: str

    @property
    def job_repository(self) -> str:
        """`job`, or `job-<app directory name>` for another app's job image."""
        return "job" if self.app is None else f"job-{self.app.name.lower()}"


def default_tag() -> str:
    return subprocess.run(["git", "describe", "--always", "--dirty"], cwd=REPO, capture_output=True, text=True,
                          check=True).stdout.strip()


def flower_app(directory: Path) -> Path:
    """`directory` resolved, if it holds a Flower App (`pyproject.toml` with `[tool.flwr.app]`)."""
    pyproject = directory / "pyproject.toml"
    if not pyproject.is_file():
        raise SettingError(f"APP: '{directory}' has no pyproject.toml; expected a Flower App directory")
    try:
        tool = tomllib.loads(pyproject.read_text(encoding="utf-8")).get("tool", {})
    except tomllib.TOMLDecodeError as err:
        raise SettingError(f"APP: {pyproject} is not valid TOML ({err})") from None
    if "app" not in tool.get("flwr", {}):
        raise SettingError(f"APP: {pyproject} has no [tool.flwr.app] table; expected a Flower App directory")
    return directory.resolve()


def read(env: Mapping[str, str], cwd: Path) -> Settings:
    """The settings from `env`; a relative APP is relative to `cwd` (where the user ran make)."""
    app = flower_app(cwd / env["APP"]) if env.get("APP") else None
    registry = env.get("REGISTRY") or "localhost:5000/flowerbed"
    if not _REGISTRY.match(registry):
        raise SettingError(f"REGISTRY: '{registry}' is not an image repository prefix (lowercase a-z, 0-9, '.', "
                           "'_', '-', ':', '/'; e.g. registry.example.org/flowerbed)")
    tag = env.get("TAG") or default_tag()
    if not _TAG.match(tag):
        raise SettingError(f"TAG: '{tag}' is not an image tag (A-Z, a-z, 0-9, '_', '.', '-'; at most 100 "
                           "characters, as -flwr<release> and the cpu variant's '-cpu' follow it; not starting with '.' or '-')")
    variants = tuple((env.get("JOB_VARIANTS") or "cuda").split())
    for variant in variants:
        if variant not in VARIANTS:
            raise SettingError(f"JOB_VARIANTS: '{variant}' is not a job image variant (allowed: cuda, cpu)")
    push = env.get("PUSH") or "0"
    if push not in ("0", "1"):
        raise SettingError(f"PUSH: '{push}' is not 0 or 1")
    builder = env.get("BUILDER") or "auto"
    if builder not in BUILDERS:
        raise SettingError(f"BUILDER: '{builder}' is not one of {', '.join(BUILDERS)}")
    settings = Settings(registry, tag, variants, app, push == "1", builder)
    if not _REPOSITORY.match(settings.job_repository):
        raise SettingError(f"APP: the directory name of '{app}' does not make an image name "
                           f"({settings.job_repository}); use one of a-z, 0-9, '.', '_', '-'")
    return settings
