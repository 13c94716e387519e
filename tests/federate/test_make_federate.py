"""`python -m federate` end to end: real processes, TLS, node auth, the real training app."""

from __future__ import annotations

import json
import signal
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from federate.ports import free_port
from tests.federate.conftest import (REPO, assert_nothing_left, federate_command, free_port_run, isolated_env,
                                     processes_mentioning, run_federate_command)

pytestmark = pytest.mark.e2e

SITES = ["hospital-a", "hospital-b", "lab-c"]  # the dev stack's sites (Pulumi.dev.yaml)
ROUNDS = 3


def test_federate_trains_on_every_site_and_cleans_up(tmp_path: Path) -> None:
    out = tmp_path / "out"
    superlink, base = free_port(), free_port_run(len(SITES))
    done = run_federate_command(tmp_path, out, superlink, base, "--rounds", str(ROUNDS))
    assert done.returncode == 0, done.stderr

    round_lines = [line for line in done.stdout.splitlines() if line.startswith("round ")]
    assert len(round_lines) == ROUNDS
    assert all(f"sites {len(SITES)}/{len(SITES)}" in line for line in round_lines)
    assert "centralized baseline" in done.stdout.strip().splitlines()[-1]

    [run] = [path for path in out.iterdir() if path.name.isdigit()]  # <out-dir>/<run-id>/: the run's own directory
    assert f"results in {run}" in done.stdout
    summary = json.loads((run / "summary.json").read_text())
    assert summary["run_id"] == run.name and summary["status"] == "finished:completed"
    assert summary["rounds"] == ROUNDS and summary["sites"] == SITES
    assert {site: info["rounds_answered"] for site, info in summary["per_site"].items()} == dict.fromkeys(SITES, ROUNDS)
    assert all(info["contribution"] is not None for info in summary["per_site"].values())
    assert summary["final_accuracy"] >= 0.85
    assert summary["final_accuracy"] >= summary["centralized_accuracy"] - 0.1
    assert summary["bytes_up"] > 0 and summary["bytes_down"] > 0

    metrics = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [m["round"] for m in metrics] == list(range(1, ROUNDS + 1))
    assert metrics[-1]["loss"] < metrics[0]["loss"]
    assert (run / "report.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert len(np.load(run / "final_model.npz").files) > 0
    assert_nothing_left(tmp_path, [superlink, *range(base, base + len(SITES))])


def test_ctrl_c_stops_every_process(tmp_path: Path) -> None:
    superlink, base = free_port(), free_port_run(len(SITES))
    process = subprocess.Popen(
        federate_command(tmp_path / "out", superlink, base, "--rounds", "50"),
        cwd=REPO, env=isolated_env(tmp_path), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    assert process.stdout is not None
    for line in process.stdout:  # wait until the run is under way: every process is up
        if line.startswith("Run "):
            break
    else:
        pytest.fail(f"federate ended before the run started: {process.wait()} {process.stderr.read()}")
    assert processes_mentioning(str(tmp_path)) != []  # the check below can see our processes

    process.send_signal(signal.SIGINT)
    _, stderr = process.communicate(timeout=120)
    assert process.returncode == 130, stderr
    assert "interrupted" in stderr
    assert_nothing_left(tmp_path, [superlink, *range(base, base + len(SITES))])


def test_a_taken_port_is_refused_before_anything_starts(tmp_path: Path) -> None:
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", 0))
        squatter.listen()
        taken = squatter.getsockname()[1]
        done = subprocess.run(
            [sys.executable, "-m", "federate", "--out-dir", str(tmp_path / "out"), "--superlink-port", str(taken)],
            cwd=REPO, env=isolated_env(tmp_path), capture_output=True, text=True, timeout=120, check=False,
        )
    assert done.returncode == 1
    assert f"port {taken} on 127.0.0.1 is already in use" in done.stderr
    assert "--superlink-port" in done.stderr
    assert processes_mentioning(str(tmp_path)) == []


def test_a_failing_app_is_reported_with_its_own_error(tmp_path: Path) -> None:
    missing = tmp_path / "no-data"  # study data that no site has
    done = subprocess.run(
        [sys.executable, "-m", "federate", "--out-dir", str(tmp_path / "out"), "--sites", "site-a,site-b",
         "--dataset", "study/cohort", "--data-dir", str(missing), "--rounds", "1", "--round-timeout", "60"],
        cwd=REPO, env=isolated_env(tmp_path), capture_output=True, text=True, timeout=600, check=False,
    )
    assert done.returncode == 1
    assert "ended as finished:failed" in done.stderr
    assert f"{missing}/site-a/study/cohort does not exist" in done.stderr  # the ClientApp's DataError, relayed
    assert processes_mentioning(str(tmp_path)) == []
