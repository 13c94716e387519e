"""bench/rounds.py: its reading of the runs' files, its table and ratios, its computed floor and the
floor app (run in process); the benchmark's own runs take minutes and are `make bench-rounds`."""

from __future__ import annotations

import inspect
import json
from pathlib import Path

import pytest
from flwr.superlink.grid.http_grid import HttpGrid
from flwr.supercore.superexec import run_superexec
from flwr.supernode import start_client_internal

from bench.rounds import (
    FLOOR,
    FLOOR_APP,
    LOCAL,
    POLLS,
    SIMULATION,
    Timing,
    computed_floor,
    federate_timing,
    ratio_rows,
    simulation_timing,
    summary_rows,
)
from flowerbed_training.server.round_log import RoundLog, append_metrics
from tests.images.imagefiles import LOCK, read_lock
from tests.inprocess import Site, run_federation

SIMULATION_LOCK = LOCK.with_name("bench-simulation.lock")


def write_rounds(directory: Path, seconds: list[float], accuracy: float | None = 0.9) -> Path:
    """metrics.jsonl as training/'s ServerApp writes it (RoundLog.line), with the given seconds."""
    directory.mkdir(parents=True, exist_ok=True)
    for number, value in enumerate(seconds, start=1):
        line = RoundLog(number, sites=["hospital-a", "hospital-b", "lab-c"]).line((0.3, accuracy) if accuracy else None)
        append_metrics(directory, {**line, "seconds": value})
    return directory / "metrics.jsonl"


def write_summary(directory: Path, startup: float, training: float, status: str = "finished:completed") -> None:
    # The fields of federate's summary.json that bench/rounds.py reads, with federate's names.
    summary = {"run_id": "42", "status": status, "rounds": 3, "final_accuracy": 0.93,
               "seconds": {"startup": startup, "training": training, "total": startup + training + 4.0}}
    (directory / "summary.json").write_text(json.dumps(summary))


def test_a_federate_run_gives_start_up_rounds_and_what_lies_outside_them(tmp_path: Path) -> None:
    run_dir = tmp_path / "local" / "42"  # training/ writes under <out-dir>/<run-id>/
    write_rounds(run_dir, [30.0, 20.0, 24.0])
    write_summary(run_dir, startup=27.5, training=110.0)
    timing = federate_timing(LOCAL, tmp_path / "local")
    assert timing.rounds == (30.0, 20.0, 24.0)
    assert timing.startup == 27.5 and timing.total == 137.5
    assert timing.outside_rounds == pytest.approx(36.0)  # survey, ServerApp start and end: 110 - 74
    assert (timing.later_mean(), timing.later_median()) == (22.0, 22.0)
    assert timing.accuracy == 0.93


def test_a_failed_or_ambiguous_federate_run_is_refused(tmp_path: Path) -> None:
    write_rounds(tmp_path / "a", [1.0, 1.0])
    write_summary(tmp_path / "a", 1.0, 3.0, status="finished:failed")
    with pytest.raises(ValueError, match="finished:failed"):
        federate_timing(LOCAL, tmp_path)
    (tmp_path / "b").mkdir()
    write_summary(tmp_path / "b", 1.0, 3.0)
    with pytest.raises(ValueError, match="found 2"):
        federate_timing(LOCAL, tmp_path)


def test_rounds_without_seconds_or_no_rounds_at_all_are_errors(tmp_path: Path) -> None:
    metrics = tmp_path / "metrics.jsonl"
    metrics.write_text(json.dumps({"round": 1, "accuracy": 0.5}) + "\n")
    (tmp_path / "simulation.json").write_text(json.dumps({"run_id": 1, "startup": 1.0, "run": 5.0}))
    with pytest.raises(ValueError, match=r"rounds \[1\] have no `seconds`"):
        simulation_timing(tmp_path / "simulation.json", metrics)
    metrics.write_text("")
    with pytest.raises(ValueError, match="no rounds"):
        simulation_timing(tmp_path / "simulation.json", metrics)


def test_the_simulation_result_and_its_metrics_read_in_round_order(tmp_path: Path) -> None:
    metrics = write_rounds(tmp_path, [2.4, 0.3, 0.2, 0.25])
    lines = metrics.read_text().splitlines()
    metrics.write_text("\n".join(reversed(lines)) + "\n")
    (tmp_path / "simulation.json").write_text(json.dumps({"run_id": 1, "startup": 1.6, "run": 27.6}))
    timing = simulation_timing(tmp_path / "simulation.json", metrics)
    assert timing.rounds == (2.4, 0.3, 0.2, 0.25)
    assert timing.later_median() == 0.25 and timing.accuracy == 0.9


def test_table_and_ratios_against_the_baselines() -> None:
    local = Timing(LOCAL, 27.0, 140.0, (30.0, 20.0, 22.0), 0.93)
    simulation = Timing(SIMULATION, 1.5, 30.0, (2.5, 0.25, 0.15), 0.94)
    floor = Timing(FLOOR, 15.0, 40.0, (12.0, 10.0, 12.0), None)
    rows = summary_rows([local, simulation, floor])
    assert rows[0] == [LOCAL, 27.0, 68.0, 30.0, 21.0, 21.0, 167.0, 0.93]
    assert rows[2][-1] is None  # the floor app has no accuracy
    ratios = {row[0]: row[1:] for row in ratio_rows(local, simulation, floor)}
    assert ratios["later rounds, mean"] == [pytest.approx(105.0), pytest.approx(1.909, abs=1e-3)]
    assert ratios["round 1"] == [12.0, 2.5]
    assert ratios["start-up"] == [18.0, 1.8]
    assert ratio_rows(local, None, floor)[0][1] is None  # a setup that did not run has no ratio


def test_computed_floor_is_whole_serverapp_polls() -> None:
    # 3 sites: expected waits 3 * 3/4 + 0.2/2 + 0.5/2 = 2.6 s, worst 3 + 0.2 + 0.5 = 3.7 s.
    assert computed_floor(3, clientapp_start=0.0) == (3.0, 6.0)
    assert computed_floor(3, clientapp_start=2.0) == (6.0, 6.0)  # 4.6 and 5.7 s: the second pull
    assert computed_floor(3, clientapp_start=3.0) == (6.0, 9.0)


def test_the_poll_intervals_are_the_installed_flowers() -> None:
    """POLLS cites Flower's source: if an upgrade changes a sleep, this fails before the README lies."""
    supernode, superexec, reply, serverapp = POLLS
    assert f"time.sleep({supernode.seconds:g})" in inspect.getsource(start_client_internal.start_client_internal)
    assert f"time.sleep({reply.seconds:g})" in inspect.getsource(start_client_internal._push_messages)
    assert f"time.sleep({serverapp.seconds:g})" in inspect.getsource(HttpGrid.send_and_receive)
    assert run_superexec._DEFAULT_TASK_POLL_INTERVAL_SECONDS == 1.0  # what SUPEREXEC_ENV lowers
    assert superexec.seconds == 0.2


def test_the_floor_app_runs_every_site_every_round_and_times_each_round(tmp_path: Path,
                                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.syspath_prepend(str(FLOOR_APP))
    from floor_app import client_app, server_app

    sites = [Site(101 + i, {}) for i in range(3)]
    config = {"num-server-rounds": 3, "min-available-sites": 3, "round-timeout": 5.0, "artifacts-dir": str(tmp_path)}
    run_federation(sites, config, server_app=server_app.app, client_app=client_app.app)
    lines = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [line["round"] for line in lines] == [1, 2, 3]
    assert all(line["seconds"] > 0 for line in lines)
    assert all(site.handled == ["train@1", "train@2", "train@3"] for site in sites)


def test_the_simulation_environment_differs_from_the_project_only_by_ray() -> None:
    """Both setups must run the same code: a pin changed in requirements.lock alone fails here
    (recompile bench-simulation.lock as requirements/bench-simulation.in says)."""
    project, simulation = read_lock(LOCK), read_lock(SIMULATION_LOCK)
    drifted = {name: (project[name], simulation[name]) for name in project.keys() & simulation.keys()
               if project[name] != simulation[name]}
    assert not drifted, f"(requirements.lock, bench-simulation.lock) pins differ: {drifted}"
    assert sorted(simulation.keys() - project.keys()) == ["msgpack", "ray"]
