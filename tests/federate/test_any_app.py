"""`python -m federate --app DIR` with Flower Apps that are not flowerbed's: each runs with its own
run config and Flower's own semantics, on the same TLS + node-auth federation as training/."""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path

import pytest

from federate.ports import free_port
from tests.federate.apps import legacy_app, message_api_app, raising_app
from tests.federate.conftest import assert_nothing_left, free_port_run, run_federate_command

pytestmark = pytest.mark.e2e

SITES = ["site-a", "site-b"]


def run_federate(tmp_path: Path, app: Path, *extra: str) -> tuple[subprocess.CompletedProcess[str], Path]:
    out = tmp_path / "out"
    superlink, base = free_port(), free_port_run(len(SITES))
    done = run_federate_command(tmp_path, out, superlink, base, "--app", str(app), "--sites", ",".join(SITES), *extra)
    assert_nothing_left(tmp_path, [superlink, *range(base, base + len(SITES))])
    return done, out


def test_a_message_api_app_runs_with_its_own_run_config_and_gets_the_report(tmp_path: Path) -> None:
    done, out = run_federate(tmp_path, message_api_app(tmp_path / "app"), "-c", "target=4.0")
    assert done.returncode == 0, done.stderr

    # Its own metrics.jsonl (the contract): FedAvg halves the distance to the target each round.
    rounds = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["round"] for r in rounds] == [1, 2, 3]  # num-server-rounds = 3, the app's default
    assert [r["loss"] for r in rounds] == pytest.approx([2.0, 1.0, 0.5])  # -c target=4.0 reached the app
    assert len([line for line in done.stdout.splitlines() if line.startswith("round ")]) == 3
    assert (out / "report.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    summary = json.loads((out / "summary.json").read_text())
    assert summary["status"] == "finished:completed" and summary["rounds"] == 3
    assert summary["strategy"] is None and summary["centralized_accuracy"] is None
    assert summary["left_out"] == ["no centralized baseline: only flowerbed's training app provides one"]
    assert "no centralized baseline" in done.stdout
    assert summary["flower_traffic_bytes"]["inbound"] > 0


def test_a_legacy_numpyclient_app_runs_under_the_default_workflow(tmp_path: Path) -> None:
    done, out = run_federate(tmp_path, legacy_app(tmp_path / "app"), "--rounds", "2")
    assert done.returncode == 0, done.stderr

    # No metrics contract: the ServerApp's own log is the progress, and federate says what it left out.
    assert "no per-round progress lines or report.png: app does not declare artifacts-dir" in done.stdout
    log = [line.removeprefix("  | ") for line in done.stdout.splitlines() if line.startswith("  | ")]
    assert [line for line in log if re.search(r"\[ROUND \d+\]", line)] == ["INFO :      [ROUND 1]", "INFO :      [ROUND 2]"]
    assert sum("aggregate_fit: received 2 results and 0 failures" in line for line in log) == 2
    # Each NumPyClient steps half-way to target 2.0 from the FedAvg model; evaluate reports the distance.
    history = log[log.index("INFO :      History (loss, distributed):") + 1:][:2]
    assert [float(line.rsplit(":", 1)[1]) for line in history] == [1.0, 0.5]
    assert not (out / "report.png").exists() and not (out / "metrics.jsonl").exists()

    summary = json.loads((out / "summary.json").read_text())
    assert summary["status"] == "finished:completed" and summary["rounds"] == 0
    assert summary["files"] == {"logs": "logs/"}
    assert done.stdout.strip().splitlines()[-1].startswith("app: run ")


def test_an_app_that_raises_reports_its_own_error_and_leaves_nothing_running(tmp_path: Path) -> None:
    done, _ = run_federate(tmp_path, raising_app(tmp_path / "app"))  # run_federate checks nothing is left
    assert done.returncode == 1
    assert "ended as finished:failed" in done.stderr
    assert "RuntimeError: raising-app refuses to train: target 99.0 is out of range" in done.stderr


def test_an_option_the_app_does_not_declare_is_refused_before_anything_starts(tmp_path: Path) -> None:
    done, _ = run_federate(tmp_path, legacy_app(tmp_path / "app"), "--strategy", "fedprox")
    assert done.returncode == 1
    assert "--strategy sets run config `strategy`, which" in done.stderr
    assert "(num-server-rounds, target)" in done.stderr
    assert "Starting SuperLink" not in done.stdout
