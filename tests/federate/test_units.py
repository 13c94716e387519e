"""The local federation's pure parts and process handling (fast; no Flower processes)."""

from __future__ import annotations

import io
import json
import re
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from flwr.common.config import get_fused_config_from_dir, parse_config_args

from federate.__main__ import left_out, parse_args
from federate.app import FlowerApp
from federate.job import MetricsFollower, RunFailed, effective_run_config
from federate.ports import PortInUse, ensure_free, free_port
from federate.processes import ProcessDied, Supervisor
from federate.progress import Progress, round_line
from flowerbed_training.server.report import per_site, plot_report, summarize
from federate.run_config import run_overrides, validate_training_run_config
from federate.sites import Site, site_names_from_stack, sites_from_names
from tests.federate.apps import legacy_app, message_api_app
from tests.federate.conftest import REPO


TRAINING = FlowerApp.load(REPO / "training")


def test_sites_come_from_the_dev_stack_in_order() -> None:
    assert site_names_from_stack(REPO / "Pulumi.dev.yaml") == ["hospital-a", "hospital-b", "lab-c"]


def test_node_config_parses_in_flower_to_the_contract_types() -> None:
    site = Site("hospital-a")
    parsed = parse_config_args([site.node_config(Path("/tmp/data dir/hospital-a"), Path("/tmp/out/state/hospital-a"))])
    assert parsed == {"site-name": "hospital-a", "data-root": "/tmp/data dir/hospital-a",
                      "state-dir": "/tmp/out/state/hospital-a", "federation": "local"}


def test_a_sites_node_config_does_not_depend_on_the_other_sites() -> None:
    # Adding a site must not change (and so restart) the others' SuperNodes.
    before = {s.name: s.node_config(Path("data") / s.name, Path("state") / s.name) for s in sites_from_names(["a", "b"])}
    after = {s.name: s.node_config(Path("data") / s.name, Path("state") / s.name)
             for s in sites_from_names(["a", "b", "c"])}
    assert {name: after[name] for name in before} == before


def test_a_taken_port_is_named_with_the_flag_that_moves_it() -> None:
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", 0))
        squatter.listen()
        port = squatter.getsockname()[1]
        with pytest.raises(PortInUse, match=f"port {port} on 127.0.0.1 is already in use.*--superlink-port"):
            ensure_free(port, "SuperLink", "--superlink-port")
    ensure_free(port, "SuperLink", "--superlink-port")  # free again once released


def test_free_port_is_bindable() -> None:
    ensure_free(free_port(), "test", "--none")


def test_a_dead_child_is_reported_with_its_last_log_lines(tmp_path: Path) -> None:
    with Supervisor(tmp_path) as supervisor:
        child = supervisor.start("doomed", [sys.executable, "-c", "print('loading'); print('boom: bad key'); exit(3)"])
        child.popen.wait(timeout=30)
        with pytest.raises(ProcessDied, match=r"(?s)doomed exited with code 3.*boom: bad key"):
            supervisor.check()


def test_stop_takes_down_the_whole_group_even_a_child_that_ignores_sigterm(tmp_path: Path) -> None:
    stubborn = "import signal, subprocess, sys, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); " \
               "subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(300)']); print('up', flush=True); time.sleep(300)"
    supervisor = Supervisor(tmp_path)
    parent = supervisor.start("stubborn", [sys.executable, "-c", stubborn])
    while "up" not in parent.log_path.read_text():
        time.sleep(0.1)
    supervisor.stop(parent, timeout=1.0)
    with pytest.raises(ProcessLookupError):
        os.killpg(parent.pid, 0)  # no member of the group is left, grandchild included


def test_overriding_an_unknown_run_config_key_names_the_allowed_ones() -> None:
    with pytest.raises(RunFailed, match="run config no-such-key: not a key of .*allowed: .*num-server-rounds"):
        effective_run_config(TRAINING, {"no-such-key": 1})


def test_options_become_the_apps_run_config_keys(tmp_path: Path) -> None:
    args = parse_args(["--rounds", "4", "--strategy", "fedprox", "--dp", "local", "--secagg",
                       "-c", "compression='int8'", "--out-dir", str(tmp_path)])
    overrides = run_overrides(args, sites_from_names(["a", "b", "c"]), TRAINING)
    config = effective_run_config(TRAINING, overrides)  # every key exists in the app
    assert config["num-server-rounds"] == 4 and config["strategy"] == "fedprox"
    assert config["fraction-evaluate"] == 0.0  # built-in data: the server's test set scores each round
    assert config["local-dp"] is True and config["secagg"] is True and config["compression"] == "int8"
    assert config["min-available-sites"] == 3 and config["artifacts-root"] == str(tmp_path.resolve())


def test_metrics_follower_returns_each_complete_line_once(tmp_path: Path) -> None:
    path = tmp_path / "metrics.jsonl"
    follower = MetricsFollower(path)
    assert follower.new_rounds() == []
    path.write_text(json.dumps({"round": 1}) + "\n" + '{"round": 2, "acc')  # second line half-written
    assert follower.new_rounds() == [{"round": 1}]
    with path.open("a") as file:
        file.write('uracy": 0.9}\n')
    assert follower.new_rounds() == [{"round": 2, "accuracy": 0.9}]
    assert follower.new_rounds() == []


def test_round_line_names_sites_that_did_not_answer() -> None:
    line = round_line({"round": 2, "accuracy": 0.91234, "loss": 0.3, "sites": ["a", "c"], "seconds": 4.2}, 10, ["a", "b", "c"])
    assert line.startswith("round   2/10 [") and "accuracy 0.912" in line
    assert "sites 2/3: a, c  (missing: b)" in line


def test_per_site_summary_counts_rounds_and_keeps_the_last_epsilon() -> None:
    rounds = [
        {"sites": ["a", "b"], "contribution": {"a": 0.8, "b": 0.2}, "epsilon": {"a": 1.0, "b": None}},
        {"sites": ["a"], "contribution": {"a": 0.6}, "epsilon": {"a": 2.5}},
    ]
    summary = per_site(rounds, ["a", "b", "c"])
    assert summary["a"].rounds_answered == 2 and summary["a"].contribution == pytest.approx(0.7)
    assert summary["a"].epsilon == 2.5 and summary["b"].epsilon is None
    assert summary["c"].rounds_answered == 0 and summary["c"].contribution is None


def test_the_summary_keeps_the_central_dp_epsilon_of_the_last_round(tmp_path: Path) -> None:
    rounds = [{"round": r, "central_epsilon": eps} for r, eps in ((1, 4.7), (2, 6.9))]
    summary = summarize(run_id="8", app_dir=tmp_path, sites=[], rounds=rounds, baseline=None,
                        seconds={"total": 1.0}, run_status={}, out_dir=tmp_path)
    assert summary.central_epsilon == 6.9
    assert summarize(run_id="8", app_dir=tmp_path, sites=[], rounds=[{"round": 1}], baseline=None,
                     seconds={"total": 1.0}, run_status={}, out_dir=tmp_path).central_epsilon is None


def test_summary_and_report_for_study_data_have_no_baseline(tmp_path: Path) -> None:
    rounds = [
        {"round": r, "accuracy": 0.7 + r / 20, "loss": 1 / r, "sites": ["a", "b"], "bytes_up": 10, "bytes_down": 20,
         "eval_bytes_down": 5, "contribution": {"a": 0.9, "b": 0.1}, "epsilon": {"a": None, "b": None}}
        for r in (1, 2, 3)
    ]
    summary = summarize(
        run_id="7", app_dir=tmp_path, strategy="fedavg", dataset="default/tabular",
        sites=["a", "b"], rounds=rounds, baseline=None, seconds={"total": 12.345},
        run_status={"status": "finished:completed", "network-traffic": {"inbound-bytes": 30, "outbound-bytes": 75}},
        out_dir=tmp_path,
    )
    assert summary.rounds == 3 and summary.final_accuracy == pytest.approx(0.85)
    assert summary.bytes_up == 30 and summary.bytes_down == 75
    assert summary.flower_traffic_bytes == {"inbound": 30, "outbound": 75}
    assert "centralized baseline (same model, pooled data) n/a" in summary.final_line()
    plot_report(summary, rounds, tmp_path / "report.png")
    assert (tmp_path / "report.png").read_bytes()[:4] == b"\x89PNG"


def test_sites_evaluate_study_data_themselves(tmp_path: Path) -> None:
    args = parse_args(["--dataset", "default/tabular", "--out-dir", str(tmp_path)])
    overrides = run_overrides(args, sites_from_names(["a", "b"]), TRAINING)
    assert "fraction-evaluate" not in overrides  # no server test set: the app's default applies


@pytest.mark.parametrize(("override", "message"), [
    ({"strategy": "nope"}, "run config strategy: 'nope' must be one of fedavg"),
    ({"local-dp": True, "local-dp-epsilon": -1.0}, "run config local-dp-epsilon: -1.0 must be > 0"),
    ({"compression": "zip"}, "run config compression: 'zip' must be one of none, int8, topk"),
    ({"strategy": "fedbuff", "central-dp": "server"},
     "run config central-dp: 'server' must be 'off' with strategy 'fedbuff'"),
    ({"strategy": "fedbuff", "async-staleness": "linear"}, "run config async-staleness: 'linear' must be one of"),
])
def test_a_bad_run_config_fails_before_any_process_starts(override: dict, message: str) -> None:
    config = effective_run_config(TRAINING, override)
    with pytest.raises(ValueError, match=re.escape(message)):
        validate_training_run_config(TRAINING, config)


# --- any Flower App ------------------------------------------------------------------------


@pytest.fixture
def legacy(tmp_path: Path) -> FlowerApp:
    return FlowerApp.load(legacy_app(tmp_path / "legacy"))


def test_what_an_app_can_have_follows_from_its_own_pyproject(tmp_path: Path, legacy: FlowerApp) -> None:
    assert TRAINING.is_training and TRAINING.reports_metrics
    message = FlowerApp.load(message_api_app(tmp_path / "message"))
    assert not message.is_training and message.reports_metrics
    assert not legacy.is_training and not legacy.reports_metrics
    assert legacy.missing_metrics_keys() == ["artifacts-dir"]
    assert left_out(TRAINING) == []
    assert [note.split(":")[0] for note in left_out(legacy)] == [
        "no per-round progress lines or report.png", "no centralized baseline"]


def test_another_apps_run_config_is_its_own_plus_what_was_asked(tmp_path: Path, legacy: FlowerApp) -> None:
    args = parse_args(["--app", str(legacy.directory), "--rounds", "5", "-c", "target=3.5", "--out-dir", str(tmp_path)])
    overrides = run_overrides(args, sites_from_names(["a", "b", "c"]), legacy)
    assert overrides == {"num-server-rounds": 5, "target": 3.5}  # none of training/'s local-run defaults


@pytest.mark.parametrize(("option", "key"), [
    (["--strategy", "fedprox"], "strategy"), (["--dp", "local"], "local-dp"), (["--secagg"], "secagg"),
    (["--round-timeout", "30"], "round-timeout"),
])
def test_an_option_for_a_key_the_app_lacks_is_refused_naming_both(tmp_path: Path, legacy: FlowerApp,
                                                                  option: list[str], key: str) -> None:
    args = parse_args([*option, "--out-dir", str(tmp_path)])
    with pytest.raises(RunFailed, match=re.escape(f"{option[0]} sets run config `{key}`, which {legacy.pyproject} "
                                                  "does not declare; use -c KEY=VALUE with the app's own keys "
                                                  "(num-server-rounds, target)")):
        run_overrides(args, sites_from_names(["a"]), legacy)


def test_a_directory_without_pyproject_is_refused_naming_the_option(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=f"--app: {tmp_path} has no pyproject.toml"):
        FlowerApp.load(tmp_path)


def test_a_round_line_without_sites_does_not_guess_who_answered() -> None:
    assert round_line({"round": 1, "loss": 0.5}, 3, ["a", "b"]).endswith("accuracy   n/a  loss 0.500")


def test_the_summary_of_an_app_without_metrics_says_what_was_left_out(tmp_path: Path, legacy: FlowerApp) -> None:
    summary = summarize(run_id="9", app_dir=legacy.directory, sites=["a", "b"],
                        rounds=[], baseline=None, seconds={"total": 40.2},
                        run_status={"status": "finished:completed"}, out_dir=tmp_path, left_out=left_out(legacy),
                        logs=tmp_path / "logs")
    assert summary.rounds == 0 and summary.strategy is None and summary.files == {"logs": "logs/"}
    assert summary.final_line() == ("legacy: run 9 finished:completed on 2 sites; 40 s "
                                    "(no per-round metrics: see left_out in summary.json)")


def test_an_app_flower_would_refuse_is_refused_before_anything_starts(tmp_path: Path) -> None:
    app = message_api_app(tmp_path / "app")
    pyproject = app / "pyproject.toml"
    pyproject.write_text(pyproject.read_text().replace('name = "message-app"', 'name = "message_app"'))
    with pytest.raises(ValueError, match=r'\[project\]\.name "message_app" is invalid'):
        FlowerApp.load(app)  # Flower's own check of `flwr run`, without a SuperLink


def test_make_federate_passes_app_and_args_to_the_module() -> None:
    def recipe(*variables: str) -> str:
        # --no-print-directory: under `make test` (MAKELEVEL 1) make would add "Leaving directory" lines.
        done = subprocess.run(["make", "-n", "--no-print-directory", "federate", *variables], cwd=REPO,
                              capture_output=True, text=True, check=True)
        return done.stdout.splitlines()[-1].strip()

    assert recipe() == ".venv/bin/python -m federate"
    assert recipe("APP=/some/app", "ARGS=--rounds 2") == ".venv/bin/python -m federate --app /some/app --rounds 2"


def test_the_baseline_pools_exactly_what_the_federations_sites_train_on(monkeypatch: pytest.MonkeyPatch) -> None:
    from federate.__main__ import centralized_baseline
    from flowerbed_training.common import baseline

    asked: list[int | None] = []

    def pooled(config: object, sites: int | None = None) -> dict[str, float]:
        asked.append(sites)
        return {"accuracy": 0.9}

    monkeypatch.setattr(baseline, "centralized_baseline", pooled)
    progress = Progress(1, ["a", "b", "c"], io.StringIO())
    run_config = dict(get_fused_config_from_dir(REPO / "training", {}))
    assert centralized_baseline(run_config, 3, progress) == {"accuracy": 0.9}
    assert asked == [3]  # task.pooled_training_data of 3 sites, as bench/ compares against
