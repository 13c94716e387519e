"""tools/build-images (`make images`) with Docker, against a stand-in `docker` that records its calls.

The buildah path builds for real: tests/images/test_built_images.py.
"""

from __future__ import annotations

import os
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from components.flower_release import FLOWER_RELEASE
from imagefiles import REPO

V = f"-flwr{FLOWER_RELEASE}"  # what make images appends to TAG

SCRIPT = REPO / "tools" / "build-images"
FAKE_DOCKER = """#!/bin/sh
echo "$*" >> "$DOCKER_CALLS"
[ "$1" != info ] || exit "$DOCKER_INFO_EXIT"
"""


def build_images(tmp_path: Path, *, engine: bool, cwd: Path | None = None, only_docker_on_path: bool = False,
                 **settings: str) -> tuple[subprocess.CompletedProcess[str], list[list[str]]]:
    """Runs tools/build-images with the stand-in docker first on PATH (with `only_docker_on_path`: and
    nothing else but the shell, python3 and git, so no buildah either)."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(exist_ok=True)
    docker = bin_dir / "docker"
    docker.write_text(FAKE_DOCKER)
    docker.chmod(0o755)
    calls = tmp_path / "calls"
    calls.write_text("")
    path = f"{bin_dir}:{os.environ['PATH']}"
    if only_docker_on_path:
        tools = {name: Path(f"/usr/bin/{name}") for name in ("bash", "sh", "dirname", "git")}
        for name, target in {**tools, "python3": Path(sys.base_prefix) / "bin" / "python3"}.items():
            (bin_dir / name).unlink(missing_ok=True)
            (bin_dir / name).symlink_to(target)
        path = str(bin_dir)
    env = {**os.environ, "PATH": path, "DOCKER_CALLS": str(calls), "DOCKER_INFO_EXIT": "0" if engine else "1",
           **settings}
    result = subprocess.run([SCRIPT], env=env, capture_output=True, text=True, timeout=60, cwd=cwd)
    return result, [shlex.split(line) for line in calls.read_text().splitlines()]


def _builds(calls: list[list[str]]) -> dict[str, list[str]]:
    """Image tag -> the `docker build` arguments that built it."""
    return {call[call.index("--tag") + 1]: call for call in calls if call[0] == "build"}


def test_without_an_engine_or_buildah_it_builds_nothing_and_fails(tmp_path):
    result, calls = build_images(tmp_path, engine=False, only_docker_on_path=True, TAG="t1")
    assert result.returncode == 1
    assert "no Docker engine answers ('docker info' failed) and buildah is not installed" in result.stderr
    assert calls == [["info"]]


def test_docker_asked_for_without_an_engine_builds_nothing_and_fails(tmp_path):
    result, calls = build_images(tmp_path, engine=False, TAG="t1", BUILDER="docker")
    assert result.returncode == 1
    assert "BUILDER=docker, but no Docker engine answers" in result.stderr
    assert all(call == ["info"] for call in calls)


def test_builds_the_platform_image_and_both_job_variants(tmp_path):
    result, calls = build_images(tmp_path, engine=True, REGISTRY="registry.example.org/flowerbed", TAG="0.1.0",
                                 JOB_VARIANTS="cuda cpu")
    assert result.returncode == 0, result.stderr
    builds = _builds(calls)
    assert sorted(builds) == [f"registry.example.org/flowerbed/job:0.1.0{V}",
                              f"registry.example.org/flowerbed/job:0.1.0{V}-cpu",
                              f"registry.example.org/flowerbed/platform:0.1.0{V}"]
    platform = builds[f"registry.example.org/flowerbed/platform:0.1.0{V}"]
    assert platform[platform.index("--file") + 1] == "images/platform/Dockerfile"
    assert platform[-1] == "."  # the repository root: the lock and training/ are in the context
    for call in builds.values():
        assert call[call.index("--platform") + 1] == "linux/amd64"
    for tag, variant in ((f"0.1.0{V}", "VARIANT=cuda"), (f"0.1.0{V}-cpu", "VARIANT=cpu")):
        job = builds[f"registry.example.org/flowerbed/job:{tag}"]
        assert job[job.index("--file") + 1] == "images/job/Dockerfile"
        assert job[job.index("--build-arg") + 1] == variant
    assert not [c for c in calls if c[0] == "push"]
    assert f"job: registry.example.org/flowerbed/job:0.1.0{V}" in result.stdout


def test_the_cuda_job_image_is_the_default_variant(tmp_path):
    result, calls = build_images(tmp_path, engine=True, REGISTRY="r.example/f", TAG="v1")
    assert result.returncode == 0, result.stderr
    assert sorted(_builds(calls)) == [f"r.example/f/job:v1{V}", f"r.example/f/platform:v1{V}"]


def test_push_comes_after_every_build(tmp_path):
    result, calls = build_images(tmp_path, engine=True, REGISTRY="r.example/f", TAG="v2", JOB_VARIANTS="cuda",
                                 PUSH="1")
    assert result.returncode == 0, result.stderr
    assert [c[0] for c in calls if c[0] != "info"] == ["build", "build", "push", "push"]
    assert {c[1] for c in calls if c[0] == "push"} == {f"r.example/f/platform:v2{V}", f"r.example/f/job:v2{V}"}


def test_default_tag_is_the_commit(tmp_path):
    result, calls = build_images(tmp_path, engine=True, JOB_VARIANTS="cpu")
    assert result.returncode == 0, result.stderr
    commit = subprocess.run(["git", "describe", "--always", "--dirty"], cwd=REPO, capture_output=True,
                            text=True, check=True).stdout.strip()
    assert sorted(_builds(calls)) == [f"localhost:5000/flowerbed/job:{commit}{V}-cpu",
                                      f"localhost:5000/flowerbed/platform:{commit}{V}"]


@pytest.mark.parametrize(("setting", "value", "message"), [
    ("TAG", "1.0/latest", "TAG: '1.0/latest' is not an image tag"),
    ("REGISTRY", "Registry.Example.org/flowerbed", "REGISTRY: 'Registry.Example.org/flowerbed' is not"),
    ("JOB_VARIANTS", "cuda rocm", "JOB_VARIANTS: 'rocm' is not a job image variant (allowed: cuda, cpu)"),
    ("PUSH", "yes", "PUSH: 'yes' is not 0 or 1"),
    ("BUILDER", "kaniko", "BUILDER: 'kaniko' is not one of auto, docker, buildah"),
])
def test_bad_setting_names_the_field_before_touching_docker(tmp_path, setting, value, message):
    result, calls = build_images(tmp_path, engine=True, **{"TAG": "t1", setting: value})
    assert result.returncode == 2
    assert result.stderr.startswith(f"build-images: {message}")
    assert calls == []


def _flower_app(directory: Path) -> Path:
    directory.mkdir()
    (directory / "pyproject.toml").write_text('[project]\nname = "my-app"\n[tool.flwr.app]\npublisher = "me"\n')
    return directory


def test_an_app_gets_its_own_job_image_from_the_named_context(tmp_path):
    app = _flower_app(tmp_path / "My_App")
    result, calls = build_images(tmp_path, engine=True, REGISTRY="r.example/f", TAG="v3", APP=str(app),
                                 JOB_VARIANTS="cuda cpu")
    assert result.returncode == 0, result.stderr
    builds = _builds(calls)
    assert sorted(builds) == [f"r.example/f/job-my_app:v3{V}", f"r.example/f/job-my_app:v3{V}-cpu"]  # no platform image
    for call in builds.values():
        assert call[call.index("--file") + 1] == "images/job/Dockerfile"
        assert call[call.index("--build-context") + 1] == f"app={app}"
        assert call[-1] == "."  # the repository root still gives the lock and the checks
    assert f"flowerbed:images: {{job: r.example/f/job-my_app:v3{V}}}" in result.stdout


def test_a_relative_app_is_the_callers(tmp_path):
    _flower_app(tmp_path / "app")
    result, calls = build_images(tmp_path, engine=True, TAG="t1", JOB_VARIANTS="cpu", APP="app", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    [call] = _builds(calls).values()
    assert call[call.index("--build-context") + 1] == f"app={tmp_path / 'app'}"


@pytest.mark.parametrize(("pyproject", "message"), [
    (None, "has no pyproject.toml; expected a Flower App directory"),
    ('[project]\nname = "x"\n', "has no [tool.flwr.app] table"),
])
def test_a_directory_that_is_no_flower_app_is_refused_before_touching_docker(tmp_path, pyproject, message):
    app = tmp_path / "app"
    app.mkdir()
    if pyproject is not None:
        (app / "pyproject.toml").write_text(pyproject)
    result, calls = build_images(tmp_path, engine=True, TAG="t1", APP=str(app))
    assert result.returncode == 2
    assert result.stderr.startswith("build-images: APP: ") and message in result.stderr
    assert calls == []
