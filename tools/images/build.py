"""make images: builds flowerbed's images with Docker, or without it with buildah.

    $REGISTRY/platform:$TAG-flwr$V     images/platform/Dockerfile
    $REGISTRY/job:$TAG-flwr$V          images/job/Dockerfile, VARIANT=cuda   (...-flwr$V-cpu for VARIANT=cpu)
    with APP=DIR only the job image of that Flower App (the platform image is shared):
    $REGISTRY/job-<dir>:$TAG-flwr$V    images/job/Dockerfile, --build-context app=DIR
$V is the flwr of requirements/requirements.lock: the tag says which Flower release the image runs, and
the program refuses images of another release at preview (components/flower_release.py).

With Docker (an engine answers `docker info`) it runs `docker build` as it always has. Without,
buildah builds the same Dockerfiles into this project's image store (tools/images/buildah.py):
bases that cannot be pulled are made here as labelled stand-ins (tools/images/standin.py), and an
image whose inputs (tools/images/recipe.py) are unchanged since its last build is tagged again
instead of built, in seconds. images/README.md describes both.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from components.flower_release import tag_suffix
from tools.images import buildah, standin
from tools.images.buildah import BuildahError
from tools.images.recipe import JOB_DOCKERFILE, PLATFORM_DOCKERFILE, REPO, Recipe
from tools.images.settings import SettingError, Settings, read

DEPS_KEY_LABEL = "org.flowerbed.deps-key"
FLOWER_LABEL = "org.flowerbed.flwr"
LOG_DIR = REPO / "out" / "images"
Say = Callable[[str], None]


def say(text: str) -> None:
    print(f"build-images: {text}", flush=True)


@dataclass(frozen=True)
class Result:
    """What one `make images` left in the store (buildah) or the engine (Docker)."""

    platform: str | None
    jobs: tuple[str, ...]

    @property
    def images(self) -> list[str]:
        return [*([self.platform] if self.platform else []), *self.jobs]


def recipes(settings: Settings) -> list[Recipe]:
    """What to build; every tag says the Flower release the image runs (components/flower_release.py)."""
    found = []
    tag = settings.tag + tag_suffix(flower_version())
    if settings.app is None:
        found.append(Recipe(f"{settings.registry}/platform:{tag}", PLATFORM_DOCKERFILE))
    for variant in settings.variants:
        suffix = "" if variant == "cuda" else f"-{variant}"
        found.append(Recipe(f"{settings.registry}/{settings.job_repository}:{tag}{suffix}", JOB_DOCKERFILE,
                            {"VARIANT": variant}, settings.app))
    return found


def dockerfile_args(dockerfile: Path) -> dict[str, str]:
    """The global ARG defaults of a Dockerfile (declared before its first FROM)."""
    args = {}
    for line in dockerfile.read_text().splitlines():
        if line.startswith("FROM "):
            break
        match = re.match(r"ARG (\w+)=(\S+)", line)
        if match:
            args[match[1]] = match[2]
    return args


def bases(recipe: Recipe) -> list[str]:
    """The images `recipe`'s build starts from: the bases of the stages the final stage needs (through
    FROM and `--from=`), build arguments applied; stages it does not need (another variant's) are skipped."""
    args = {**dockerfile_args(recipe.dockerfile), **recipe.build_args}
    stages: list[tuple[str | None, str, set[str]]] = []  # (name, base, stages copied from)
    for line in recipe.dockerfile.read_text().splitlines():
        line = re.sub(r"\$\{(\w+)\}", lambda m: args.get(m[1], ""), line)
        match = re.match(r"FROM (\S+)(?: AS (\S+))?", line)
        if match:
            stages.append((match[2], match[1], set()))
        elif stages:
            stages[-1][2].update(re.findall(r"--from=([\w.-]+)", line))
    by_name = {name: (base, refs) for name, base, refs in stages if name}
    found: list[str] = []
    todo = [(stages[-1][1], stages[-1][2])]
    seen: set[str] = set()
    while todo:
        base, refs = todo.pop()
        for parent in [base, *sorted(refs)]:
            if parent in by_name:
                if parent not in seen:
                    seen.add(parent)
                    todo.append(by_name[parent])
            elif parent != "scratch" and parent not in found:
                found.append(parent)
    return found


def flower_version() -> str:
    lock = (REPO / "requirements" / "requirements.lock").read_text()
    match = re.search(r"^flwr==(\S+)", lock, re.MULTILINE)
    if not match:
        raise BuildahError("requirements/requirements.lock pins no flwr")
    return match[1]


def revision() -> str:
    return subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO, capture_output=True, text=True,
                          check=True).stdout.strip()


# --- Docker -------------------------------------------------------------------------------------


def docker_answers() -> bool:
    return shutil.which("docker") is not None and subprocess.run(
        ["docker", "info"], capture_output=True).returncode == 0


def build_with_docker(settings: Settings) -> Result:
    """`docker build` (BuildKit) of every recipe for linux/amd64, the platform the lock is resolved for."""
    built = []
    for recipe in recipes(settings):
        say(f"building {recipe.name}")
        subprocess.run(["docker", "build", "--platform", "linux/amd64", "--file", str(recipe.dockerfile.relative_to(REPO)),
                        "--tag", recipe.name, "--label", f"org.opencontainers.image.revision={revision()}",
                        "--label", f"{FLOWER_LABEL}={flower_version()}",
                        *(a for k, v in recipe.build_args.items() for a in ("--build-arg", f"{k}={v}")),
                        *(["--build-context", f"app={recipe.app}"] if recipe.app else []), "."],
                       cwd=REPO, check=True, env={**os.environ, "DOCKER_BUILDKIT": "1"})
        built.append(recipe.name)
    if settings.push:
        for name in built:
            subprocess.run(["docker", "push", name], check=True)
    return _result(settings, built)


def _result(settings: Settings, built: list[str]) -> Result:
    platform = built[0] if settings.app is None else None
    return Result(platform, tuple(name for name in built if name != platform))


# --- buildah ------------------------------------------------------------------------------------


def build_with_buildah(settings: Settings, log_dir: Path = LOG_DIR) -> Result:
    """Every recipe into the project's buildah store, reusing an image whose inputs are unchanged."""
    if not buildah.version().startswith(f"{buildah.TESTED_VERSION}."):
        say(f"buildah {buildah.version()}: flowerbed's builds are tested with {buildah.TESTED_VERSION} "
            "(Debian bookworm's); going on")
    python = dockerfile_args(JOB_DOCKERFILE)["PYTHON_VERSION"]
    built = []
    with buildah.store_lock():
        todo = recipes(settings)
        base_ids = standin.ensure(sorted({b for r in todo for b in bases(r)}), python, say)
        for recipe in todo:
            built.append(_build_one(recipe, {b: base_ids[b] for b in bases(recipe)}, log_dir))
        if settings.push:
            _push(built)
    return _result(settings, built)


def _build_one(recipe: Recipe, base_ids: dict[str, str], log_dir: Path) -> str:
    if recipe.dockerfile == JOB_DOCKERFILE and any(standin.STAND_IN_LABEL in buildah.labels(b) for b in base_ids):
        # The stand-ins hold CPython in /usr/local; uv's python-build-standalone download is out of reach.
        recipe = Recipe(recipe.name, recipe.dockerfile, {**recipe.build_args, "PYTHON_FROM": "base"}, recipe.app)
    key = recipe.content_key(base_ids)
    repository = recipe.name.rsplit(":", 1)[0]
    started = time.monotonic()
    same = buildah.built_from(key)
    if same:
        buildah.tag(same, recipe.name)
        say(f"{recipe.name}: inputs unchanged since its last build; tagged again in {time.monotonic() - started:.1f} s")
    else:
        deps_key = recipe.deps_key(base_ids)[:16]
        previous = [image for _, image in buildah.tagged(repository)]
        if previous and all(buildah.labels(i).get(DEPS_KEY_LABEL) != deps_key for i in previous):
            # The dependency layers change: the old layer cache cannot be reused; keep one generation.
            buildah.remove(*previous)
            buildah.prune()
        say(f"building {recipe.name} (log: {_shown(log_dir / _log_name(recipe))})")
        # Only labels that change with the dependencies: buildah 1.28 keys its layer cache on them too, so a
        # label that changed with every commit (the revision) would rebuild every layer every time.
        buildah.build(recipe, {DEPS_KEY_LABEL: deps_key, FLOWER_LABEL: flower_version()}, log_dir / _log_name(recipe))
        buildah.record_built(key, buildah.image_id(recipe.name))
        say(f"{recipe.name}: built in {time.monotonic() - started:.0f} s")
    new_id = buildah.image_id(recipe.name)
    stale = [name for name, image in buildah.tagged(repository) if image != new_id]
    buildah.remove(*stale)  # the store keeps the newest build of each image
    return recipe.name


def _log_name(recipe: Recipe) -> str:
    return recipe.name.rsplit("/", 1)[-1].replace(":", "-") + ".log"


def _shown(path: Path) -> str:
    return str(path.relative_to(REPO)) if path.is_relative_to(REPO) else str(path)


def _push(names: list[str]) -> None:
    for name in names:
        if standin.STAND_IN_LABEL in buildah.labels(name):
            raise BuildahError(f"{name} is built on a stand-in base ({buildah.labels(name)[standin.STAND_IN_LABEL]}): "
                               "not pushed; build where the production bases can be pulled")
    for name in names:
        buildah.push(name, f"docker://{name}")


# --- entry point --------------------------------------------------------------------------------


def build(settings: Settings) -> Result:
    """Builds with Docker or buildah as `settings.builder` says (auto: Docker where an engine answers)."""
    if settings.builder == "docker" or (settings.builder == "auto" and docker_answers()):
        if not docker_answers():
            raise BuildahError("BUILDER=docker, but no Docker engine answers ('docker info' failed)")
        return build_with_docker(settings)
    if not buildah.available():
        raise BuildahError("no Docker engine answers ('docker info' failed) and buildah is not installed: "
                           "apt-get install buildah runc mmdebstrap (Debian bookworm), or run where Docker 23+ runs")
    return build_with_buildah(settings)


def main() -> int:
    try:
        settings = read(os.environ, Path(os.environ.get("CALLER_CWD", os.getcwd())))
    except SettingError as err:
        print(f"build-images: {err}", file=sys.stderr)
        return 2
    try:
        result = build(settings)
    except BuildahError as err:
        print(f"build-images: {err}", file=sys.stderr)
        return 1
    except subprocess.CalledProcessError as err:
        print(f"build-images: {' '.join(map(str, err.cmd[:3]))} failed (exit {err.returncode})", file=sys.stderr)
        return 1
    say(f"built {' '.join(result.images)}")
    if settings.builder != "docker" and not docker_answers():
        say(f"in the buildah store {_shown(buildah.STORAGE)}: {buildah.describe(result.images)}")
    job = result.jobs[0] if result.jobs else None
    if settings.app is not None:
        say(f"in Pulumi.<stack>.yaml: flowerbed:images: {{job: {job}}} (keep the platform image), then pulumi up")
    else:
        say(f"in Pulumi.<stack>.yaml: flowerbed:images: {{platform: {result.platform}, job: {job}}}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
