"""Fixtures of the image tests: the parsed Dockerfiles and the lock."""

from __future__ import annotations

import pytest

from imagefiles import DOCKERFILES, Dockerfile, parse_dockerfile, read_lock


@pytest.fixture(scope="session")
def dockerfiles() -> dict[str, Dockerfile]:
    return {name: parse_dockerfile(path) for name, path in DOCKERFILES.items()}


@pytest.fixture(scope="session")
def lock() -> dict[str, str]:
    return read_lock()
