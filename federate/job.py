"""Submit the Flower App with `flwr run` and follow it round by round until it finishes."""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import tomli_w

from federate.app import FlowerApp
from federate.flwr_cli import FlwrCli
from federate.processes import ManagedProcess, Supervisor, without_colours

COMPLETED = "finished:completed"
LOG_STREAM = "run"  # the `flwr log --stream` child: its output is logs/run.log


class RunFailed(RuntimeError):
    pass


def effective_run_config(app: FlowerApp, overrides: Mapping[str, Any]) -> dict[str, Any]:
    """Defaults plus overrides; an override of a key the app does not declare is an error, before any start-up."""
    unknown = sorted(set(overrides) - set(app.run_config))
    if unknown:
        raise RunFailed(
            f"run config {', '.join(unknown)}: not a key of {app.pyproject} "
            f"[tool.flwr.app.config]; allowed: {', '.join(sorted(app.run_config)) or 'none (it declares no run config)'}"
        )
    return {**app.run_config, **overrides}


@dataclass
class LineFollower:
    """Reads the lines another process appends to a file, each complete line once, as they arrive."""

    path: Path
    offset: int = 0

    def new_lines(self) -> list[str]:
        if not self.path.exists():
            return []
        with self.path.open("rb") as file:
            file.seek(self.offset)
            chunk = file.read()
        complete = chunk[: chunk.rfind(b"\n") + 1]  # a half-written last line waits for the next poll
        self.offset += len(complete)
        return [without_colours(line.decode(errors="replace")) for line in complete.splitlines()]


@dataclass
class MetricsFollower:
    """Reads the lines the ServerApp appends to metrics.jsonl, as they arrive."""

    path: Path
    lines: LineFollower = field(init=False)

    def __post_init__(self) -> None:
        self.lines = LineFollower(self.path)

    def new_rounds(self) -> list[dict[str, Any]]:
        return [json.loads(line) for line in self.lines.new_lines() if line.strip()]


def submit(cli: FlwrCli, app_dir: Path, overrides: Mapping[str, Any], workdir: Path) -> str:
    """`flwr run APP CONNECTION --run-config FILE`; returns the run id."""
    overrides_file = workdir / "run-config.toml"  # a TOML file sidesteps shell quoting of values
    overrides_file.write_text(tomli_w.dumps(dict(overrides)), encoding="utf-8")
    result = cli.json("run", str(app_dir), "--run-config", str(overrides_file), timeout=120)
    return str(result["run-id"])


def run_status(cli: FlwrCli, run_id: str) -> dict[str, Any]:
    runs = cli.json("ls", "--run-id", run_id)["runs"]
    return dict(runs[0])


def run_log(supervisor: Supervisor) -> Path:
    """Where `follow` streams the run's log (the ServerApp's output, as `flwr log` shows it)."""
    return supervisor.log_dir / f"{LOG_STREAM}.log"


def follow(cli: FlwrCli, run_id: str, supervisor: Supervisor, report: Callable[[], None],
           timeout: float) -> dict[str, Any]:
    """Stream the run's logs into `run_log`, call `report` as it goes, return the final status.

    `flwr log --stream` ends when the run finishes, so its exit is the signal to
    ask the SuperLink for the run's final status.
    """
    log_stream = supervisor.start(LOG_STREAM, cli.argv("log", run_id, cli.connection, "--stream"), cli.env())
    deadline = time.monotonic() + timeout
    while log_stream.running():
        report()
        supervisor.check(except_for=[log_stream])
        if time.monotonic() > deadline:
            raise RunFailed(f"run {run_id} did not finish within {timeout:.0f} s (--timeout)")
        time.sleep(0.5)
    report()
    status = run_status(cli, run_id)
    if status["status"] != COMPLETED:
        raise RunFailed(_failure_message(run_id, status, log_stream))
    return status


def _failure_message(run_id: str, status: Mapping[str, Any], log_stream: ManagedProcess) -> str:
    details = status.get("status-details") or "no details"
    return f"run {run_id} ended as {status['status']} ({details}); last ServerApp log lines:\n{log_stream.tail(30)}"
