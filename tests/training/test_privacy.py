"""Local DP (Opacus, budget per site per run) and central DP (Flower's wrappers and mod)."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from flwr.app import Array, ArrayRecord, ConfigRecord, Context, Message, RecordDict
from flwr.common.constant import SUPERLINK_NODE_ID
from flwr.serverapp.strategy import (
    DifferentialPrivacyClientSideFixedClipping,
    DifferentialPrivacyServerSideFixedClipping,
    FedAvg,
)
from flwr.supercore.differential_privacy import KEY_CLIPPING_NORM
from flwr.supercore.task_identity import TaskIdentity
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from flowerbed_training.client import privacy
from flowerbed_training.common.run_config import RunConfig
from flowerbed_training.server import privacy as central_privacy
from flowerbed_training.server.app import NoRoundAggregated
from flowerbed_training.server.round_log import read_metrics
from flowerbed_training.server.rounds import Rounds
from tests.inprocess import builtin_sites, config_with, run_config_with, run_dir, run_federation
from tests.training.intercept import InterceptedRun, run_intercepted

RUN_CONFIG = config_with({"local-dp": True, "local-dp-epsilon": 8.0, "local-dp-delta": 1e-5,
                          "local-dp-max-grad-norm": 1.0, "num-server-rounds": 4, "local-epochs": 2})


def _site_data(seed: int = 0) -> DataLoader:
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(240, 6, generator=generator)
    y = (x[:, 0] + x[:, 1] > 0).long()
    return DataLoader(TensorDataset(x, y), batch_size=24, shuffle=True, generator=generator)


def _model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(6, 16), nn.ReLU(), nn.Linear(16, 2))


def _one_round(model: nn.Module, state: RecordDict, config: RunConfig = RUN_CONFIG) -> float:
    optimizer = torch.optim.SGD(model.parameters(), lr=0.2)
    private = privacy.make_private(model, optimizer, _site_data(), config, state)
    assert private.model is model
    for _ in range(config.local_epochs):
        for x, y in private.loader:
            if len(y) == 0:
                continue
            private.optimizer.zero_grad()
            nn.functional.cross_entropy(private.model(x), y).backward()
            private.optimizer.step()
    return privacy.epsilon_spent(private, state)


def test_budget_covers_the_whole_run_and_is_never_exceeded() -> None:
    state = RecordDict()  # the site's context.state, which survives between rounds
    model = _model()
    spent = [_one_round(model, state) for _ in range(RUN_CONFIG.num_server_rounds)]
    assert all(a < b for a, b in zip(spent, spent[1:], strict=False)), spent
    # Planned for all rounds: the first round spends only part of the budget,
    # the last one ends just under the target.
    assert spent[0] < 0.6 * 8.0
    assert 7.5 < spent[-1] <= 8.0
    with pytest.raises(privacy.PrivacyBudgetExhausted, match="spent epsilon 7.9"):
        _one_round(model, state)


def test_a_fresh_state_starts_a_fresh_budget_but_a_kept_one_continues() -> None:
    kept = RecordDict()
    first = _one_round(_model(), kept)
    assert _one_round(_model(), RecordDict()) == pytest.approx(first)
    assert _one_round(_model(), kept) > first


def test_model_keeps_its_keys_learns_and_is_released_after_the_round() -> None:
    model = _model()
    keys = list(model.state_dict())
    before = {k: v.clone() for k, v in model.state_dict().items()}
    state = RecordDict()
    _one_round(model, state)
    assert list(model.state_dict()) == keys
    assert any(not torch.equal(before[k], v) for k, v in model.state_dict().items())
    # Hooks are gone: a plain backward leaves no per-sample gradients behind.
    nn.functional.cross_entropy(model(torch.randn(4, 6)), torch.tensor([0, 1, 0, 1])).backward()
    assert all(not hasattr(p, "grad_sample") or p.grad_sample is None for p in model.parameters())


def test_per_sample_clipping_bounds_each_step() -> None:
    # One step on a batch with huge inputs: without clipping the update would
    # be enormous; with max_grad_norm=1 and noise, it stays small.
    model = _model()
    before = [p.detach().clone() for p in model.parameters()]
    loader = DataLoader(TensorDataset(torch.randn(240, 6) * 1e4, torch.randint(0, 2, (240,))), batch_size=240)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    private = privacy.make_private(model, optimizer, loader, replace(RUN_CONFIG, local_dp_epsilon=50.0), RecordDict())
    x, y = next(iter(private.loader))
    nn.functional.cross_entropy(model(x), y).backward()
    private.optimizer.step()
    privacy.epsilon_spent(private, RecordDict())
    change = torch.sqrt(sum(((p.detach() - b) ** 2).sum() for p, b in zip(model.parameters(), before, strict=True)))
    assert 0 < change < 1.0


def test_wrap_central_dp_picks_flowers_wrapper() -> None:
    inner = FedAvg()
    assert central_privacy.wrap_central_dp(inner, config_with({}), 3) is inner
    server = central_privacy.wrap_central_dp(inner, config_with({"central-dp": "server", "central-dp-noise-multiplier": 1.0,
                                                         "central-dp-clipping-norm": 2.0}), 3)
    assert isinstance(server, DifferentialPrivacyServerSideFixedClipping)
    assert (server.noise_multiplier, server.clipping_norm, server.num_sampled_clients) == (1.0, 2.0, 3)
    client = central_privacy.wrap_central_dp(inner, config_with({"central-dp": "client"}), 3)
    assert isinstance(client, DifferentialPrivacyClientSideFixedClipping)


def _train_message(config: dict) -> Message:
    TaskIdentity.task_id, TaskIdentity.run_id, TaskIdentity.node_id = 1, 1, SUPERLINK_NODE_ID
    content = RecordDict({"arrays": ArrayRecord({"w": Array(np.zeros(4, np.float32))}),
                          "config": ConfigRecord(config)})
    message = Message(content, dst_node_id=7, message_type="train")
    message.metadata.__dict__["_message_id"] = "m-1"
    return message


def _app_moving_weights_by(delta: float):
    def app(message: Message, context: Context) -> Message:
        sent = message.content.array_records["arrays"]["w"].numpy()
        return Message(RecordDict({"arrays": ArrayRecord({"w": Array(sent + delta)})}), reply_to=message)
    return app


@pytest.mark.parametrize(("config", "expected_norm"), [({}, 20.0), ({KEY_CLIPPING_NORM: 2.0}, 2.0)])
def test_central_dp_clipping_mod_clips_only_when_asked(config: dict, expected_norm: float) -> None:
    context = Context(1, 7, {}, RecordDict(), {})
    reply = privacy.central_dp_clipping_mod(_train_message(config), context, _app_moving_weights_by(10.0))
    update = reply.content.array_records["arrays"]["w"].numpy()
    assert np.linalg.norm(update) == pytest.approx(expected_norm)


def test_federated_run_with_local_dp_at_epsilon_8_learns_within_budget(tmp_path) -> None:
    # The real ServerApp + ClientApp in process: breast cancer, 3 non-IID sites, 10 rounds.
    # Seen when written: accuracy 0.938 on the server's test set after round 10 (0.64 after
    # round 1), each site's epsilon 7.99 of 8.
    run_config = run_config_with({"local-dp": True, "local-dp-epsilon": 8.0, "num-server-rounds": 10,
                                  "dataset": "builtin:breast-cancer", "artifacts-root": str(tmp_path)})
    run_federation(builtin_sites(3), run_config)
    lines = read_metrics(run_dir(tmp_path))
    assert [line["round"] for line in lines] == list(range(1, 11))
    assert lines[-1]["accuracy"] >= 0.9
    for site in ("site-0", "site-1", "site-2"):
        spent = [line["epsilon"][site] for line in lines]
        assert all(a < b for a, b in zip(spent, spent[1:], strict=False)), spent
        assert 7.0 < spent[-1] <= 8.0  # the whole budget is planned for the run, never exceeded


def _flat(record: ArrayRecord) -> np.ndarray:
    return np.concatenate([a.numpy().ravel() for a in record.values()])


def _round_1(run: InterceptedRun) -> tuple[np.ndarray, np.ndarray, list[tuple[np.ndarray, int]]]:
    """Global model sent in rounds 1 and 2, and every site's round-1 model with its example count."""
    sent_1, sent_2 = run.sent_in_round("train", 1), run.sent_in_round("train", 2)
    ids = {m.metadata.message_id for m in sent_1}
    sites = [(_flat(r.content.array_records["arrays"]), int(r.content.metric_records["metrics"]["num-examples"]))
             for r in run.received if r.metadata.reply_to_message_id in ids]
    return _flat(sent_1[0].content.array_records["arrays"]), _flat(sent_2[0].content.array_records["arrays"]), sites


CENTRAL_DP = {"num-server-rounds": 2, "central-dp-clipping-norm": 0.5, "central-dp-noise-multiplier": 0.2}


def test_central_dp_client_side_clips_every_update_before_it_leaves_the_site(tmp_path) -> None:
    run = run_intercepted(tmp_path, 3, **{**CENTRAL_DP, "central-dp": "client"})
    global_model, _, sites = _round_1(run)
    assert len(sites) == 3
    norms = [np.linalg.norm(model - global_model) for model, _ in sites]
    assert max(norms) == pytest.approx(0.5, rel=1e-4)  # clipped exactly to the norm (updates are larger)
    assert read_metrics(run_dir(tmp_path))[-1]["aggregated"]


def test_central_dp_server_side_clips_then_adds_calibrated_noise(tmp_path) -> None:
    run = run_intercepted(tmp_path, 3, **{**CENTRAL_DP, "central-dp": "server"})
    before, after, sites = _round_1(run)
    assert max(np.linalg.norm(model - before) for model, _ in sites) > 0.5  # sites send unclipped updates
    examples = np.array([n for _, n in sites], dtype=np.float64)
    clipped = [(m - before) * min(1.0, 0.5 / np.linalg.norm(m - before)) for m, _ in sites]
    fedavg_of_clipped = before + sum(c * n for c, (_, n) in zip(clipped, sites, strict=True)) / examples.sum()
    noise = after - fedavg_of_clipped
    # Flower's stdev: noise multiplier x clipping norm / sampled sites = 0.2 x 0.5 / 3.
    assert noise.std() == pytest.approx(0.2 * 0.5 / 3, rel=0.1)
    assert abs(noise.mean()) < 0.01


def test_central_dp_epsilon_matches_the_rdp_accountant_by_hand() -> None:
    # One Gaussian mechanism with noise multiplier z = 1 per round on every site (q = 1):
    # its RDP at order a is a / (2 z^2) per round (Mironov 2017, Prop. 7), so after T rounds
    # epsilon = min over a of T a / 2 + log(1/delta) / (a - 1), minus Opacus' tighter
    # conversion term (Balle et al. 2020): log((a - 1) / a) - (log(delta) + log(a)) / (a - 1).
    accountant = central_privacy.CentralDpAccountant(noise_multiplier=1.0, sample_rate=1.0, delta=1e-5)
    orders = np.concatenate([np.linspace(1.01, 8, 1000), np.arange(8, 64, 0.5)])

    def by_hand(rounds: int) -> float:
        rdp = rounds * orders / 2
        eps = rdp + np.log1p(-1 / orders) - (np.log(1e-5) + np.log(orders)) / (orders - 1)
        return float(eps.min())

    assert accountant.epsilon(0) == 0.0
    for rounds in (1, 4, 10):
        assert accountant.epsilon(rounds) == pytest.approx(by_hand(rounds), rel=0.02)
    assert central_privacy.CentralDpAccountant(0.0, 1.0, 1e-5).epsilon(3) is None  # no noise, no guarantee


def test_central_dp_reports_epsilon_per_round(tmp_path) -> None:
    run_intercepted(tmp_path, 3, **{**CENTRAL_DP, "num-server-rounds": 3, "central-dp": "server",
                                    "central-dp-noise-multiplier": 1.0})
    lines = read_metrics(run_dir(tmp_path))
    accountant = central_privacy.CentralDpAccountant(1.0, 1.0, 1e-5)  # 3 of 3 sites each round
    assert [line["central_epsilon"] for line in lines] == [pytest.approx(accountant.epsilon(r)) for r in (1, 2, 3)]
    assert 4.0 < lines[0]["central_epsilon"] < lines[-1]["central_epsilon"]


def test_without_central_dp_no_central_epsilon_is_reported(tmp_path) -> None:
    run_intercepted(tmp_path, 2, **{"num-server-rounds": 1})
    assert read_metrics(run_dir(tmp_path))[0]["central_epsilon"] is None


# --- the DP ledger lives on the site's state volume (site_state.py) ---------------------------------

LOCAL_DP = {"local-dp": True, "local-dp-epsilon": 8.0, "num-server-rounds": 4, "dataset": "builtin:breast-cancer"}


class ServerKilled(Exception):
    """The ServerApp pod dies (after a round's checkpoint is written)."""


def _run_killed_after_round_2(root: Path, state_root: Path | None) -> list[dict]:
    finish = Rounds.finish

    def dying(rounds: Rounds, model, strategy_state):  # type: ignore[no-untyped-def]
        central = finish(rounds, model, strategy_state)
        if rounds.current.round == 2:
            raise ServerKilled
        return central

    with pytest.MonkeyPatch.context() as monkeypatch:
        monkeypatch.setattr(Rounds, "finish", dying)
        with pytest.raises(ServerKilled):
            run_federation(builtin_sites(3, state_root), run_config_with({**LOCAL_DP, "artifacts-root": str(root)}),
                           run_id=1)
    return read_metrics(run_dir(root, 1))


def test_a_resume_across_a_supernode_restart_keeps_the_total_epsilon_within_the_target(tmp_path) -> None:
    # Measured before site state existed: epsilon 8.0 spent in rounds 1-2, then a fresh 6.2 in rounds 3-4.
    first = _run_killed_after_round_2(tmp_path / "artifacts", tmp_path / "state")
    assert [line["round"] for line in first] == [1, 2]
    # The SuperNodes restart (fresh Site objects: nothing in memory), their state volumes stay;
    # run 2 resumes run 1 from its round-2 checkpoint.
    run_federation(builtin_sites(3, tmp_path / "state"),
                   run_config_with({**LOCAL_DP, "artifacts-root": str(tmp_path / "artifacts"), "resume": "1"}),
                   run_id=2)
    lines = read_metrics(run_dir(tmp_path / "artifacts", 2))
    assert [line["round"] for line in lines] == [1, 2, 3, 4] and all(line["aggregated"] for line in lines)
    for site in ("site-0", "site-1", "site-2"):
        spent = [line["epsilon"][site] for line in lines]
        assert all(a < b for a, b in zip(spent, spent[1:], strict=False)), spent  # one budget, continued
        assert 7.0 < spent[-1] <= 8.0, spent


def test_a_dp_site_that_lost_its_ledger_refuses_to_start_a_new_budget(tmp_path) -> None:
    _run_killed_after_round_2(tmp_path / "artifacts", state_root=None)  # the ledger lived in memory only
    with pytest.raises(NoRoundAggregated):
        run_federation(builtin_sites(3),
                       run_config_with({**LOCAL_DP, "artifacts-root": str(tmp_path / "artifacts"), "resume": "1"}),
                       run_id=2)
    resumed = read_metrics(run_dir(tmp_path / "artifacts", 2))[2:]
    assert [line["round"] for line in resumed] == [3, 4]
    for line in resumed:
        assert line["sites"] == [] and set(line["failed"]) == {"site-0", "site-1", "site-2"}
        assert all("PrivacyLedgerMissing" in reason and "refusing to train rather than start a new budget" in reason
                   for reason in line["failed"].values())


def test_an_unreadable_site_state_refuses_to_train(tmp_path) -> None:
    _run_killed_after_round_2(tmp_path / "artifacts", tmp_path / "state")
    [broken] = (tmp_path / "state" / "site-1").glob("inprocess/1/state.pb")
    broken.write_bytes(b"not a record dict")
    run_federation(builtin_sites(3, tmp_path / "state"),
                   run_config_with({**LOCAL_DP, "artifacts-root": str(tmp_path / "artifacts"), "resume": "1",
                                    "min-train-sites": 2}), run_id=2)
    third = read_metrics(run_dir(tmp_path / "artifacts", 2))[2]
    assert third["sites"] == ["site-0", "site-2"]
    assert "cannot be read" in third["failed"]["site-1"] and "refusing to train" in third["failed"]["site-1"]
