"""The environment in which the Pulumi CLI runs this project with nothing to download.

Used by tools/stack (make up/preview/destroy) and by the engine tests, which run
throwaway copies of the project against the repository's .toolchain/bin.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
TOOLCHAIN_BIN = REPO / ".toolchain" / "bin"
CACHE = Path(os.environ.get("FLOWERBED_CACHE", Path.home() / ".cache" / "flowerbed")) / "toolchain"
# Plugin cache shared by every clone; tools/toolchain registers the built providers here.
PULUMI_HOME = CACHE / "pulumi-home"
# The program's virtualenv (Pulumi.yaml's `virtualenv`; built by tools/ensure-venv from requirements/program.lock).
PROGRAM_VENV = ".venv-program"

# The dev stack's state and secrets are throwaway: a fixed, documented passphrase keeps
# `make up` non-interactive. Real stacks set PULUMI_CONFIG_PASSPHRASE(_FILE) or another provider.
DEV_PASSPHRASE = "flowerbed-dev-only-not-a-secret"

REQUIRED_BINARIES = (
    "pulumi",
    "pulumi-language-python",
    "pulumi-language-python-exec",
    "pulumi-resource-pulumi-python",
    "pulumi-resource-kubernetes",
)


# What a copy of the project needs to run the program: the project file, the program, its components.
PROGRAM_FILES = ("Pulumi.yaml", "__main__.py")
PROGRAM_DIRS = ("components",)


def copy_program(target: Path, stack_files: Sequence[Path], source: Path = REPO) -> Path:
    """A runnable copy of the program of `source` (this checkout, or another flowerbed release's files)
    in `target` with these `Pulumi.<stack>.yaml` files, using this checkout's program environment; its
    state stays in `target` (offline_env). A program already there is replaced whole."""
    target.mkdir(parents=True, exist_ok=True)
    for path in (*(source / name for name in PROGRAM_FILES), *stack_files):
        shutil.copy2(path, target / path.name)
    for name in PROGRAM_DIRS:
        shutil.rmtree(target / name, ignore_errors=True)
        shutil.copytree(source / name, target / name, ignore=shutil.ignore_patterns("__pycache__"))
    venv = target / PROGRAM_VENV
    if not venv.exists():
        venv.symlink_to((REPO / PROGRAM_VENV).resolve())
    return target


class ToolchainMissing(RuntimeError):
    pass


def check_toolchain() -> None:
    missing = [name for name in REQUIRED_BINARIES if not (TOOLCHAIN_BIN / name).exists()]
    if missing:
        raise ToolchainMissing(f"{', '.join(missing)} not in {TOOLCHAIN_BIN}: run make toolchain")


def offline_env(project: Path, base: Mapping[str, str] | None = None) -> dict[str, str]:
    """Variables for running `pulumi` on `project` offline, with state in `project`/.pulumi/state."""
    env = dict(os.environ if base is None else base)
    state = project / ".pulumi" / "state"
    state.mkdir(parents=True, exist_ok=True)
    env.update(
        PATH=f"{TOOLCHAIN_BIN}{os.pathsep}{env.get('PATH', '')}",
        PULUMI_HOME=str(PULUMI_HOME),
        PULUMI_BACKEND_URL=state.as_uri(),
        PULUMI_SKIP_UPDATE_CHECK="true",
        PULUMI_DISABLE_AUTOMATIC_PLUGIN_ACQUISITION="true",
        # Plugins come from the plugin cache (providers) or from beside the CLI (language host), never from
        # whatever else is on PATH; this also silences the "using ... from $PATH" warnings.
        PULUMI_IGNORE_AMBIENT_PLUGINS="true",
        # The dynamic-provider host (PKI resources) runs this interpreter.
        PULUMI_PYTHON_CMD=str(project / PROGRAM_VENV / "bin" / "python"),
    )
    # Render mode needs no cluster, and the kubernetes provider rejects any kubeconfig (it reads
    # $KUBECONFIG as one) next to renderYamlToDirectory: an ambient one must not leak in.
    env.pop("KUBECONFIG", None)
    if "PULUMI_CONFIG_PASSPHRASE" not in env and "PULUMI_CONFIG_PASSPHRASE_FILE" not in env:
        env["PULUMI_CONFIG_PASSPHRASE"] = DEV_PASSPHRASE
    return env


@dataclass(frozen=True)
class Pulumi:
    """Runs the toolchain's `pulumi` on one project directory and stack."""

    project: Path
    stack: str

    @property
    def env(self) -> dict[str, str]:
        return offline_env(self.project)

    def run(self, args: Sequence[str], *, capture: bool = False, check: bool = True) -> subprocess.CompletedProcess:
        return subprocess.run(
            [str(TOOLCHAIN_BIN / "pulumi"), *args, "--stack", self.stack, "--non-interactive"],
            cwd=self.project,
            env=self.env,
            text=True,
            capture_output=capture,
            check=check,
        )

    def select_or_init(self) -> None:
        """Selects the stack, creating it (passphrase secrets, salt from Pulumi.<stack>.yaml) the first time."""
        subprocess.run(
            [str(TOOLCHAIN_BIN / "pulumi"), "stack", "select", "--create", self.stack,
             "--secrets-provider", "passphrase", "--non-interactive"],
            cwd=self.project,
            env=self.env,
            text=True,
            check=True,
            capture_output=True,
        )
