"""Each strategy's aggregation on hand-made updates; SCAFFOLD against the paper's formulas."""

import numpy as np
import pytest
import torch
from flwr.app import ConfigRecord, RecordDict

from flowerbed_training.client.objective import SiteControl, client_control_update
from flowerbed_training.common.protocol import ARRAYS, CONTROL, CONTROL_DELTA, from_record, to_record
from flowerbed_training.common.run_config import RunConfig
from flowerbed_training.common.strategies import STRATEGIES
from flowerbed_training.server.scaffold import Scaffold, server_update
from flowerbed_training.server.strategies import build_strategy, restore_strategy_state, strategy_state
from tests.inprocess import InProcessGrid, Site, config_with
from tests.training.replies import train_reply


def settings(**overrides) -> RunConfig:
    return config_with({"min-train-sites": 2, "min-available-sites": 2} | overrides)


def grid_with(nodes: int) -> InProcessGrid:
    return InProcessGrid(None, [Site(node_id=n, node_config={}) for n in range(1, nodes + 1)], {})  # type: ignore[arg-type]


def aggregate(strategy, replies, global_model=None, grid=None):
    """Run one configure/aggregate cycle so stateful strategies know the global model."""
    global_model = global_model or {"w": np.zeros(2)}
    strategy.configure_train(1, to_record(global_model), ConfigRecord(), grid or grid_with(len(replies)))
    arrays, _ = strategy.aggregate_train(1, replies)
    return from_record(arrays)


def honest_and_poisoned() -> list:
    updates = [[1.0, 1.0], [1.1, 0.9], [0.9, 1.1], [1.05, 0.95], [100.0, -100.0]]
    return [train_reply(i + 1, {"w": u}, num_examples=10) for i, u in enumerate(updates)]


def test_fedavg_weights_sites_by_their_examples(server_identity):
    replies = [train_reply(1, {"w": [1.0, 1.0]}, 10), train_reply(2, {"w": [4.0, 7.0]}, 20)]
    result = aggregate(build_strategy(settings(strategy="fedavg")), replies)
    np.testing.assert_allclose(result["w"], [3.0, 5.0])


def test_fedprox_sends_mu_to_the_sites(server_identity):
    strategy = build_strategy(settings(strategy="fedprox", **{"proximal-mu": 0.3}))
    messages = list(strategy.configure_train(1, to_record({"w": np.zeros(2)}), ConfigRecord(), grid_with(2)))
    assert messages[0].content.config_records["config"]["proximal-mu"] == pytest.approx(0.3)


@pytest.mark.parametrize("name", ["fedmedian", "fedtrimmedavg", "krum"])
def test_robust_aggregators_resist_a_poisoned_update(server_identity, name):
    options = {"strategy": name, "min-train-sites": 5, "min-available-sites": 5,
               "krum-malicious": 1, "trimmed-beta": 0.2}
    robust = aggregate(build_strategy(settings(**options)), honest_and_poisoned())
    plain = aggregate(build_strategy(settings(strategy="fedavg")), honest_and_poisoned())
    assert np.abs(plain["w"] - 1.0).max() > 15  # the poison drags the mean away
    assert np.abs(robust["w"] - 1.0).max() < 0.11


def test_fedmedian_is_the_coordinate_wise_median(server_identity):
    result = aggregate(build_strategy(settings(strategy="fedmedian", **{"min-train-sites": 5,
                                                                          "min-available-sites": 5})),
                       honest_and_poisoned())
    np.testing.assert_allclose(result["w"], [1.05, 0.95])


def test_fedadam_moves_by_its_adaptive_step_and_its_state_survives_a_checkpoint(server_identity):
    strategy = build_strategy(settings(strategy="fedadam", **{"server-lr": 0.1}))
    replies = [train_reply(1, {"w": [1.0, -1.0]}, 1), train_reply(2, {"w": [1.0, -1.0]}, 1)]
    result = aggregate(strategy, replies)
    # First step: m = 0.1*delta, v = 0.01*delta^2, bias-corrected Adam step of size ~eta in delta's direction.
    assert np.all(np.sign(result["w"]) == [1, -1])
    state = strategy_state(strategy)
    assert set(state) == {"m_t/w", "v_t/w"}
    fresh = build_strategy(settings(strategy="fedadam", **{"server-lr": 0.1}))
    restore_strategy_state(fresh, state)
    np.testing.assert_array_equal(fresh.m_t["w"], strategy.m_t["w"])  # type: ignore[attr-defined]


def test_fedyogi_follows_reddi_et_al_algorithm_2_by_hand(server_identity):
    # Reddi et al. 2021, "Adaptive Federated Optimization", Algorithm 2 (FedYogi), as Flower's
    # FedYogi implements it (no bias correction): with Delta_t the FedAvg aggregate minus x_t,
    #   m_t = b1 m_{t-1} + (1 - b1) Delta_t
    #   v_t = v_{t-1} - (1 - b2) Delta_t^2 sign(v_{t-1} - Delta_t^2)
    #   x_{t+1} = x_t + eta m_t / (sqrt(v_t) + tau)
    # b1 = 0.9, b2 = 0.99 (Flower's defaults; the run config's server-beta-1 default is 0),
    # eta = server-lr = 0.1, tau = server-tau = 0.001, m_0 = v_0 = 0.
    strategy = build_strategy(settings(strategy="fedyogi", **{"server-lr": 0.1, "server-tau": 0.001,
                                                              "server-beta-1": 0.9, "server-beta-2": 0.99}))
    grid = grid_with(2)
    x0 = {"w": np.array([0.0, 1.0])}
    strategy.configure_train(1, to_record(x0), ConfigRecord(), grid)
    # FedAvg of [1.0, 1.0] and [0.6, 0.2] (10 examples each) = [0.8, 0.6]: Delta_1 = [0.8, -0.4].
    arrays, _ = strategy.aggregate_train(1, [train_reply(1, {"w": [1.0, 1.0]}, 10),
                                             train_reply(2, {"w": [0.6, 0.2]}, 10)])
    # m_1 = 0.1 * [0.8, -0.4] = [0.08, -0.04]
    # v_1 = 0 + 0.01 * [0.64, 0.16] = [0.0064, 0.0016] (sign(0 - Delta^2) = -1), sqrt: [0.08, 0.04]
    # x_1 = [0 + 0.1 * 0.08 / 0.081, 1 - 0.1 * 0.04 / 0.041] = [0.0987654, 0.9024390]
    x1 = from_record(arrays)["w"]
    np.testing.assert_allclose(x1, [0.0987654, 0.9024390], rtol=1e-6)
    np.testing.assert_allclose(strategy.v_t["w"], [0.0064, 0.0016])  # type: ignore[attr-defined]

    strategy.configure_train(2, arrays, ConfigRecord(), grid)
    y = x1 + np.array([0.05, -1.0])  # both sites: Delta_2 = [0.05, -1.0], Delta_2^2 = [0.0025, 1.0]
    arrays, _ = strategy.aggregate_train(2, [train_reply(1, {"w": y}, 10), train_reply(2, {"w": y}, 10)])
    # v_2[0]: v_1 = 0.0064 > 0.0025, so Yogi SHRINKS it: 0.0064 - 0.01 * 0.0025 = 0.006375
    #         (Adam's 0.99 * 0.0064 + 0.01 * 0.0025 = 0.006361 would differ);
    # v_2[1]: v_1 = 0.0016 < 1.0, so it grows: 0.0016 + 0.01 * 1.0 = 0.0116.
    np.testing.assert_allclose(strategy.v_t["w"], [0.006375, 0.0116], rtol=1e-9)  # type: ignore[attr-defined]
    # m_2 = 0.9 * [0.08, -0.04] + 0.1 * [0.05, -1.0] = [0.077, -0.136]
    np.testing.assert_allclose(strategy.m_t["w"], [0.077, -0.136], rtol=1e-9)  # type: ignore[attr-defined]
    # x_2 = x_1 + 0.1 * m_2 / (sqrt(v_2) + 0.001) = [0.0987654 + 0.1 * 0.077 / 0.0808436,
    #                                                0.9024390 - 0.1 * 0.136 / 0.1087033]
    #     = [0.0987654 + 0.0952457, 0.9024390 - 0.1251116] = [0.1940111, 0.7773274]
    np.testing.assert_allclose(from_record(arrays)["w"], [0.1940111, 0.7773274], rtol=1e-6)


def test_fedadam_with_the_run_configs_defaults_steps_without_server_momentum(server_identity):
    # Reddi et al. 2021, Algorithm 2 (FedAdam), with Flower's bias correction of the step
    # (flwr.serverapp.strategy.fedadam; it counts round t as t + 1):
    #   m_t = b1 m_{t-1} + (1 - b1) Delta_t,  v_t = b2 v_{t-1} + (1 - b2) Delta_t^2
    #   x_{t+1} = x_t + eta sqrt(1 - b2^(t+1)) / (1 - b1^(t+1)) m_t / (sqrt(v_t) + tau)
    # The defaults (training/pyproject.toml): eta = 0.01, tau = 0.001, b1 = 0 (no server
    # momentum: m_t = Delta_t; bench/README.md), b2 = 0.99.
    config = settings(strategy="fedadam")
    assert (config.server_lr, config.server_tau, config.server_beta_1, config.server_beta_2) == (0.01, 0.001, 0.0, 0.99)
    strategy = build_strategy(config)
    grid = grid_with(2)
    strategy.configure_train(1, to_record({"w": np.array([0.0, 1.0])}), ConfigRecord(), grid)
    # FedAvg of [1.0, 1.0] and [0.6, 0.2] = [0.8, 0.6]: Delta_1 = [0.8, -0.4] = m_1.
    arrays, _ = strategy.aggregate_train(1, [train_reply(1, {"w": [1.0, 1.0]}, 10),
                                             train_reply(2, {"w": [0.6, 0.2]}, 10)])
    np.testing.assert_allclose(strategy.m_t["w"], [0.8, -0.4], rtol=1e-9)  # type: ignore[attr-defined]
    # v_1 = 0.01 * [0.64, 0.16] = [0.0064, 0.0016]; step 0.01 sqrt(1 - 0.99^2) = 0.0014106736
    # x_1 = [0.0014106736 * 0.8 / 0.081, 1 - 0.0014106736 * 0.4 / 0.041] = [0.01393258, 0.98623733]
    np.testing.assert_allclose(strategy.v_t["w"], [0.0064, 0.0016], rtol=1e-9)  # type: ignore[attr-defined]
    x1 = from_record(arrays)["w"]
    np.testing.assert_allclose(x1, [0.01393258, 0.98623733], rtol=1e-6)

    strategy.configure_train(2, arrays, ConfigRecord(), grid)
    y = x1 + np.array([0.05, -1.0])  # Delta_2 = [0.05, -1.0]: m_2 = Delta_2, the past round forgotten
    arrays, _ = strategy.aggregate_train(2, [train_reply(1, {"w": y}, 10), train_reply(2, {"w": y}, 10)])
    np.testing.assert_allclose(strategy.m_t["w"], [0.05, -1.0], rtol=1e-9)  # type: ignore[attr-defined]
    # v_2 = 0.99 v_1 + 0.01 Delta_2^2 = [0.006361, 0.011584]; step 0.01 sqrt(1 - 0.99^3) = 0.0017233978
    # x_2 = [0.01393258 + 0.0017233978 * 0.05 / 0.0807558, 0.98623733 - 0.0017233978 * 1.0 / 0.1086283]
    #     = [0.01499962, 0.97037234]
    np.testing.assert_allclose(from_record(arrays)["w"], [0.01499962, 0.97037234], rtol=1e-6)


# --- SCAFFOLD (Karimireddy et al. 2020, Algorithm 1, option II) ---------------------------------


def test_client_control_variate_option_two():
    # c_i+ = c_i - c + (x - y_i) / (K * lr)
    c_i_new = client_control_update({"w": np.array([0.2])}, {"w": np.array([0.1])},
                                    {"w": np.array([1.0])}, {"w": np.array([0.5])}, steps=5, lr=0.1)
    np.testing.assert_allclose(c_i_new["w"], [0.2 - 0.1 + 0.5 / 0.5])
    with pytest.raises(ValueError, match="at least one local step"):
        client_control_update({}, {}, {}, {}, steps=0, lr=0.1)


def test_server_update_weights_sites_by_their_training_examples():
    x, c = {"w": np.array([1.0, 2.0])}, {"w": np.array([0.1, 0.1])}
    y = [{"w": np.array([2.0, 2.0])}, {"w": np.array([0.0, 4.0])}]
    delta_c = [{"w": np.array([1.0, 0.0])}, {"w": np.array([0.0, 2.0])}]
    x_new, c_new = server_update(x, c, y, delta_c, examples=[10, 30], num_sites=4, server_lr=0.5)
    # p = [10, 30] / 40 = [0.25, 0.75]
    # x + eta_g * sum p_i (y_i - x) = [1, 2] + 0.5 * (0.25 * [1, 0] + 0.75 * [-1, 2]) = [1, 2] + 0.5 * [-0.5, 1.5]
    np.testing.assert_allclose(x_new["w"], [0.75, 2.75])
    # c + |S|/N * sum p_i delta c_i = 0.1 + (2/4) * (0.25 * [1, 0] + 0.75 * [0, 2]) = 0.1 + 0.5 * [0.25, 1.5]
    np.testing.assert_allclose(c_new["w"], [0.225, 0.85])


def test_server_update_with_equal_sites_is_the_papers_uniform_mean():
    # Karimireddy et al. 2020, Algorithm 1: x += eta_g/|S| sum dy_i, c += 1/N sum dc_i.
    x, c = {"w": np.array([0.0])}, {"w": np.array([0.0])}
    y = [{"w": np.array([3.0])}, {"w": np.array([-1.0])}, {"w": np.array([4.0])}]
    delta_c = [{"w": np.array([0.3])}, {"w": np.array([0.6])}, {"w": np.array([0.9])}]
    x_new, c_new = server_update(x, c, y, delta_c, examples=[50, 50, 50], num_sites=5, server_lr=1.0)
    np.testing.assert_allclose(x_new["w"], [(3.0 - 1.0 + 4.0) / 3])
    np.testing.assert_allclose(c_new["w"], [(0.3 + 0.6 + 0.9) / 5])


def test_scaffold_strategy_sends_c_and_updates_it_from_the_answering_sites(server_identity):
    strategy = build_strategy(settings(strategy="scaffold", **{"scaffold-global-lr": 1.0}))
    assert isinstance(strategy, Scaffold)
    grid = grid_with(4)  # N = 4 connected sites, 2 answer
    x = {"w": np.array([1.0, 1.0])}
    messages = list(strategy.configure_train(1, to_record(x), ConfigRecord(), grid))
    assert len(messages) == 4
    # The first round's c is zero: with c_i = 0 too, it is a FedAvg round.
    np.testing.assert_array_equal(from_record(messages[0].content.array_records[CONTROL])["w"], [0.0, 0.0])
    replies = [
        train_reply(1, {"w": [3.0, 1.0]}, 10, **{CONTROL_DELTA: to_record({"w": np.array([0.4, 0.0])})}),
        train_reply(2, {"w": [1.0, 5.0]}, 30, **{CONTROL_DELTA: to_record({"w": np.array([0.0, 0.8])})}),
    ]
    arrays, metrics = strategy.aggregate_train(1, replies)
    # Weighted by the sites' examples, p = [0.25, 0.75]: x + 0.25 * [2, 0] + 0.75 * [0, 4].
    np.testing.assert_allclose(from_record(arrays)["w"], [1.5, 4.0])
    # c = 0 + (2/4) * (0.25 * [0.4, 0] + 0.75 * [0, 0.8]) = [0.05, 0.3]
    np.testing.assert_allclose(strategy.control["w"], [0.05, 0.3])  # type: ignore[index]
    assert metrics is not None and "train-loss" in metrics
    # The next round sends the updated c, and it is checkpointable.
    messages = list(strategy.configure_train(2, arrays, ConfigRecord(), grid))
    np.testing.assert_allclose(from_record(messages[0].content.array_records[CONTROL])["w"], [0.05, 0.3])
    assert set(strategy_state(strategy)) == {"control/w"}


def test_scaffold_ignores_replies_without_a_control_delta(server_identity):
    strategy = build_strategy(settings(strategy="scaffold"))
    arrays = aggregate(strategy, [train_reply(1, {"w": [9.0, 9.0]}, 1),
                                  train_reply(2, {"w": [3.0, 3.0]}, 1,
                                              **{CONTROL_DELTA: to_record({"w": np.zeros(2)})})])
    np.testing.assert_allclose(arrays["w"], [3.0, 3.0])


def test_every_registered_synchronous_strategy_builds():
    for name, registered in STRATEGIES.items():
        config = settings(strategy=name, **{"min-train-sites": 3, "min-available-sites": 3})
        if registered.asynchronous:  # its own training path (fedbuff.py), not a Flower strategy
            with pytest.raises(ValueError, match="not a Flower strategy"):
                build_strategy(config)
        else:
            assert build_strategy(config)


def test_arrays_key_is_what_flower_strategies_expect():
    assert ARRAYS == build_strategy(settings()).arrayrecord_key


def test_a_site_keeps_its_control_variate_between_rounds():
    state = RecordDict()
    assert SiteControl.received(RecordDict(), state) is None  # not a SCAFFOLD run
    c = {"w": np.array([0.5, -0.5])}
    content = RecordDict({CONTROL: to_record(c)})
    first = SiteControl.received(content, state)
    np.testing.assert_array_equal(first.c_i["w"], [0.0, 0.0])
    np.testing.assert_allclose(first.correction(torch.device("cpu"))["w"].numpy(), [0.5, -0.5])
    x, y = {"w": np.array([1.0, 1.0])}, {"w": np.array([0.8, 1.2])}
    delta = from_record(first.finish(x, y, steps=4, lr=0.1, state=state))
    expected_c_i = 0.0 - c["w"] + (x["w"] - y["w"]) / (4 * 0.1)
    np.testing.assert_allclose(delta["w"], expected_c_i)
    second = SiteControl.received(content, state)
    np.testing.assert_allclose(second.c_i["w"], expected_c_i)
