"""The `flwr` CLI and the environment every Flower process of the local federation gets."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import tomli_w

# The venv's console scripts (flower-superlink, flwr-clientapp, ...) live next to its python;
# SuperExec finds flwr-serverapp/flwr-clientapp on PATH.
BIN_DIR = Path(sys.executable).parent


def flower_env(flwr_home: Path) -> dict[str, str]:
    """Environment for a Flower process: own FLWR_HOME, the venv's scripts, no phoning home."""
    return {
        **os.environ,
        "PATH": f"{BIN_DIR}{os.pathsep}{os.environ.get('PATH', '')}",
        "FLWR_HOME": str(flwr_home),
        # Offline machine: no telemetry, no PyPI update check.
        "FLWR_TELEMETRY_ENABLED": "0",
        "FLWR_DISABLE_UPDATE_CHECK": "1",
    }


class FlwrCommandFailed(RuntimeError):
    pass


@dataclass(frozen=True)
class FlwrCli:
    """`flwr <command> ... <connection>` against one SuperLink, from its own FLWR_HOME."""

    home: Path
    connection: str

    @classmethod
    def configure(cls, home: Path, connection: str, address: str, root_certificates: Path) -> FlwrCli:
        """Write `$FLWR_HOME/config.toml` with one TLS connection named `connection`."""
        home.mkdir(parents=True, exist_ok=True)
        config = {
            "superlink": {
                "default": connection,
                connection: {"address": address, "root-certificates": str(root_certificates), "insecure": False},
            }
        }
        (home / "config.toml").write_text(tomli_w.dumps(config), encoding="utf-8")
        return cls(home, connection)

    def env(self) -> dict[str, str]:
        return flower_env(self.home)

    def argv(self, *args: str) -> list[str]:
        return [str(BIN_DIR / "flwr"), *args]

    def json(self, *args: str, timeout: float = 60) -> dict[str, Any]:
        """Run `flwr ARGS <connection> --format json`; raise with Flower's own message on failure."""
        argv = self.argv(*args, self.connection, "--format", "json")
        try:
            done = subprocess.run(argv, env=self.env(), capture_output=True, text=True, timeout=timeout, check=False)
        except subprocess.TimeoutExpired:
            raise FlwrCommandFailed(f"`flwr {' '.join(args)}` did not finish within {timeout:g} s "
                                    "(a machine too busy to start Flower's CLI? run again when it is quieter)") from None
        try:
            result: dict[str, Any] = json.loads(done.stdout)
        except json.JSONDecodeError:
            result = {"success": False, "error-message": (done.stdout + done.stderr).strip()}
        if done.returncode != 0 or not result.get("success", False):
            raise FlwrCommandFailed(f"`flwr {' '.join(args)}` failed: {result.get('error-message', result)}")
        return result
