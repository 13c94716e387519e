"""An image to build (its Dockerfile, build arguments, app) and the digest of everything that shapes it.

The digest (`content_key`) covers the Dockerfile, the files its build context admits (the
`Dockerfile.dockerignore` allow-list: the lock, training/, the checks), the app directory a named
context brings in, the build arguments and the bases' image IDs. An image built from the same key
(tools/images/buildah.py records which) has exactly these inputs, so `make images` tags it again
instead of building.
"""

from __future__ import annotations

import fnmatch
import hashlib
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from tools.images.settings import REPO

PLATFORM_DOCKERFILE = REPO / "images" / "platform" / "Dockerfile"
JOB_DOCKERFILE = REPO / "images" / "job" / "Dockerfile"
# Never part of an image (the dockerignore files exclude them; an app directory's caches neither).
_IGNORED = ("__pycache__", "*.pyc", ".git", ".venv", ".pytest_cache")


@dataclass(frozen=True)
class Recipe:
    """One image: `docker build --file dockerfile --build-arg ... [--build-context app=app] REPO`."""

    name: str  # the reference it is tagged with
    dockerfile: Path
    build_args: Mapping[str, str] = field(default_factory=dict)
    app: Path | None = None

    @property
    def ignore_file(self) -> Path:
        return self.dockerfile.with_name("Dockerfile.dockerignore")

    def deps_key(self, base_ids: Mapping[str, str]) -> str:
        """The digest of what shapes the dependency layers (Dockerfile, lock, bases, build args,
        the app's pyproject.toml): when it changes, no layer of the previous build can be reused."""
        digest = hashlib.sha256()
        for path in (self.dockerfile, REPO / "requirements" / "requirements.lock"):
            digest.update(path.read_bytes())
        if self.app is not None:
            digest.update((self.app / "pyproject.toml").read_bytes())
        digest.update(repr(sorted(self.build_args.items())).encode())
        digest.update(repr(sorted(base_ids.items())).encode())
        return digest.hexdigest()

    def content_key(self, base_ids: Mapping[str, str]) -> str:
        """The digest of every input of the build (`base_ids`: base image name -> image ID)."""
        digest = hashlib.sha256()
        digest.update(repr(sorted(self.build_args.items())).encode())
        digest.update(repr(sorted(base_ids.items())).encode())
        for path in (self.dockerfile, self.ignore_file, *admitted(self.ignore_file)):
            _add_file(digest, path.relative_to(REPO).as_posix(), path)
        if self.app is not None:
            for path in _files(self.app):
                _add_file(digest, "app/" + path.relative_to(self.app).as_posix(), path)
        return digest.hexdigest()


def _add_file(digest: hashlib._Hash, name: str, path: Path) -> None:
    digest.update(f"{name}\0{path.stat().st_mode & 0o111:o}\0".encode())
    digest.update(hashlib.sha256(path.read_bytes()).digest())


def _ignored(path: Path) -> bool:
    return any(fnmatch.fnmatch(part, pattern) for part in path.parts for pattern in _IGNORED)


def _files(root: Path) -> Iterator[Path]:
    """Every file under `root` (a file or a directory) but caches, in a stable order."""
    if root.is_file():
        yield root
        return
    for path in sorted(root.rglob("*")):
        if path.is_file() and not _ignored(path.relative_to(root)):
            yield path


def admitted(ignore_file: Path) -> list[Path]:
    """The repository files an allow-list dockerignore (`*`, then `!path` lines) lets into the context."""
    files: list[Path] = []
    for line in ignore_file.read_text().splitlines():
        line = line.strip()
        if line.startswith("!"):
            files.extend(_files(REPO / line[1:].rstrip("/")))
    return files
