"""SecAgg+: the server only sees masked vectors, and their unmasked sum is FedAvg's aggregate.

Two real in-process federations of the app (3 breast-cancer sites, same
seeds, 2 rounds): one with `secagg = true`, one plain FedAvg. Every reply the
server receives is intercepted at the grid.
"""

from __future__ import annotations

import numpy as np
import pytest
from flwr.app import ConfigRecord, Context, Message, RecordDict
from flwr.common import bytes_to_ndarray
from flwr.common.constant import SUPERLINK_NODE_ID
from flwr.common.secure_aggregation.secaggplus_constants import RECORD_KEY_CONFIGS, Key, Stage
from flwr.supercore.task_identity import TaskIdentity

from flowerbed_training.client.secagg import secagg_plus_mod
from flowerbed_training.server import secagg
from tests.inprocess import InProcessGrid, config_with, run_dir
from flowerbed_training.common.protocol import ARRAYS, METRICS, NUM_EXAMPLES, from_record
from flowerbed_training.server.round_log import read_metrics

from tests.training.intercept import InterceptedRun, run_intercepted

SITES = 3
ROUNDS = 2
QUANTIZATION_RANGE = 2**22  # SecAggPlusWorkflow's default
MOD_RANGE = 2**32
RUN = {"num-server-rounds": ROUNDS, "dirichlet-alpha": 1.0}


@pytest.fixture(scope="module")
def secure(tmp_path_factory: pytest.TempPathFactory) -> InterceptedRun:
    return run_intercepted(tmp_path_factory.mktemp("secure"), SITES, secagg=True, **RUN)


@pytest.fixture(scope="module")
def plain(tmp_path_factory: pytest.TempPathFactory) -> InterceptedRun:
    return run_intercepted(tmp_path_factory.mktemp("plain"), SITES, **RUN)


def _masked_vectors(replies: list[Message], server_round: int) -> dict[int, list[np.ndarray]]:
    vectors = {}
    for reply in replies:
        configs = reply.content.config_records.get(RECORD_KEY_CONFIGS)
        if reply.metadata.group_id == str(server_round) and configs is not None and Key.MASKED_PARAMETERS in configs:
            vectors[reply.metadata.src_node_id] = [bytes_to_ndarray(b) for b in configs[Key.MASKED_PARAMETERS]]
    return vectors


def _plain_site_models(replies: list[Message]) -> dict[int, tuple[np.ndarray, int]]:
    """Round-1 model and example count of each site in the plain run (what SecAgg+ must hide)."""
    models: dict[int, tuple[np.ndarray, int]] = {}
    for reply in replies:  # in arrival order: a site's first train reply is its round-1 model
        if reply.metadata.message_type == "train" and reply.metadata.src_node_id not in models:
            arrays = from_record(reply.content.array_records[ARRAYS])
            flat = np.concatenate([a.ravel() for a in arrays.values()])
            models[reply.metadata.src_node_id] = (flat, int(reply.content.metric_records[METRICS][NUM_EXAMPLES]))
    return models


def test_server_receives_no_site_model_only_masked_vectors(secure: InterceptedRun, plain: InterceptedRun) -> None:
    secure_replies = secure.received
    train_replies = [r for r in secure_replies if r.metadata.message_type == "train"]
    assert len(train_replies) == 4 * SITES * ROUNDS  # the protocol's four stages, every site, every round
    for reply in train_replies:  # no training reply carries a readable model
        assert all(len(record) == 0 for record in reply.content.array_records.values())

    masked = _masked_vectors(secure_replies, server_round=1)
    true_models = _plain_site_models(plain.received)
    assert sorted(masked) == sorted(true_models) and len(masked) == SITES
    config = config_with({"secagg": True})
    for node_id, vector in masked.items():
        model, examples = true_models[node_id]
        weight = round(examples / config.secagg_max_weight * QUANTIZATION_RANGE) / QUANTIZATION_RANGE
        # What the site would send unmasked: its weighted model quantized to [0, 2**22).
        clip = config.secagg_clipping_range
        quantized = (np.clip(model * weight, -clip, clip) + clip) * QUANTIZATION_RANGE / (2 * clip)
        seen = np.concatenate([v.ravel() for v in vector[1:]]).astype(np.float64)
        distance = np.abs((seen - np.round(quantized)) % MOD_RANGE)
        distance = np.minimum(distance, MOD_RANGE - distance)
        # Unmasked, every entry would be within 1 (stochastic rounding); masked, none is.
        assert np.mean(distance <= 1) < 0.01
        # The masks are uniform over [0, 2**32): their mean sits near 2**31.
        assert abs(seen.mean() / MOD_RANGE - 0.5) < 0.05


def _secure_global_model_after_round_1(sent: list[Message]) -> np.ndarray:
    """The model the server sends in round 2 (legacy FitIns layout): SecAgg+'s round-1 aggregate."""
    for message in sent:
        if message.metadata.group_id == "2" and "fitins.parameters" in message.content.array_records:
            arrays = message.content.array_records["fitins.parameters"].values()
            return np.concatenate([a.numpy().ravel() for a in arrays])
    raise AssertionError("no round-2 model was sent")


def _quantization_tolerance(sites: int, examples: float) -> float:
    """Each site quantizes its weighted model to 2**22 levels over [-c, c] (stochastic
    rounding: error < one level); the unmasked sum is divided by the total weight."""
    config = config_with({"secagg": True})
    level = 2 * config.secagg_clipping_range / QUANTIZATION_RANGE
    return sites * level / (examples / config.secagg_max_weight)


def test_secure_aggregate_matches_plain_fedavg(secure: InterceptedRun, plain: InterceptedRun) -> None:
    site_models = _plain_site_models(plain.received)
    examples = np.array([n for _, n in site_models.values()], dtype=np.float64)
    fedavg = sum(model * n for model, n in site_models.values()) / examples.sum()
    secure_model = _secure_global_model_after_round_1(secure.sent)
    assert np.abs(secure_model - fedavg).max() <= _quantization_tolerance(SITES, examples.sum())
    assert np.abs(secure_model - fedavg).max() > 0  # it did go through quantization and masking


def test_secure_final_model_stays_close_to_plain_fedavg(secure: InterceptedRun, plain: InterceptedRun) -> None:
    # Round 2 trains from the slightly different round-1 models, so only closeness is expected.
    with np.load(secure.artifacts / "final_model.npz") as secure_model, \
            np.load(plain.artifacts / "final_model.npz") as plain_model:
        assert sorted(secure_model.files) == sorted(plain_model.files)
        for name in plain_model.files:
            assert secure_model[name].dtype == np.float32
            np.testing.assert_allclose(secure_model[name], plain_model[name], atol=5e-3)


def test_secure_run_records_rounds_like_a_plain_one(secure: InterceptedRun, plain: InterceptedRun) -> None:
    secure_lines, plain_lines = read_metrics(secure.artifacts), read_metrics(plain.artifacts)
    assert [line["round"] for line in secure_lines] == list(range(1, ROUNDS + 1))
    for secure_line, plain_line in zip(secure_lines, plain_lines, strict=True):
        assert secure_line["sites"] == plain_line["sites"] == [f"site-{i}" for i in range(SITES)]
        assert secure_line["accuracy"] == pytest.approx(plain_line["accuracy"], abs=0.02)
        assert set(secure_line["contribution"].values()) == {None}  # a masked update cannot be scored
        # Key exchange and shares make SecAgg+ cost more than sending the model in the clear.
        assert secure_line["bytes_up"] > plain_line["bytes_up"]


def test_a_site_heavier_than_secagg_max_weight_stops_the_run_before_any_round(tmp_path) -> None:
    # With dirichlet-alpha 1.0 the three sites train on 67, 177 and 122 examples. At max weight
    # 150, site-1's weight 177/150 > 1 would push its weighted model past the clipping range, and
    # Flower's secaggplus_mod would clip it with only a warning at the site.
    with pytest.raises(secagg.WeightTooLarge, match=r"run config secagg-max-weight: 150 is below the training "
                                                     r"examples of site-1 \(177 examples\);.* >= 177"):
        run_intercepted(tmp_path, SITES, secagg=True, **{**RUN, "secagg-max-weight": 150.0})
    assert read_metrics(run_dir(tmp_path)) == []
    assert not (run_dir(tmp_path) / "final_model.npz").exists()


def test_check_weights_names_every_site_over_the_limit_and_accepts_the_limit_itself() -> None:
    config = config_with({"secagg": True, "secagg-max-weight": 100.0})
    secagg.check_weights(config, {"a": 100, "b": 7})
    with pytest.raises(secagg.WeightTooLarge, match=r"a \(101 examples\), c \(250 examples\).* >= 250"):
        secagg.check_weights(config, {"c": 250, "b": 7, "a": 101})


def test_mod_passes_app_layout_messages_through() -> None:
    TaskIdentity.task_id, TaskIdentity.run_id, TaskIdentity.node_id = 1, 1, SUPERLINK_NODE_ID
    message = Message(RecordDict({"config": ConfigRecord({"server-round": 1})}), dst_node_id=7, message_type="train")
    seen = []

    def app(msg: Message, ctxt: Context) -> Message:
        seen.append(msg)
        return Message(RecordDict(), reply_to=msg)

    secagg_plus_mod(message, Context(1, 7, {}, RecordDict(), {}), app)
    assert seen == [message]


def test_a_site_dropping_before_sending_its_masked_vector_is_unmasked_out(plain: InterceptedRun, tmp_path,
                                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    # Site 3 (node 103) goes silent when asked for its masked vector in round 1: the other
    # two sites' shares let the server remove its pairwise masks (SecAgg+'s dropout recovery).
    deliver = InProcessGrid._deliver

    def dropping(grid: InProcessGrid, message: Message) -> Message | None:
        configs = message.content.config_records.get(RECORD_KEY_CONFIGS)
        if (message.metadata.dst_node_id == 103 and message.metadata.group_id == "1" and configs is not None
                and configs.get(Key.STAGE) == Stage.COLLECT_MASKED_VECTORS):
            return None
        return deliver(grid, message)

    monkeypatch.setattr(InProcessGrid, "_deliver", dropping)
    dropped = run_intercepted(tmp_path, SITES, secagg=True, **{**RUN, "min-train-sites": 2})
    first = read_metrics(run_dir(tmp_path))[0]
    assert first["sites"] == ["site-0", "site-1"] and first["aggregated"]
    survivors = {n: m for n, m in _plain_site_models(plain.received).items() if n != 103}
    examples = sum(n for _, n in survivors.values())
    fedavg = sum(model * n for model, n in survivors.values()) / examples
    error = np.abs(_secure_global_model_after_round_1(dropped.sent) - fedavg).max()
    assert error <= _quantization_tolerance(2, examples)


def test_local_dp_under_secagg_still_reports_each_sites_epsilon(tmp_path) -> None:
    # Epsilon travels in the (unmasked) FitRes metrics; only the model is masked.
    run_intercepted(tmp_path, SITES, secagg=True, **{**RUN, "local-dp": True, "local-dp-epsilon": 4.0})
    lines = read_metrics(run_dir(tmp_path))
    for line in lines:
        assert sorted(line["epsilon"]) == [f"site-{i}" for i in range(SITES)]
        assert all(0 < value <= 4.0 for value in line["epsilon"].values())
    assert all(value > 3.5 for value in lines[-1]["epsilon"].values())  # the last round ends near the target
