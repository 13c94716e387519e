"""buildah, the daemonless builder `make images` uses where no Docker engine answers.

Debian bookworm's buildah (1.28) builds the unchanged Dockerfiles (BuildKit's `RUN --mount=type=cache`
and `--build-context` included) as root without a daemon (shared/research/images-built-here.md).
Its image store is this project's own, under the cache (`~/.cache/flowerbed/images/storage`), so
builds are reused across clones and nothing lands in the system's store; the runtime is runc,
because crun (buildah's default) refuses this machine's cgroup v1 hierarchy.

Builds trust what this machine trusts: its CA bundle, a pip.conf and a uv.toml pointing at it are
mounted read-only into every RUN (`buildah bud -v`), so nothing of them lands in an image.
"""

from __future__ import annotations

import fcntl
import json
import os
import re
import shutil
import subprocess
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path

from tools.images.recipe import REPO, Recipe

CACHE = Path(os.environ.get("FLOWERBED_CACHE", Path.home() / ".cache" / "flowerbed")) / "images"
STORAGE = CACHE / "storage"
# BuildKit-style cache mounts (`RUN --mount=type=cache`: uv's wheels) live under $TMPDIR/buildah-cache.
TMP = CACHE / "tmp"
# content key -> the ID of the image built from it (tools/images/recipe.py)
BUILT = CACHE / "built"
TESTED_VERSION = "1.28"
HOST_CA_BUNDLE = Path("/etc/ssl/certs/ca-certificates.crt")
# The lines of a failed build that say why: the Dockerfiles' own checks print `check_<what>: ...`.
_CHECK_LINE = re.compile(r"^check_[a-z]+: ")


class BuildahError(RuntimeError):
    """buildah is missing, or a build failed; the message is one line (plus where the log is)."""


def runtime() -> str:
    found = shutil.which("runc") or "/usr/sbin/runc"
    if not Path(found).exists():
        raise BuildahError("runc not found: install Debian's runc (apt-get install runc); buildah's default "
                           "runtime, crun, refuses cgroup v1 hosts")
    return found


def available() -> bool:
    return shutil.which("buildah") is not None


def version() -> str:
    out = subprocess.run(["buildah", "--version"], capture_output=True, text=True, check=True).stdout
    return out.split()[2]


def _global_flags() -> list[str]:
    return ["--root", str(STORAGE), "--runroot", str(CACHE / "run"), "--storage-driver", "overlay"]


def _env() -> dict[str, str]:
    return {**os.environ, "TMPDIR": str(TMP)}


def buildah(*args: str, capture: bool = True, check: bool = True,
            stdin: int | None = None, stdout=None) -> subprocess.CompletedProcess:
    result = subprocess.run(["buildah", *_global_flags(), *args], env=_env(), text=stdout is None,
                            capture_output=capture and stdout is None, stdin=stdin, stdout=stdout)
    if check and result.returncode != 0:
        raise BuildahError(f"buildah {' '.join(args[:2])} failed: {(result.stderr or '').strip()[-500:]}")
    return result


@contextmanager
def store_lock() -> Iterator[None]:
    """One builder at a time in the shared store (two clones, or a test next to `make images`)."""
    CACHE.mkdir(parents=True, exist_ok=True)
    with open(CACHE / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield


def image_id(name: str) -> str | None:
    result = buildah("inspect", "--type", "image", "--format", "{{.FromImageID}}", name, check=False)
    return result.stdout.strip() or None if result.returncode == 0 else None


def labels(name: str) -> dict[str, str]:
    config = json.loads(buildah("inspect", "--type", "image", name).stdout)
    return (config.get("OCIv1", {}).get("config", {}) or {}).get("Labels") or {}


def _images() -> list[dict]:
    """Every image in the store (`buildah images --json`), IDs in full and without `sha256:`."""
    images = json.loads(buildah("images", "--json", "--no-trunc").stdout or "[]") or []
    for image in images:
        image["id"] = image["id"].removeprefix("sha256:")
    return images


def built_from(content_key: str) -> str | None:
    """The ID of the image a finished build made from inputs with this digest, if it is still in the store.

    Recorded by `record_built` (buildah's --label lands on every stage's image, so a label cannot tell
    the final image from the intermediate ones)."""
    record = BUILT / content_key
    if not record.exists():
        return None
    image = record.read_text().strip()
    return image if image_id(image) == image else None


def record_built(content_key: str, image: str) -> None:
    BUILT.mkdir(parents=True, exist_ok=True)
    (BUILT / content_key).write_text(image + "\n")


def tagged(repository: str) -> list[tuple[str, str]]:
    """(name, image ID) of every tag of `repository` in the store."""
    return [(name, image["id"]) for image in _images() for name in image.get("names") or []
            if name.rsplit(":", 1)[0] == repository]


def build(recipe: Recipe, labels: Mapping[str, str], log: Path) -> None:
    """`buildah bud` of `recipe`, its output in `log`; BuildahError with the reason line on failure.

    `--layers` keeps the layer cache, `--force-rm` removes a failed build's working container,
    and a failed build tags nothing, so no half-built image passes for a good one.
    """
    config = _build_config()
    # docker format: the OCI image config has no SHELL, which buildah then ignores (images/platform uses it).
    args = ["bud", "--format", "docker", "--layers", "--force-rm", "--pull=never", "--network", "host", "--runtime", runtime(),
            "--file", str(recipe.dockerfile), "--ignorefile", str(recipe.ignore_file), "--tag", recipe.name,
            *(f"--volume={host}:{inside}:ro" for host, inside in config),
            *(arg for key, value in sorted(recipe.build_args.items()) for arg in ("--build-arg", f"{key}={value}")),
            *(arg for key, value in sorted(labels.items()) for arg in ("--label", f"{key}={value}")),
            *(["--build-context", f"app={recipe.app}"] if recipe.app is not None else []), str(REPO)]
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "w") as out:
        result = subprocess.run(["buildah", *_global_flags(), *args], env=_env(), stdout=out,
                                stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, cwd=REPO)
    # FROM-only stages leave working containers behind that pin their images (buildah 1.28).
    buildah("rm", "--all", check=False)
    if result.returncode != 0:
        raise BuildahError(f"{recipe.name}: {failure_reason(log.read_text(errors='replace'))} (log: {log})")


def failure_reason(output: str) -> str:
    """The line that says why a build failed: a Dockerfile check's own line, else buildah's error."""
    lines = [line.strip() for line in output.splitlines() if line.strip()]
    checks = [line for line in lines if _CHECK_LINE.match(line)]
    if checks:
        return checks[-1]
    errors = [line for line in lines if line.startswith(("error", "Error"))]
    return errors[-1] if errors else (lines[-1] if lines else "no output")


def _build_config() -> list[tuple[Path, str]]:
    """(host file, path in the build container) of what lets pip and uv trust this machine's CAs."""
    TMP.mkdir(parents=True, exist_ok=True)
    pip_conf = CACHE / "pip.conf"
    pip_conf.write_text(f"[global]\ncert = {HOST_CA_BUNDLE}\n")
    uv_toml = CACHE / "uv.toml"
    uv_toml.write_text("system-certs = true\n")
    return [(HOST_CA_BUNDLE, str(HOST_CA_BUNDLE)), (pip_conf, "/etc/pip.conf"), (uv_toml, "/etc/uv/uv.toml")]


def tag(image: str, *names: str) -> None:
    buildah("tag", image, *names)


def remove(*images: str) -> None:
    if images:
        buildah("rmi", "--force", *images, check=False)


def prune() -> None:
    """Drops untagged images: the layer cache of builds whose inputs changed."""
    buildah("rmi", "--prune", check=False)


def push(image: str, destination: str, *, insecure: bool = False) -> None:
    """Pushes `image` to `destination` (a transport reference, e.g. docker://host/name:tag).

    `insecure`: a registry of this machine's own, over plain HTTP on a private bridge; layers go
    uncompressed, since compressing several GB costs more than sending them over a veth.
    """
    flags = ["--tls-verify=false", "--disable-compression"] if insecure else []
    buildah("push", "--quiet", *flags, image, destination)


def store_size() -> int:
    """Bytes the store and the build caches take on disk."""
    total = 0
    for root in (STORAGE, TMP):
        for path in root.rglob("*") if root.exists() else ():
            if path.is_file() and not path.is_symlink():
                total += path.lstat().st_size
    return total


def describe(names: Sequence[str]) -> str:
    """`name (size)` of images in the store, for the summary line."""
    sizes = {name: image.get("size", "?") for image in _images() for name in image.get("names") or []}
    return ", ".join(f"{name} ({sizes.get(name, '?')})" for name in names)
