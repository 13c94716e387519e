"""Stand-in base images, made here for the bases that cannot be pulled here.

The Dockerfiles start from `python:3.11.7-slim-bookworm` (Docker Hub) and
`nvidia/cuda:13.0.2-base-ubuntu24.04` (NVIDIA's registry); where neither registry answers, the
builder is given a stand-in under the same name: Debian bookworm (minbase, from Debian's
mirror with mmdebstrap) plus the CPython the tests run on, copied into /usr/local as the official
Python images have it. For the CUDA base the same root filesystem gets the CUDA base's
environment (the variables the NVIDIA container toolkit reads); it is NOT Ubuntu and holds no
CUDA library, which the job image takes from torch's nvidia-* wheels anyway.

Every stand-in says so in its labels (`org.flowerbed.stand-in`: what it is and what differs from
the production base), which the images built on it inherit, so a stand-in-based image cannot
pass for a production one (`make images PUSH=1` refuses to push one).
Measured recipe: shared/research/images-built-here.md.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from tools.images import buildah
from tools.images.buildah import BuildahError

STAND_IN_LABEL = "org.flowerbed.stand-in"
RECIPE_LABEL = "org.flowerbed.stand-in-recipe"
SUITE = "bookworm"
# What python:3.11-slim-bookworm's own build installs for CPython's extension modules, and passwd
# (groupadd/useradd in the Dockerfiles) and ca-certificates, as the official image has them.
PACKAGES = ("passwd", "ca-certificates", "netbase", "tzdata", "libssl3", "libffi8", "libsqlite3-0", "libbz2-1.0",
            "liblzma5", "zlib1g", "libreadline8", "libncursesw6", "libtinfo6", "libuuid1", "libexpat1", "libnsl2",
            "libtirpc3", "libcrypt1")
DEBS = buildah.CACHE / "debs"
_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


@dataclass(frozen=True)
class StandIn:
    """A base the Dockerfiles name, and what its stand-in sets on top of the shared root filesystem."""

    name: str  # fully qualified, as buildah resolves the Dockerfile's FROM
    env: Mapping[str, str]
    cmd: str
    differs: str  # what is not as in the production base, for the label


def stand_ins(python: str) -> dict[str, StandIn]:
    """The stand-ins by the short name the Dockerfiles use (after their build arguments)."""
    return {
        f"python:{python}-slim-bookworm": StandIn(
            f"docker.io/library/python:{python}-slim-bookworm",
            {"PATH": _PATH, "LANG": "C.UTF-8", "PYTHON_VERSION": python}, "python3",
            f"Debian {SUITE} minbase + this machine's CPython {python} in /usr/local (not the python.org build)"),
        "nvidia/cuda:13.0.2-base-ubuntu24.04": StandIn(
            "docker.io/nvidia/cuda:13.0.2-base-ubuntu24.04",
            {"PATH": f"/usr/local/nvidia/bin:/usr/local/cuda/bin:{_PATH}",
             "LD_LIBRARY_PATH": "/usr/local/nvidia/lib:/usr/local/nvidia/lib64", "NVIDIA_VISIBLE_DEVICES": "all",
             "NVIDIA_DRIVER_CAPABILITIES": "compute,utility", "CUDA_VERSION": "13.0.2",
             "NVIDIA_REQUIRE_CUDA": "cuda>=13.0"}, "",
            f"Debian {SUITE} minbase + this machine's CPython {python} in /usr/local with the CUDA base's "
            "environment: NOT Ubuntu 24.04, no CUDA libraries"),
    }


def _mirrors() -> tuple[str, str]:
    """This machine's Debian mirror and security mirror (its apt sources), not a host named here."""
    text = "\n".join(p.read_text() for p in Path("/etc/apt").glob("sources.list*") if p.is_file())
    text += "\n".join(p.read_text() for p in Path("/etc/apt/sources.list.d").glob("*.sources"))
    uris = re.findall(r"^URIs:\s*(\S+)", text, re.MULTILINE) + re.findall(r"^deb\s+(?:\[[^]]*\]\s+)?(\S+)", text,
                                                                        re.MULTILINE)
    main = next((u for u in uris if "security" not in u), "http://deb.debian.org/debian")
    security = next((u for u in uris if "security" in u), "http://deb.debian.org/debian-security")
    return main, security


def host_python(version: str) -> Path:
    """The prefix of the CPython the tests run on; BuildahError unless it is `version`."""
    running = ".".join(map(str, sys.version_info[:3]))
    if running != version:
        raise BuildahError(f"the stand-in bases copy this machine's CPython ({running}, {sys.base_prefix}), but the "
                           f"Dockerfiles ask for {version}: run make images with a {version} python3 on PATH")
    return Path(sys.base_prefix)


def recipe_key(python: str) -> str:
    """Digest of everything a stand-in is made from (packages, suite, this file, the interpreter)."""
    digest = hashlib.sha256(Path(__file__).read_bytes())
    digest.update(repr((SUITE, PACKAGES, python, _mirrors())).encode())
    digest.update((host_python(python) / "bin" / f"python{python.rsplit('.', 1)[0]}").read_bytes())
    return digest.hexdigest()[:16]


def ensure(bases: list[str], python: str, say) -> dict[str, str]:
    """Each of `bases` (the Dockerfiles' FROM names) in the store: pulled, or made here as a stand-in.

    Returns base name -> image ID.
    """
    ids: dict[str, str] = {}
    known = stand_ins(python)
    missing = []
    for base in bases:
        stand_in = known.get(base)
        qualified = stand_in.name if stand_in else base
        current = buildah.image_id(qualified)
        if current and (stand_in is None or buildah.labels(qualified).get(RECIPE_LABEL) in (None, recipe_key(python))):
            ids[base] = current
            continue
        pulled = buildah.buildah("pull", "--quiet", qualified, check=False)
        if pulled.returncode == 0:
            ids[base] = buildah.image_id(qualified)
            continue
        if stand_in is None:
            raise BuildahError(f"base image {base} cannot be pulled here and has no stand-in: "
                               f"{pulled.stderr.strip().splitlines()[-1] if pulled.stderr.strip() else ''}")
        missing.append(stand_in)
    if missing:
        say(f"{', '.join(s.name for s in missing)}: cannot be pulled here; making stand-ins from Debian {SUITE} "
            f"and this machine's CPython {python} (labelled {STAND_IN_LABEL})")
        make(missing, python, say)
        for stand_in in missing:
            short = next(base for base, s in known.items() if s == stand_in)
            ids[short] = buildah.image_id(stand_in.name)
    return ids


def make(stand_ins_: list[StandIn], python: str, say) -> None:
    """One root filesystem (mmdebstrap + CPython), committed once per stand-in."""
    if shutil.which("mmdebstrap") is None:
        raise BuildahError("mmdebstrap not found: install Debian's mmdebstrap (apt-get install mmdebstrap), which "
                           "makes the stand-in bases")
    prefix = host_python(python)
    key = recipe_key(python)
    buildah.TMP.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=buildah.TMP, prefix="stand-in-") as scratch:
        rootfs = Path(scratch) / "rootfs"
        started = time.monotonic()
        _debootstrap(rootfs)
        say(f"  Debian {SUITE} minbase in {time.monotonic() - started:.0f} s")
        _copy_python(prefix, python, rootfs)
        tarball = Path(scratch) / "rootfs.tar"
        subprocess.run(["tar", "-C", str(rootfs), "--numeric-owner", "-cf", str(tarball), "."], check=True)
        for stand_in in stand_ins_:
            container = buildah.buildah("from", "scratch").stdout.strip()
            try:
                buildah.buildah("add", "--quiet", container, str(tarball), "/")
                config = [arg for k, v in stand_in.env.items() for arg in ("--env", f"{k}={v}")]
                buildah.buildah("config", *config, "--cmd", stand_in.cmd, "--label",
                                f"{STAND_IN_LABEL}={stand_in.differs}", "--label", f"{RECIPE_LABEL}={key}",
                                container)
                buildah.remove(stand_in.name)
                buildah.buildah("commit", "--quiet", container, stand_in.name)
            finally:
                buildah.buildah("rm", container, check=False)
        say(f"  stand-in bases made in {time.monotonic() - started:.0f} s")


def _debootstrap(rootfs: Path) -> None:
    """Debian minbase with the packages above; downloaded .debs are kept in the cache for the next time."""
    main, security = _mirrors()
    DEBS.mkdir(parents=True, exist_ok=True)
    archives = "/var/cache/apt/archives"
    result = subprocess.run([
        "mmdebstrap", "--variant=minbase", "--quiet", "--skip=download/empty", f"--include={','.join(PACKAGES)}",
        f'--setup-hook=mkdir -p "$1"{archives}', f"--setup-hook=sync-in {DEBS} {archives}",
        f"--customize-hook=sync-out {archives} {DEBS}",
        '--customize-hook=rm -rf "$1"/var/lib/apt/lists/* "$1"/var/cache/apt/*.bin',
        "--dpkgopt=path-exclude=/usr/share/man/*", "--dpkgopt=path-exclude=/usr/share/doc/*",
        "--dpkgopt=path-include=/usr/share/doc/*/copyright",
        SUITE, str(rootfs), f"deb {main} {SUITE} main", f"deb {main} {SUITE}-updates main",
        f"deb {security} {SUITE}-security main"], capture_output=True, text=True)
    if result.returncode != 0:
        raise BuildahError(f"mmdebstrap failed: {result.stderr.strip().splitlines()[-1:]}")


def _copy_python(prefix: Path, python: str, rootfs: Path) -> None:
    """CPython into /usr/local as python:X-slim has it: interpreter, shared library, stdlib, headers, pip."""
    minor = python.rsplit(".", 1)[0]
    local = rootfs / "usr" / "local"
    for sub in ("bin", "lib", "include"):
        (local / sub).mkdir(parents=True, exist_ok=True)
    shutil.copy2(prefix / "bin" / f"python{minor}", local / "bin")
    for link, target in (("python3", f"python{minor}"), ("python", "python3")):
        (local / "bin" / link).symlink_to(target)
    for library in (prefix / "lib").glob("libpython3*.so*"):
        shutil.copy2(library, local / "lib", follow_symlinks=False)
    shutil.copytree(prefix / "include" / f"python{minor}", local / "include" / f"python{minor}", symlinks=True)
    skipped = shutil.ignore_patterns("site-packages", "test", "tests", "idle_test", "__pycache__")
    shutil.copytree(prefix / "lib" / f"python{minor}", local / "lib" / f"python{minor}", symlinks=True,
                    ignore=skipped)
    (local / "lib" / f"python{minor}" / "site-packages").mkdir()
    chroot = ["chroot", str(rootfs)]
    subprocess.run([*chroot, "/sbin/ldconfig"], check=True)
    subprocess.run([*chroot, "/usr/local/bin/python3", "-m", "ensurepip", "--default-pip"], check=True,
                   capture_output=True, env={"PATH": _PATH, "HOME": "/root", **{k: v for k, v in os.environ.items()
                                                                               if k == "LANG"}})
    subprocess.run([*chroot, "/usr/local/bin/python3", "-c", "import ssl, sqlite3, ctypes, lzma, bz2, zlib, uuid"],
                   check=True)
