"""The Dockerfiles as Docker reads them, and the lock they install from (tests/images helpers).

No Docker engine runs here, so the image tests read the Dockerfiles with
dockerfile-parse (stages, global ARG defaults, base images with build args
applied) and compare what the images would install with the environment the
tests themselves run in.
"""

from __future__ import annotations

import json
import shlex
from dataclasses import dataclass
from pathlib import Path

from dockerfile_parse import DockerfileParser
from packaging.utils import canonicalize_name

REPO = Path(__file__).resolve().parents[2]
LOCK = REPO / "requirements" / "requirements.lock"
DOCKERFILES = {
    "platform": REPO / "images" / "platform" / "Dockerfile",
    "job": REPO / "images" / "job" / "Dockerfile",
}
# Options of `pip install` / `uv pip install` in the Dockerfiles that take a value.
_VALUED_OPTIONS = {"--python", "--constraint", "-c", "--requirement", "-r", "--index-url",
                   "--extra-index-url", "--torch-backend"}


@dataclass(frozen=True)
class Instruction:
    keyword: str
    value: str


@dataclass(frozen=True)
class Stage:
    base: str  # after build-arg substitution
    name: str | None
    instructions: tuple[Instruction, ...]

    def values(self, keyword: str) -> list[str]:
        return [i.value for i in self.instructions if i.keyword == keyword]


@dataclass(frozen=True)
class PipInstall:
    """One `pip install` or `uv pip install` command of a RUN instruction."""

    stage: Stage
    constraints: tuple[str, ...]
    requirement_files: tuple[str, ...]
    packages: tuple[str, ...]


@dataclass(frozen=True)
class Dockerfile:
    path: Path
    global_args: dict[str, str]  # ARG defaults declared before the first FROM
    stages: tuple[Stage, ...]

    @property
    def final(self) -> Stage:
        return self.stages[-1]

    def stage(self, name: str) -> Stage:
        matches = [s for s in self.stages if s.name == name]
        assert matches, f"{self.path}: no stage named {name!r}"
        return matches[0]

    def lineage(self, stage: Stage) -> list[Stage]:
        """`stage` and the stages of this file it is built FROM, nearest first."""
        chain = [stage]
        names = {s.name: s for s in self.stages if s.name}
        while chain[-1].base in names:
            chain.append(names[chain[-1].base])
        return chain

    def image_base(self, stage: Stage) -> str:
        """The image `stage` ultimately starts from, through the stages it is built FROM."""
        return self.lineage(stage)[-1].base

    def copied_from(self, stage: Stage, image_path: str) -> Path | None:
        """The repository file a COPY put at `image_path` in `stage`, if any: from the build
        context, or through `COPY --from=` a stage of this file that took it from there."""
        stages = {s.name: s for s in self.stages if s.name}
        for ancestor in self.lineage(stage):
            for copy in reversed(ancestor.values("COPY")):
                words = copy.split()
                origin = next((w.removeprefix("--from=") for w in words if w.startswith("--from=")), None)
                if origin is not None and origin not in stages:
                    continue  # another image's files, not the repository's
                dest = words[-1]
                for source in (w for w in words[:-1] if not w.startswith("--")):
                    for candidate in _copy_sources(source, dest, image_path):
                        found = (REPO / candidate if origin is None
                                 else self.copied_from(stages[origin], "/" + candidate.lstrip("/")))
                        if found is not None and found.exists():
                            return found
        return None

    def shell_commands(self) -> list[tuple[Stage, list[str]]]:
        """Every `&&`-separated command of every shell-form RUN, split into words."""
        commands = []
        for stage in self.stages:
            for run in stage.values("RUN"):
                if run.lstrip().startswith("["):
                    continue  # exec form: no shell
                for command in run.split("&&"):
                    commands.append((stage, shlex.split(command)))
        return commands

    def pip_installs(self) -> list[PipInstall]:
        installs = []
        for stage, words in self.shell_commands():
            if "pip" not in words or words[words.index("pip") + 1:words.index("pip") + 2] != ["install"]:
                continue
            options: dict[str, list[str]] = {}
            packages = []
            args = iter(words[words.index("pip") + 2:])
            for word in args:
                if word in _VALUED_OPTIONS:
                    options.setdefault(word, []).append(next(args))
                elif not word.startswith("-"):
                    packages.append(word)
            installs.append(PipInstall(
                stage=stage,
                constraints=tuple(options.get("--constraint", []) + options.get("-c", [])),
                requirement_files=tuple(options.get("--requirement", []) + options.get("-r", [])),
                packages=tuple(packages),
            ))
        return installs


def _copy_sources(source: str, dest: str, image_path: str) -> list[str]:
    """Where `image_path` came from if `COPY source dest` put it there (a file, or inside a directory)."""
    if not dest.endswith("/"):
        return [source] if image_path == dest else []
    if not image_path.startswith(dest):
        return []
    inside = image_path[len(dest):]
    candidates = [f"{source.rstrip('/')}/{inside}"]  # source is a directory
    if inside == source.rstrip("/").rsplit("/", 1)[-1]:
        candidates.append(source)  # source is a file, copied under its own name
    return candidates


def parse_dockerfile(path: Path, build_args: dict[str, str] | None = None) -> Dockerfile:
    parser = DockerfileParser(path=str(path), build_args=build_args or {})
    bases = iter(parser.parent_images)  # one per FROM, ARGs substituted
    global_args: dict[str, str] = {}
    stages: list[tuple[str, str | None, list[Instruction]]] = []
    for item in parser.structure:
        keyword, value = item["instruction"], item["value"]
        if keyword == "FROM":
            words = value.split()
            name = words[2] if len(words) == 3 and words[1].upper() == "AS" else None
            stages.append((next(bases), name, []))
        elif not stages:
            if keyword == "ARG" and "=" in value:
                key, _, default = value.partition("=")
                global_args[key] = default
        elif keyword != "COMMENT":
            stages[-1][2].append(Instruction(keyword, value))
    return Dockerfile(path=path, global_args=global_args,
                      stages=tuple(Stage(base, name, tuple(body)) for base, name, body in stages))


def exec_form(value: str) -> list[str] | None:
    """The argv of an exec-form CMD/ENTRYPOINT/RUN, or None for shell form."""
    try:
        parsed = json.loads(value)
    except json.JSONDecodeError:
        return None
    return parsed if isinstance(parsed, list) and all(isinstance(a, str) for a in parsed) else None


def read_lock(path: Path = LOCK) -> dict[str, str]:
    """Canonical package name -> pinned version, from uv's `name==version` lines."""
    pins = {}
    for line in path.read_text().splitlines():
        if line and not line.startswith((" ", "#", "-")):
            name, _, version = line.partition("==")
            pins[canonicalize_name(name)] = version.strip()
    return pins
