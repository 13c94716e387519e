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


@pytest.fixture(scope="session")
def built():
    """The platform and job images, as `make images` builds them here (buildah; reused when unchanged)."""
    from tools.images.build import build_with_buildah
    from tools.images.settings import Settings

    return build_with_buildah(Settings("localhost/flowerbed", "local", ("cuda",), None, False, "buildah"))


@pytest.fixture(scope="session")
def rendered_dev(tmp_path_factory) -> list[dict]:
    """Every object a real `pulumi up` of the dev stack renders (render mode), Secrets with their data."""
    from tests.engine.engine_project import StackCopy
    from tools.engine.stack import rendered_manifests

    copy = StackCopy.create(tmp_path_factory.mktemp("dev-render"))
    copy.up()
    return [doc for _, doc in rendered_manifests(copy.render_root)]


@pytest.fixture(scope="session")
def own_app(tmp_path_factory):
    """A small Flower App that is not flowerbed's (numpy and flwr only: tests/federate/apps.py)."""
    from tests.federate.apps import message_api_app

    return message_api_app(tmp_path_factory.mktemp("apps") / "ownapp")


@pytest.fixture(scope="session")
def own_app_image(built, own_app) -> str:
    """Its job image, as `make images APP=DIR` builds it."""
    from tools.images.build import build_with_buildah
    from tools.images.settings import Settings

    return build_with_buildah(Settings("localhost/flowerbed", "local", ("cuda",), own_app, False, "buildah")).jobs[0]
