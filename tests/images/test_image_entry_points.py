"""What each image runs exists, and works, in the environment the images are built from."""

from __future__ import annotations

import ast
import importlib.metadata
import json
import subprocess
import sys
from pathlib import Path

import pytest
from flwr.supercore.constant import TASK_TYPE_TO_COMMAND, TaskType
from flwr.supercore.superexec.executor.kubernetes_executor import create_incluster_kubernetes_client

from imagefiles import REPO

BIN = Path(sys.executable).parent
CHECK_APP = REPO / "images" / "job" / "check_app.py"
# The platform image's processes: server, client site, task launcher, and the
# administrators' CLI (the key-registration Job runs `python` with flwr's client, below).
PLATFORM_COMMANDS = ("flower-superlink", "flower-supernode", "flower-superexec", "flwr")
REGISTRY_SCRIPT = REPO / "components" / "supernode_registry.py"
# What Flower's Kubernetes executor sets as the launched pod's command.
JOB_COMMANDS = tuple(TASK_TYPE_TO_COMMAND[t] for t in (TaskType.SERVER_APP, TaskType.CLIENT_APP))


def _console_script(name: str) -> importlib.metadata.EntryPoint:
    (entry_point,) = importlib.metadata.entry_points(group="console_scripts", name=name)
    return entry_point


# typer (imported by the flwr CLI) warns about its own parameters at import time; not ours to fix.
@pytest.mark.filterwarnings("ignore:The 'is_flag' and 'flag_value' parameters:DeprecationWarning")
@pytest.mark.parametrize("command", PLATFORM_COMMANDS + JOB_COMMANDS)
def test_command_is_installed_and_its_entry_point_loads(command):
    assert (BIN / command).is_file(), f"{command} is not in {BIN}"
    assert callable(_console_script(command).load())


def test_the_executor_launches_the_commands_the_job_image_provides():
    assert JOB_COMMANDS == ("flwr-serverapp", "flwr-clientapp")


def test_superexec_finds_the_kubernetes_client_it_needs():
    """Outside a cluster the executor gets past importing `kubernetes` and stops at the config."""
    with pytest.raises(RuntimeError, match="in-cluster Kubernetes configuration") as raised:
        create_incluster_kubernetes_client()
    assert "package is required" not in str(raised.value)


def _check_app(app_dir: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, CHECK_APP, app_dir], capture_output=True, text=True,
                          timeout=300, cwd=app_dir)


def test_training_app_components_load_as_the_job_image_build_checks():
    result = _check_app(REPO / "training")
    assert result.returncode == 0, result.stderr
    assert "serverapp: flowerbed_training.server.app:app loads" in result.stdout
    assert "clientapp: flowerbed_training.client.app:app loads" in result.stdout


def _app(tmp_path: Path, clientapp_module: str) -> Path:
    (tmp_path / "pyproject.toml").write_text(
        '[project]\nname = "probe"\nversion = "1.0.0"\n'
        '[tool.flwr.app]\npublisher = "flowerbed"\n'
        '[tool.flwr.app.components]\nserverapp = "probe_server:app"\nclientapp = "probe_client:app"\n')
    (tmp_path / "probe_server.py").write_text("from flwr.serverapp import ServerApp\napp = ServerApp()\n")
    (tmp_path / "probe_client.py").write_text(clientapp_module)
    return tmp_path


def test_check_app_fails_when_a_dependency_is_missing(tmp_path):
    result = _check_app(_app(tmp_path, "import flowerbed_missing_dependency\napp = None\n"))
    assert result.returncode != 0
    assert "No module named 'flowerbed_missing_dependency'" in result.stderr


def test_check_app_fails_when_a_component_has_the_wrong_type(tmp_path):
    result = _check_app(_app(tmp_path, "from flwr.serverapp import ServerApp\napp = ServerApp()\n"))
    assert result.returncode != 0
    assert "clientapp = 'probe_client:app' is a ServerApp, not a ClientApp" in result.stderr


def test_the_registration_jobs_script_needs_only_what_the_platform_image_has():
    """The Job runs components/supernode_registry.py on the platform image's Python (flwr, no flowerbed)."""
    tree = ast.parse(REGISTRY_SCRIPT.read_text())
    imported = {alias.name.split(".")[0] for node in ast.walk(tree) if isinstance(node, ast.Import)
                for alias in node.names}
    imported |= {node.module.split(".")[0] for node in ast.walk(tree)
                 if isinstance(node, ast.ImportFrom) and node.module and not node.level}
    assert imported - set(sys.stdlib_module_names) == {"flwr"}
    done = subprocess.run([sys.executable, "-I", REGISTRY_SCRIPT, "--help"], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0 and "--keys" in done.stdout, done.stderr


CHECK_FLOWER = REPO / "images" / "job" / "check_flower.py"
LOCK = REPO / "requirements" / "requirements.lock"
PLATFORM_FLOWER = importlib.metadata.version("flwr")  # the lock's, per test_image_dockerfiles


def _check_flower(tmp_path: Path, dependencies: list[str]) -> subprocess.CompletedProcess[str]:
    pyproject = tmp_path / "pyproject.toml"
    pyproject.write_text(f"[project]\nname = \"probe\"\ndependencies = {json.dumps(dependencies)}\n")  # a JSON list is TOML
    return subprocess.run([sys.executable, CHECK_FLOWER, pyproject, LOCK], capture_output=True, text=True,
                          timeout=60)


@pytest.mark.parametrize("dependencies", [
    [f"flwr=={PLATFORM_FLOWER}", "torch"],
    ["flwr[simulation]>=1.20,<2", "flwr-datasets[vision]>=0.5"],
    ["numpy"],  # no flwr at all: the image installs the platform's anyway
    ["flwr==0.1; python_version < '3'", f"flwr~={PLATFORM_FLOWER}"],  # a marker that excludes this Python
])
def test_check_flower_accepts_an_app_the_platforms_flower_satisfies(tmp_path, dependencies):
    result = _check_flower(tmp_path, dependencies)
    assert result.returncode == 0, result.stderr
    assert f"the image installs the platform's flwr {PLATFORM_FLOWER}" in result.stdout


@pytest.mark.parametrize("requirement", ["flwr==1.41.0", "flwr[simulation]<1.42", "flwr>=1.43"])
def test_check_flower_refuses_an_app_pinning_another_flower(tmp_path, requirement):
    result = _check_flower(tmp_path, [requirement, "numpy"])
    assert result.returncode == 1
    assert f"the app asks for '{requirement}', but the platform runs flwr {PLATFORM_FLOWER}" in result.stderr
    assert f"Change the requirement to 'flwr=={PLATFORM_FLOWER}'" in result.stderr


def test_check_flower_accepts_the_training_app():
    result = subprocess.run([sys.executable, CHECK_FLOWER, REPO / "training" / "pyproject.toml", LOCK],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert f"'flwr=={PLATFORM_FLOWER}'" in result.stdout


def test_check_app_loads_an_app_without_torch(tmp_path):
    app = _app(tmp_path, "from flwr.clientapp import ClientApp\napp = ClientApp()\n")
    result = _check_app(app)
    assert result.returncode == 0, result.stderr
    assert "torch" not in result.stdout  # nothing claims a torch the app does not use
