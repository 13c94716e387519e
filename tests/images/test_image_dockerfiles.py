"""The Dockerfiles agree with the tested environment and the lint.

One source of truth: the images' Python is the interpreter running these
tests, and every Python package they install is pinned by requirements.lock (the
lock this environment was built from). That they run as the uid the components'
security contexts demand is tested with the components (they import the Pulumi
SDK, which lives in the program environment): tests/components/test_image_contract.py.
"""

from __future__ import annotations

import importlib.metadata
import platform
import re
import subprocess
import sys
import tomllib
from collections.abc import Iterable
from pathlib import Path

import pytest
import torch
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

from imagefiles import DOCKERFILES, REPO, Dockerfile, exec_form, parse_dockerfile

IMAGES = sorted(DOCKERFILES)
VARIANTS = ("cuda", "cpu")
HADOLINT = Path(sys.executable).parent / "hadolint"


def requested_packages(dockerfile: Dockerfile) -> list[str]:
    """What the Dockerfile's pip installs ask for, requirement files read from the repository."""
    requested = []
    for install in dockerfile.pip_installs():
        requested += install.packages
        for image_path in install.requirement_files:
            source = dockerfile.copied_from(install.stage, image_path)
            assert source is not None, f"{dockerfile.path}: {image_path} is not copied from the repository"
            requested += tomllib.loads(source.read_text())["project"]["dependencies"]
    return requested


def dependency_closure(requirements: Iterable[str]) -> set[str]:
    """Canonical names of `requirements` and everything they pull in, per installed metadata."""
    seen: set[tuple[str, str]] = set()
    todo = [Requirement(r) for r in requirements]
    while todo:
        requirement = todo.pop()
        name = canonicalize_name(requirement.name)
        for extra in {"", *requirement.extras}:
            if (name, extra) in seen:
                continue
            seen.add((name, extra))
            try:
                lines = importlib.metadata.requires(name) or []
            except importlib.metadata.PackageNotFoundError:
                continue  # not in the tested environment: reported by the tests below
            for line in lines:
                dependency = Requirement(line)
                if dependency.marker is None or dependency.marker.evaluate({"extra": extra}):
                    todo.append(dependency)
    return {name for name, _ in seen}


# --- Python and package pins ------------------------------------------------------------


@pytest.mark.parametrize("image", IMAGES)
def test_python_is_the_interpreter_the_tests_run_on(dockerfiles, image):
    dockerfile = dockerfiles[image]
    assert dockerfile.global_args["PYTHON_VERSION"] == platform.python_version()
    python_bases = [s.base for s in dockerfile.stages if s.base.startswith("python:")]
    assert python_bases, f"{image}: no stage is built FROM an official python image"
    for base in python_bases:
        assert base.startswith(f"python:{platform.python_version()}-"), base


@pytest.mark.parametrize("image", IMAGES)
def test_every_python_install_is_constrained_by_the_lock(dockerfiles, image):
    dockerfile = dockerfiles[image]
    installs = dockerfile.pip_installs()
    assert installs, f"{image}: installs no Python package"
    for install in installs:
        assert install.constraints, f"{image}: a pip install without --constraint: {install}"
        for constraint in install.constraints:
            assert dockerfile.copied_from(install.stage, constraint) == REPO / "requirements" / "requirements.lock"
        # Versions live in the lock only; a pin here would be a copy that drifts.
        assert not [p for p in install.packages if re.search(r"[=<>~!@]", p)], install.packages


@pytest.mark.parametrize("image", IMAGES)
def test_the_lock_pins_everything_each_image_installs(dockerfiles, lock, image):
    closure = dependency_closure(requested_packages(dockerfiles[image]))
    assert {"flwr", "uv"} <= closure
    unpinned = sorted(closure - set(lock))
    assert not unpinned, f"{image} would install these at whatever version is newest: {unpinned}"


@pytest.mark.parametrize("image", IMAGES)
def test_the_lock_is_the_environment_the_tests_run_in(dockerfiles, lock, image):
    closure = dependency_closure(requested_packages(dockerfiles[image]))
    drifted = {name: (lock.get(name), _installed_version(name)) for name in closure
               if lock.get(name) is None or _installed_version(name) != Version(lock[name])}
    assert not drifted, f"(lock, tested environment) differ; rebuild it with `make venv`: {drifted}"


def _installed_version(name: str) -> Version | None:
    try:
        return Version(importlib.metadata.version(name))
    except importlib.metadata.PackageNotFoundError:
        return None


def test_job_image_installs_the_training_app_and_its_dependencies(dockerfiles):
    requested = {canonicalize_name(Requirement(r).name) for r in requested_packages(dockerfiles["job"])}
    assert {"flwr", "torch", "opacus", "scikit-learn", "numpy"} <= requested
    runtime = dockerfiles["job"].final
    assert any(c.split()[-1] == "/opt/flowerbed/app" for c in runtime.values("COPY"))
    assert "PYTHONPATH=/opt/flowerbed/app" in " ".join(runtime.values("ENV")).split()


def test_the_app_is_a_stage_a_named_build_context_replaces(dockerfiles):
    """`--build-context app=DIR` replaces the stage `app`; by default it holds training/."""
    job = dockerfiles["job"]
    app = job.stage("app")
    assert app.base == "scratch"  # nothing but the app's files, so a named context is a drop-in
    assert job.copied_from(app, "/pyproject.toml") == REPO / "training" / "pyproject.toml"
    # Every later use of the app goes through the stage, never the repository's training/ directly.
    later = [v for s in job.stages[job.stages.index(app) + 1:] for v in s.values("COPY") + s.values("RUN")]
    assert [v for v in later if "training/" in v] == []
    fab = job.stage("fab")
    assert "--from=app / /tmp/app-source/" in fab.values("COPY")
    assert any("flwr build --app /tmp/app-source" in v for v in fab.values("RUN"))


def test_the_flower_check_comes_before_the_apps_dependencies(dockerfiles):
    job = dockerfiles["job"]
    fab = job.stage("fab")
    assert fab.values("RUN")[0] == "python /tmp/check_flower.py /tmp/app/pyproject.toml /tmp/requirements.lock"
    assert job.copied_from(fab, "/tmp/check_flower.py") == REPO / "images" / "job" / "check_flower.py"
    # The final stage reads the app's pyproject.toml from the checked stage, so it installs nothing
    # for an app whose Flower the check refused.
    assert "--from=fab /tmp/app/pyproject.toml /tmp/app/pyproject.toml" in job.final.values("COPY")
    [install] = [i for i in job.pip_installs() if i.stage == job.final]
    assert install.requirement_files == ("/tmp/app/pyproject.toml",)
    assert "flwr" in install.packages  # the task commands are Flower's, whatever the app lists


def test_platform_image_installs_flower_and_the_kubernetes_client(dockerfiles):
    requested = {canonicalize_name(Requirement(r).name) for r in requested_packages(dockerfiles["platform"])}
    assert {"flwr", "kubernetes"} <= requested


# --- CUDA and the CPU variant --------------------------------------------------------------


def test_cuda_base_is_the_cuda_torch_is_built_for(dockerfiles, lock):
    cuda_version = dockerfiles["job"].global_args["CUDA_VERSION"]
    assert torch.version.cuda is not None, "the tested torch is the CUDA build the cuda variant ships"
    assert cuda_version.split(".")[:2] == torch.version.cuda.split(".")[:2]
    assert lock["nvidia-cuda-runtime"].split(".")[:2] == torch.version.cuda.split(".")[:2]
    job = parse_dockerfile(DOCKERFILES["job"], {"VARIANT": "cuda"})
    assert job.image_base(job.final) == f"nvidia/cuda:{cuda_version}-base-ubuntu{dockerfiles['job'].global_args['UBUNTU_VERSION']}"


@pytest.mark.parametrize("variant", VARIANTS)
def test_each_variant_selects_stages_of_the_file(variant):
    dockerfile = parse_dockerfile(DOCKERFILES["job"], {"VARIANT": variant})
    names = {s.name for s in dockerfile.stages}
    assert dockerfile.final.base == f"runtime-{variant}" and f"runtime-{variant}" in names


def test_cpu_variant_takes_torch_from_the_cpu_index_on_the_same_ubuntu(dockerfiles):
    job = dockerfiles["job"]
    [install] = [v for v in job.final.values("RUN") if "uv pip install" in v]
    # Only the cpu variant switches uv to the CPU index; the cuda variant takes PyPI's torch, as the tests do.
    assert 'if [ "${VARIANT}" = cpu ]; then export UV_TORCH_BACKEND=cpu; fi' in install
    assert "UV_TORCH_BACKEND" not in " ".join(v for s in job.stages for v in s.values("ENV"))
    cpu = parse_dockerfile(DOCKERFILES["job"], {"VARIANT": "cpu"})
    assert cpu.image_base(cpu.final) == f"ubuntu:{job.global_args['UBUNTU_VERSION']}"


# --- runtime ------------------------------------------------


@pytest.mark.parametrize("image", IMAGES)
def test_start_up_runs_no_shell(dockerfiles, image):
    runtime = dockerfiles[image].final
    for keyword in ("CMD", "ENTRYPOINT"):
        for value in runtime.values(keyword):
            assert exec_form(value), f"{image}: {keyword} {value} is shell form"


@pytest.mark.parametrize("image", IMAGES)
def test_flower_home_is_left_to_the_pod(dockerfiles, image):
    """FLWR_HOME defaults to $HOME/.flwr; the components point HOME or FLWR_HOME at a volume."""
    env = " ".join(dockerfiles[image].final.values("ENV")).split()
    assert not [e for e in env if e.startswith(("FLWR_HOME=", "HOME="))]
    assert "FLWR_TELEMETRY_ENABLED=0" in env


def test_runtime_bases_are_small(dockerfiles):
    assert re.fullmatch(r"python:[0-9.]+-slim-bookworm", dockerfiles["platform"].final.base)
    # "base": CUDA's driver-facing setup only; the CUDA libraries come from the lock's wheels.
    job = parse_dockerfile(DOCKERFILES["job"], {"VARIANT": "cuda"})
    assert "-base-" in job.image_base(job.final)
    # No build tool in a runtime image: the platform copies its venv from a build stage; the job
    # image installs its several-GB venv in place (written once, not copied between stages) with
    # uv mounted from the build stage for that step only.
    assert any("--from=venv" in c for c in dockerfiles["platform"].final.values("COPY")), "platform: not multi-stage"
    [install] = [v for v in dockerfiles["job"].final.values("RUN") if "uv pip install" in v]
    assert install.startswith("--mount=type=bind,from=builder,source=/usr/local/bin/uv,target=/usr/local/bin/uv ")
    assert not [v for v in dockerfiles["job"].final.values("RUN") if "pip install uv" in v]


# --- the L7 filter's nginx -----------------------------------------------------------------


def _platform_nginx_package(dockerfiles) -> tuple[str, str]:
    runtime = dockerfiles["platform"].final
    match = re.search(r"\b(nginx[a-z-]*)=\$\{NGINX_VERSION\}", " ".join(runtime.values("RUN")))
    assert match, "the platform image installs no pinned nginx"
    default = next(v for v in runtime.values("ARG") if v.startswith("NGINX_VERSION="))
    return match.group(1), default.partition("=")[2]


def test_platform_nginx_is_the_package_ci_tests_the_filter_under(dockerfiles):
    package, _ = _platform_nginx_package(dockerfiles)
    assert re.search(rf"\b{package}\b", (REPO / ".ci" / "run").read_text())


def test_platform_nginx_is_the_release_the_tests_run(dockerfiles):
    nginx = Path("/usr/sbin/nginx")
    if not nginx.exists():
        pytest.skip("nginx not installed (.ci/run installs nginx-light)")
    _, version = _platform_nginx_package(dockerfiles)
    tested = subprocess.run([nginx, "-v"], capture_output=True, text=True, check=True).stderr
    assert f"nginx/{version.split('-')[0]}" in tested, (version, tested)


# --- build context and lint ---------------------------------------------------------------


@pytest.mark.parametrize("image", IMAGES)
def test_build_context_admits_every_copied_file(dockerfiles, image):
    """The context is an allow-list: `*`, then `!path` for what the Dockerfile copies."""
    path = DOCKERFILES[image]
    patterns = path.with_name("Dockerfile.dockerignore").read_text().split("\n")
    patterns = [p.strip() for p in patterns if p.strip() and not p.startswith("#")]
    assert patterns[0] == "*"
    admitted = [p[1:].rstrip("/") for p in patterns if p.startswith("!")]
    for stage in dockerfiles[image].stages:
        for copy in stage.values("COPY"):
            words = copy.split()
            if any(w.startswith("--from=") for w in words):
                continue
            for source in (w.rstrip("/") for w in words[:-1] if not w.startswith("--")):
                assert (REPO / source).exists(), source
                assert any(source == a or source.startswith(a + "/") for a in admitted), source


def _hadolint(*args: str | Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([HADOLINT, "--no-color", "--failure-threshold", "style", *args],
                          capture_output=True, text=True, cwd=REPO)


@pytest.mark.parametrize("image", IMAGES)
def test_hadolint_passes(image):
    result = _hadolint(DOCKERFILES[image])
    assert result.returncode == 0, result.stdout + result.stderr


def test_hadolint_fails_what_it_should(tmp_path):
    """The lint is live: an unpinned base and an unpinned apt package fail it."""
    bad = tmp_path / "Dockerfile"
    bad.write_text("FROM debian\nRUN apt-get update && apt-get install -y nginx\n")
    result = _hadolint(bad)
    assert result.returncode != 0
    assert "DL3006" in result.stdout and "DL3008" in result.stdout
