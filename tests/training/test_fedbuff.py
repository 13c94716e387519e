"""FedBuff (fedbuff.py): staleness weights from FedAsync's formulas, the buffered step, its settings,
and the real apps federated in process, synchronously (deterministic) and with sites in threads."""

import json
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from flowerbed_training.client import site_state
from flowerbed_training.common.protocol import RESIDUAL as RESIDUAL_RECORD
from flowerbed_training.common.run_config import RunConfigError
from flowerbed_training.server.checkpoints import CheckpointStore
from flowerbed_training.server.fedbuff import BufferedReply, FederationStalled, buffered_step
from flowerbed_training.server.replies import SiteReply
from flowerbed_training.server.round_log import read_metrics
from flowerbed_training.server.staleness import Staleness, constant, hinge, polynomial
from tests.inprocess import InProcessGrid, Site, builtin_sites, config_with, run_config_with, run_dir, run_federation
from tests import slow_sites
from tests.inprocess_threads import ConcurrentGrid


def test_staleness_functions_are_fedasyncs():
    assert [constant(t) for t in (0, 7)] == [1.0, 1.0]
    # (t - tau + 1)^-a with a = 0.5: 1, 1/sqrt(2), 1/2, 1/3
    assert [polynomial(t, 0.5) for t in (0, 1, 3, 8)] == pytest.approx([1.0, 0.70710678, 0.5, 1 / 3])
    assert polynomial(3, 1.0) == pytest.approx(0.25)
    # 1 up to b, then 1 / (a (t - tau - b) + 1): a = 10, b = 4
    assert [hinge(t, 10.0, 4) for t in (0, 4, 5, 6)] == pytest.approx([1.0, 1.0, 1 / 11, 1 / 21])
    assert Staleness("hinge", polynomial_a=0.5, hinge_a=2.0, hinge_b=1)(3) == pytest.approx(1 / 5)
    default = Staleness.of(config_with({"strategy": "fedbuff"}))
    assert default(3) == pytest.approx(0.5)  # the default: polynomial, a = 0.5 (FedBuff's)
    with pytest.raises(ValueError, match="staleness -1 < 0"):
        default(-1)


def reply(update: list[float], examples: int, staleness: int, weight: float) -> BufferedReply:
    return BufferedReply(reply=SiteReply("s", examples, {}), staleness=staleness, weight=weight,
                         update={"w": np.asarray(update, np.float32)})


def test_buffered_step_weights_each_update_by_examples_and_staleness():
    model = {"w": np.array([1.0, 1.0], np.float32)}
    buffer = [reply([1.0, 0.0], 30, 0, 1.0), reply([0.0, 1.0], 10, 3, 0.5)]
    # p = 30/40, 10/40: x + lr * (0.75 * 1 * [1, 0] + 0.25 * 0.5 * [0, 1])
    stepped = buffered_step(model, buffer, server_lr=1.0)
    np.testing.assert_allclose(stepped["w"], [1.75, 1.125])
    assert stepped["w"].dtype == np.float32
    np.testing.assert_allclose(buffered_step(model, buffer, server_lr=2.0)["w"], [2.5, 1.25])


def test_fresh_replies_from_equal_sites_step_by_the_papers_mean():
    model = {"w": np.zeros(2, np.float32)}
    buffer = [reply([3.0, 0.0], 10, 0, 1.0), reply([0.0, 3.0], 10, 0, 1.0), reply([3.0, 3.0], 10, 0, 1.0)]
    np.testing.assert_allclose(buffered_step(model, buffer, 1.0)["w"], [2.0, 2.0])


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"secagg": True}, "run config secagg: True must be false with strategy 'fedbuff' .*: SecAgg"),
        ({"central-dp": "server"}, "run config central-dp: 'server' must be 'off' with strategy 'fedbuff'"),
        ({"local-dp": True}, "run config local-dp: True must be false with strategy 'fedbuff' .*budget is calibrated"),
        ({"fraction-train": 0.5}, "run config fraction-train: 0.5 must be 1.0 with .*every connected site"),
        ({"async-buffer-size": 0}, "run config async-buffer-size: 0 must be >= 1"),
        ({"async-staleness": "linear"}, "run config async-staleness: 'linear' must be one of constant, polynomial, hinge"),
        ({"async-polynomial-a": 0.0}, "run config async-polynomial-a: 0.0 must be > 0"),
        ({"async-hinge-b": -1}, "run config async-hinge-b: -1 must be >= 0"),
        ({"async-max-staleness": -1}, "run config async-max-staleness: -1 must be >= 0"),
        ({"async-server-lr": 0.0}, "run config async-server-lr: 0.0 must be > 0"),
        ({"async-time-budget": -5.0}, "run config async-time-budget: -5.0 must be >= 0 seconds"),
    ],
)
def test_bad_or_synchronous_only_settings_name_the_key(overrides, message):
    with pytest.raises(RunConfigError, match=message):
        config_with({"strategy": "fedbuff", **overrides})


def test_a_bad_async_setting_stops_the_run_before_any_site_is_asked(tmp_path):
    sites = builtin_sites(2)
    with pytest.raises(RunConfigError, match="run config async-buffer-size: 0 must be >= 1"):
        fedbuff(tmp_path, sites, **{"async-buffer-size": 0})
    assert [site.handled for site in sites] == [[], []]  # not even the survey


def test_the_defaults_are_valid():
    config = config_with({"strategy": "fedbuff"})
    assert (config.async_buffer_size, config.async_max_staleness, config.async_time_budget) == (3, 10, 0.0)
    assert Staleness.of(config) == Staleness("polynomial", 0.5, 10.0, 4)


def test_a_slow_sites_training_is_padded_to_its_seconds(monkeypatch):
    slept: list[float] = []
    monkeypatch.setattr(slow_sites._CUT_SHORT, "wait", slept.append)
    monkeypatch.setattr(slow_sites.time, "monotonic", lambda: 100.0)
    slow_sites.pad(started=99.0, seconds=16.0)  # trained 1 s so far: 15 s to go
    slow_sites.pad(started=98.0, seconds=1.0)  # already past its 1 s
    slow_sites.pad(started=99.0, seconds=0.0)  # not a slow site
    assert slept == [15.0, 0.0, 0.0]


def test_a_padding_sleep_under_way_ends_when_the_harness_cuts_it_short():
    started = time.monotonic()
    sleeper = threading.Thread(target=slow_sites.pad, args=(started, 60.0))
    sleeper.start()
    time.sleep(0.2)
    assert sleeper.is_alive()  # asleep towards its 60 s
    with slow_sites.cut_short():
        sleeper.join(timeout=5)
    assert not sleeper.is_alive() and time.monotonic() - started < 10
    assert not slow_sites._CUT_SHORT.is_set()  # the next run's sleeps are whole again


def fedbuff(tmp_path: Path, sites: list[Site], grid_type: type[InProcessGrid] = InProcessGrid, run_id: int = 1,
            **overrides) -> list[dict]:
    """Run `run_id` with artifacts-root `tmp_path`; its metrics lines."""
    config = run_config_with({"artifacts-root": str(tmp_path), "strategy": "fedbuff", "dataset": "builtin:breast-cancer",
                              "min-available-sites": len(sites), "min-train-sites": 1, **overrides})
    run_federation(sites, config, run_id=run_id, grid_type=grid_type)
    return read_metrics(run_dir(tmp_path, run_id))


def test_fedbuff_learns_and_records_every_server_update(tmp_path):
    metrics = fedbuff(tmp_path, builtin_sites(3), **{"num-server-rounds": 10, "async-buffer-size": 2})
    assert [m["version"] for m in metrics] == list(range(1, 11))
    assert all(len(m["replies"]) == 2 for m in metrics)
    for m in metrics:
        for r in m["replies"]:
            assert r["weight"] == pytest.approx((r["staleness"] + 1) ** -0.5)
            assert r["site"] in m["sites"] and -1.0 <= r["contribution"] <= 1.0
        assert set(m["contribution"]) == set(m["sites"])
        assert m["bytes_up"] > 0 and m["evaluated_on"] == "server-test-set"
    # Models go down when sites are given work, which need not happen between every two updates.
    assert sum(m["bytes_down"] for m in metrics) > 0
    # Three sites, two replies per update: the third reply of a batch lands on the next version.
    assert any(r["staleness"] == 1 for m in metrics for r in m["replies"])
    assert metrics[-1]["accuracy"] >= 0.9, [m["accuracy"] for m in metrics]
    assert CheckpointStore(run_dir(tmp_path)).latest().round == 10
    assert (run_dir(tmp_path) / "final_model.npz").exists()
    assert json.loads((run_dir(tmp_path) / "summary.json").read_text())["status"] == "completed"


def test_a_slow_site_does_not_hold_the_fast_ones_back(tmp_path):
    # site-2 takes 60 s per update; the run needs 12 updates of 2 replies each.
    metrics = fedbuff(tmp_path, builtin_sites(3, train_seconds={2: 60.0}), grid_type=ConcurrentGrid, **{
        "num-server-rounds": 12, "async-buffer-size": 2})
    assert len(metrics) == 12
    sites = [r["site"] for m in metrics for r in m["replies"]]
    assert sorted(set(sites)) == ["site-0", "site-1"] and len(sites) == 24


def test_replies_staler_than_the_maximum_are_dropped_and_the_budget_ends_the_run(tmp_path):
    metrics = fedbuff(tmp_path, builtin_sites(3, train_seconds={2: 1.0}), grid_type=ConcurrentGrid, **{
        "num-server-rounds": 100_000, "async-time-budget": 3.0, "async-buffer-size": 1,
        "async-max-staleness": 0})
    assert 1 <= len(metrics) < 100_000
    assert all(r["staleness"] == 0 for m in metrics for r in m["replies"])
    dropped = [d for m in metrics for d in m["dropped"]]
    assert any(d["site"] == "site-2" and d["staleness"] > 0 for d in dropped), dropped


def test_a_site_silent_past_the_round_timeout_is_given_the_current_model_again(tmp_path):
    metrics = fedbuff(tmp_path, builtin_sites(3, train_seconds={2: 60.0}), grid_type=ConcurrentGrid, **{
        "num-server-rounds": 30, "async-buffer-size": 2, "round-timeout": 1.0})
    failed = [m["failed"]["site-2"] for m in metrics if "site-2" in m["failed"]]
    assert failed and failed[0] == "no reply within round-timeout 1s; asked again"
    assert len(metrics) == 30 and all(r["site"] != "site-2" for m in metrics for r in m["replies"])


def test_fedbuff_resumes_the_named_run_in_a_directory_of_its_own(tmp_path):
    first = fedbuff(tmp_path, builtin_sites(3), run_id=21, **{"num-server-rounds": 3})
    metrics = fedbuff(tmp_path, builtin_sites(3), run_id=22, **{"num-server-rounds": 5, "resume": "21"})
    assert [m["version"] for m in metrics] == [1, 2, 3, 4, 5]
    assert metrics[:3] == first and read_metrics(run_dir(tmp_path, 21)) == first
    assert metrics[3]["accuracy"] >= metrics[2]["accuracy"] - 0.05  # from version 3's model, not from scratch
    assert CheckpointStore(run_dir(tmp_path, 22)).latest().round == 5
    assert len(fedbuff(tmp_path, builtin_sites(3), run_id=23, **{"num-server-rounds": 5, "resume": "latest"})) == 5


def test_resuming_a_scaffold_checkpoint_with_fedbuff_is_refused(tmp_path):
    run_federation(builtin_sites(2), run_config_with({"artifacts-root": str(tmp_path), "strategy": "scaffold",
                                                      "dataset": "builtin:breast-cancer", "num-server-rounds": 1}))
    with pytest.raises(RunConfigError, match=r"run config resume: '1': .* \(round 1\) holds server state .*\(control: "):
        fedbuff(tmp_path, builtin_sites(2), run_id=2, **{"num-server-rounds": 3, "resume": "1"})


def test_compressed_updates_are_decoded_against_the_model_they_were_trained_from(tmp_path):
    plain = fedbuff(tmp_path / "plain", builtin_sites(3), **{"num-server-rounds": 6})
    topk = fedbuff(tmp_path / "topk", builtin_sites(3), **{"num-server-rounds": 6, "compression": "topk",
                                                            "compression-topk-fraction": 0.05})
    assert sum(m["bytes_up"] for m in topk) < 0.3 * sum(m["bytes_up"] for m in plain)
    assert topk[-1]["accuracy"] >= 0.85, [m["accuracy"] for m in topk]


def test_the_top_k_residual_is_kept_on_the_site_state_volume_under_fedbuff(tmp_path):
    fedbuff(tmp_path, builtin_sites(2, state_root=tmp_path / "state"), run_id=5,
            **{"num-server-rounds": 2, "async-buffer-size": 1, "compression": "topk"})
    for site in ("site-0", "site-1"):
        saved = site_state.load(tmp_path / "state" / site / "inprocess" / "5" / site_state.STATE_FILE)
        assert saved is not None and RESIDUAL_RECORD in saved.array_records


def test_a_failing_site_is_listed_and_asked_again_while_the_others_carry_on(tmp_path):
    always = set(range(1, 1000))  # every task number: fedbuff's server-round counts tasks
    sites = builtin_sites(3, crash_rounds={1: always})
    metrics = fedbuff(tmp_path, sites, **{"num-server-rounds": 4, "async-buffer-size": 2})
    assert len(metrics) == 4
    assert all("crashed (scripted)" in m["failed"]["site-1"] for m in metrics)
    assert {r["site"] for m in metrics for r in m["replies"]} == {"site-0", "site-2"}
    assert sum(1 for h in sites[1].handled if h.startswith("train@")) == 4  # once per server update, no busy loop


def test_every_site_failing_stops_the_run_with_their_errors(tmp_path):
    always = set(range(1, 1000))
    with pytest.raises(FederationStalled, match="every site failed since server update 0: site-0: .*crashed"):
        fedbuff(tmp_path, builtin_sites(2, crash_rounds={0: always, 1: always}), **{"num-server-rounds": 2})


class RefusingGrid(InProcessGrid):
    """A SuperLink that refuses every training task (HttpGrid then returns None as its id)."""

    def push_messages(self, messages):
        messages = list(messages)
        if messages and messages[0].metadata.message_type == "train":
            return [None] * len(messages)
        return super().push_messages(messages)


def test_tasks_the_superlink_refuses_count_as_failures(tmp_path):
    with pytest.raises(FederationStalled, match="site-0: the SuperLink did not accept its task"):
        fedbuff(tmp_path, builtin_sites(2), grid_type=RefusingGrid, **{"num-server-rounds": 2})
