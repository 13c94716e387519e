"""Rounds and RoundRecorder: minimum answers, bytes, contribution scores, metrics.jsonl, checkpoints."""

import json

import numpy as np
import pytest
from flwr.app import ConfigRecord, Message, RecordDict
from flwr.serverapp.strategy.strategy_utils import aggregate_metricrecords

from flowerbed_training.common import compression
from flowerbed_training.common.compression import CompressionSettings
from flowerbed_training.common.protocol import ARRAYS, from_record, to_record
from flowerbed_training.server.checkpoints import Checkpoint, CheckpointStore
from flowerbed_training.server.message_api import RoundRecorder
from flowerbed_training.server.replies import SiteNames, SiteReply, payload_bytes
from flowerbed_training.server.round_log import read_metrics
from flowerbed_training.server.rounds import Rounds
from flowerbed_training.server.scoring import cosine_contributions
from flowerbed_training.server.strategies import build_strategy
from tests.inprocess import InProcessGrid, Site, config_with
from tests.training.replies import error_from, reply_from, train_reply

GLOBAL = {"w": np.array([1.0, 1.0, 1.0])}


def test_cosine_scores_rank_helpers_free_riders_and_saboteurs():
    x = {"w": np.zeros(3)}
    sites = {
        "helper": {"w": np.array([1.0, 1.0, 0.0])},
        "free-rider": {"w": np.zeros(3)},  # sent the global model back unchanged
        "noise": {"w": np.array([0.0, 0.0, 1.0])},
        "saboteur": {"w": np.array([-1.0, -1.0, 0.0])},
    }
    scores = cosine_contributions(x, sites, {"w": np.array([1.0, 1.0, 0.0])})
    assert scores["helper"] == pytest.approx(1.0)
    assert scores["free-rider"] == 0.0
    assert scores["noise"] == pytest.approx(0.0)
    assert scores["saboteur"] == pytest.approx(-1.0)


def recorder(tmp_path, min_sites=2, strategy="fedavg", offset=0, central=None) -> RoundRecorder:
    config = config_with({"strategy": strategy, "min-train-sites": 2, "min-available-sites": 3})
    rounds = Rounds(tmp_path, CheckpointStore(tmp_path), central_evaluation=central, round_offset=offset)
    return RoundRecorder(build_strategy(config), rounds, min_train_sites=min_sites, state_of=dict)


def three_sites() -> InProcessGrid:
    # min-available-sites is 3: with fewer connected, Flower's sampling would wait for more.
    return InProcessGrid(None, [Site(node_id=n, node_config={}) for n in (1, 2, 3)], {})  # type: ignore[arg-type]


def one_round(rec: RoundRecorder, replies: list[Message], server_round: int = 1):
    sent = list(rec.configure_train(server_round, to_record(GLOBAL), ConfigRecord(), three_sites()))
    arrays, _ = rec.aggregate_train(server_round, replies)
    rec.end_round(server_round, arrays if arrays is not None else to_record(GLOBAL))
    return sent, arrays


def crashed(node_id: int) -> Message:
    return error_from(node_id, "RuntimeError: out of memory")


def test_a_round_goes_on_without_a_crashed_site_when_enough_answered(tmp_path, server_identity):
    rec = recorder(tmp_path, central=lambda model: (0.25, 0.75))
    replies = [train_reply(1, {"w": [2.0, 2.0, 2.0]}, 10, site="a"),
               train_reply(2, {"w": [4.0, 4.0, 4.0]}, 10, site="b"), crashed(3)]
    sent, arrays = one_round(rec, replies)
    np.testing.assert_allclose(from_record(arrays)["w"], [3.0, 3.0, 3.0])
    [line] = read_metrics(tmp_path)
    assert line["round"] == 1 and line["aggregated"] is True
    assert line["sites"] == ["a", "b"]
    assert line["failed"] == {"node-3": "RuntimeError: out of memory"}
    assert (line["loss"], line["accuracy"], line["evaluated_on"]) == (0.25, 0.75, "server-test-set")
    assert line["bytes_down"] == sum(payload_bytes(m) for m in sent)
    assert line["bytes_up"] == sum(payload_bytes(m) for m in replies)
    assert line["bytes_up"] > 2 * 3 * 8  # at least the float64 arrays themselves
    assert line["contribution"] == {"a": pytest.approx(1.0), "b": pytest.approx(1.0)}
    assert line["epsilon"] == {"a": None, "b": None}
    assert set(line) >= {"round", "loss", "accuracy", "sites", "bytes_up", "bytes_down", "seconds",
                         "contribution", "epsilon"}


def test_a_round_below_the_minimum_keeps_the_previous_model(tmp_path, server_identity):
    rec = recorder(tmp_path, min_sites=2)
    _, arrays = one_round(rec, [train_reply(1, {"w": [9.0, 9.0, 9.0]}, 10, site="a"), crashed(2)])
    assert arrays is None
    [line] = read_metrics(tmp_path)
    assert line["aggregated"] is False and line["sites"] == ["a"]
    latest = CheckpointStore(tmp_path).latest()
    np.testing.assert_array_equal(latest.model["w"], GLOBAL["w"])


def test_epsilon_is_reported_per_site(tmp_path, server_identity):
    rec = recorder(tmp_path)
    replies = [train_reply(n, {"w": [1.0, 1.0, 2.0]}, 5, site=s) for n, s in ((1, "a"), (2, "b"))]
    for eps, reply in zip((3.5, 7.25), replies):
        reply.content.metric_records["metrics"]["epsilon"] = eps
    one_round(rec, replies)
    assert read_metrics(tmp_path)[0]["epsilon"] == {"a": 3.5, "b": 7.25}


def test_compressed_updates_are_counted_compressed_and_aggregated_decoded(tmp_path, server_identity):
    rec = recorder(tmp_path)
    rng = np.random.default_rng(0)
    big_global = {"w": rng.normal(size=2000)}
    updates = [{"w": rng.normal(size=2000) * 0.01} for _ in range(2)]
    replies = []
    for node, update in zip((1, 2), updates):
        record = compression.encode_update(update, CompressionSettings("int8", 0.05), RecordDict())
        content = RecordDict({ARRAYS: record, "metrics": train_reply(node, {"w": [0.0]}, 1).content["metrics"]})
        replies.append(reply_from(node, content, site=f"s{node}"))
    rec.configure_train(1, to_record(big_global), ConfigRecord(), three_sites())
    up = sum(payload_bytes(m) for m in replies)
    arrays, _ = rec.aggregate_train(1, replies)
    rec.end_round(1, arrays)
    expected = big_global["w"] + np.mean([u["w"] for u in updates], axis=0)
    np.testing.assert_allclose(from_record(arrays)["w"], expected, atol=2e-4)
    line = read_metrics(tmp_path)[0]
    assert line["bytes_up"] == up < 2 * 2000 * 8 / 4  # int8 codes, not float64
    assert all(score > 0.5 for score in line["contribution"].values())


def test_checkpoints_keep_the_newest_and_load_the_latest(tmp_path):
    store = CheckpointStore(tmp_path, keep=2)
    for r in (1, 2, 3):
        store.save(Checkpoint(round=r, model={"w": np.full(2, r)}, strategy_state={"control/w": np.full(2, -r)}))
    assert sorted(p.name for p in store.directory.glob("round-*.npz")) == ["round-0002.npz", "round-0003.npz"]
    latest = store.latest()
    assert latest.round == 3
    np.testing.assert_array_equal(latest.model["w"], [3, 3])
    np.testing.assert_array_equal(latest.strategy_state["control/w"], [-3, -3])
    assert json.loads((store.directory / "latest.json").read_text())["file"] == "round-0003.npz"
    assert CheckpointStore(tmp_path / "empty").latest() is None


def test_a_resumed_run_continues_the_round_numbers(tmp_path, server_identity):
    rec = recorder(tmp_path, offset=4)
    one_round(rec, [train_reply(n, {"w": [1.0, 2.0, 3.0]}, 1, site=f"s{n}") for n in (1, 2)])
    assert read_metrics(tmp_path)[0]["round"] == 5
    assert CheckpointStore(tmp_path).latest().round == 5


def test_the_aggregate_keeps_the_models_dtype(tmp_path, server_identity):
    rec = recorder(tmp_path, strategy="fedadam")
    model32 = {"w": np.ones(4, dtype=np.float32)}
    rec.configure_train(1, to_record(model32), ConfigRecord(), three_sites())
    replies = [reply_from(n, RecordDict({ARRAYS: to_record({"w": np.full(4, 2.0, dtype=np.float32)}),
                                         "metrics": train_reply(n, {"w": [0.0]}, 1).content["metrics"]}))
               for n in (1, 2)]
    arrays, _ = rec.aggregate_train(1, replies)
    assert from_record(arrays)["w"].dtype == np.float32


def test_contributions_are_scored_even_when_the_strategy_consumes_the_replies(tmp_path, server_identity):
    rec = recorder(tmp_path, strategy="fedmedian")  # Flower's FedMedian empties the replies' arrays
    one_round(rec, [train_reply(n, {"w": [2.0, 2.0, 2.0]}, 1, site=f"s{n}") for n in (1, 2, 3)])
    assert read_metrics(tmp_path)[0]["contribution"] == {f"s{n}": pytest.approx(1.0) for n in (1, 2, 3)}


# --- the one round bookkeeper every path reports to (Rounds.trained / aggregated) ----------------------


def test_a_reply_without_a_name_is_named_one_way_on_every_path():
    names = SiteNames({4: "hospital-d"})
    app_layout = train_reply(7, {"w": [1.0]}, 10)  # states no name (Message API, FedBuff)
    assert SiteReply.of(app_layout, names).site == "node-7"
    assert SiteReply.of_legacy(7, 10, {}, names).site == "node-7"  # SecAgg+'s legacy FitRes
    assert names(error_from(7, "boom")) == "node-7"
    assert SiteReply.of_legacy(4, 10, {"site-name": ""}, names).site == "hospital-d"  # learnt before
    assert names(error_from(8, "boom")) == "node-8" and names.named(8) == "node-8"


def test_the_train_loss_is_averaged_as_flowers_strategies_average_metrics(tmp_path):
    replies = [train_reply(n, {"w": [0.0]}, examples, site=f"s{n}") for n, examples in ((1, 3), (2, 7), (3, 11))]
    for reply, loss in zip(replies, (0.3, 0.1, 0.7)):
        reply.content.metric_records["metrics"]["train-loss"] = loss
    rounds = Rounds(tmp_path, CheckpointStore(tmp_path))
    record = rounds.begin(1)
    assert rounds.trained([SiteReply.of(m, SiteNames()) for m in replies], {"s4": "crashed"}, minimum=3)
    flowers = aggregate_metricrecords([m.content for m in replies], "num-examples")["train-loss"]
    assert record.train_loss == flowers  # to the last bit
    assert (record.sites, record.failed, record.epsilon) == (["s1", "s2", "s3"], {"s4": "crashed"},
                                                            {"s1": None, "s2": None, "s3": None})
    assert not rounds.trained([SiteReply.of(m, SiteNames()) for m in replies], {}, minimum=4)


def test_a_sites_contribution_is_the_mean_of_its_scores(tmp_path):
    rounds = Rounds(tmp_path, CheckpointStore(tmp_path))
    record = rounds.begin(1)
    rounds.aggregated([("a", 0.5), ("b", None), ("a", 1.0)])  # FedBuff: a site may reply twice per update
    assert record.aggregated and record.contribution == {"a": 0.75, "b": None}
