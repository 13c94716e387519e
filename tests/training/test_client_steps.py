"""The steps of a training message at a site (client/app.py's `train`), each run alone: data, privacy, the
strategy's local objective and compression."""

import numpy as np
import pytest
import torch
from flwr.app import ArrayRecord, ConfigRecord, RecordDict

from flowerbed_training.client import privacy, site_data
from flowerbed_training.client.node_config import NodeConfig
from flowerbed_training.client.objective import LocalObjective
from flowerbed_training.common import compression, models, task
from flowerbed_training.common.builtin_data import builtin_share, builtin_site_split
from flowerbed_training.common.data import DataError, DataSpec
from flowerbed_training.common.data_config import data_config
from flowerbed_training.common.partitions import Partition
from flowerbed_training.common.protocol import (
    CLIENT_CONTROL,
    CONFIG,
    CONTROL,
    CONTROL_DELTA,
    DP_SITES,
    PROXIMAL_MU,
    RESIDUAL,
    from_record,
    to_record,
)
from flowerbed_training.common.standardization import Standardizer
from tests.inprocess import config_with

CPU = torch.device("cpu")
BREAST_CANCER = DataSpec(30, 2)


def instructions(num_features: int = 30, sites: list[str] | None = None) -> dict:
    """A train config as the server sends it: the data description and the partition assignment."""
    standardizer = Standardizer(np.zeros(num_features, np.float32), np.ones(num_features, np.float32))
    return data_config(DataSpec(num_features, 2), standardizer, sites or ["site-0", "site-1"])


def test_the_data_step_gives_the_site_its_share_checked_against_the_federations_data(tmp_path):
    config = config_with({"dataset": "builtin:breast-cancer"})
    node = NodeConfig.parse({"site-name": "site-1", "state-dir": str(tmp_path)})
    train_set, val_set = site_data.prepared(config, node, instructions())  # the identity standardization
    share = builtin_site_split(builtin_share(config, Partition(1, 2)))  # site-1 of the sorted 2 sites
    np.testing.assert_array_equal(train_set.x, share.train.x)
    np.testing.assert_array_equal(val_set.y, share.test.y)
    with pytest.raises(DataError, match="site site-1: data has 30 features but the federation's model expects 29"):
        site_data.prepared(config, node, instructions(num_features=29))
    with pytest.raises(DataError, match="site site-9: not in this run's partition-sites"):
        site_data.prepared(config, NodeConfig.parse({"site-name": "site-9"}), instructions())


def model_and_loader() -> tuple[torch.nn.Module, torch.utils.data.DataLoader]:
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(64, 30, generator=generator)
    y = (x[:, 0] > 0).long()
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, y), batch_size=16)
    return models.build_model("mlp", BREAST_CANCER, hidden=8), loader


def test_the_privacy_step_is_plain_sgd_without_local_dp_and_opacus_with_it():
    model, loader = model_and_loader()
    plain = privacy.local_sgd(model, loader, config_with({"local-max-grad-norm": 2.5}), RecordDict(), spent_before=False)
    assert isinstance(plain.optimizer, task.PlainSgd) and plain.loader is loader and plain.max_grad_norm == 2.5
    assert plain.spent(RecordDict()) == {}

    state = RecordDict()
    dp = privacy.local_sgd(model, loader, config_with({"local-dp": True}), state, spent_before=False)
    assert dp.private is not None and dp.loader is not loader  # Opacus' Poisson-sampled loader
    assert dp.max_grad_norm == 0.0  # Opacus clips each example instead
    task.train(model, dp.loader, dp.optimizer, 1, CPU, max_grad_norm=dp.max_grad_norm)
    spent = dp.spent(state)
    assert 0 < spent["epsilon"] <= 8.0 and "local-dp" in state.config_records
    with pytest.raises(privacy.PrivacyLedgerMissing):
        privacy.local_sgd(model, loader, config_with({"local-dp": True}), RecordDict(), spent_before=True)
    assert privacy.spent_before("site-1", {DP_SITES: ["site-0", "site-1"]})
    assert not privacy.spent_before("site-2", {DP_SITES: ["site-0", "site-1"]}) and not privacy.spent_before("site-2", {})


def test_the_strategys_local_objective_is_fedprox_or_scaffold_or_nothing():
    start = {"w": np.ones(3, np.float32)}
    plain = LocalObjective.received(RecordDict({CONFIG: ConfigRecord()}), RecordDict(), start, CPU)
    assert plain.terms() == {"proximal_mu": 0.0, "global_params": None, "gradient_correction": None}
    assert plain.reply(start, start, 4, 0.1, RecordDict()) == {}

    fedprox = LocalObjective.received(RecordDict({CONFIG: ConfigRecord({PROXIMAL_MU: 0.5})}), RecordDict(), start, CPU)
    assert fedprox.terms()["proximal_mu"] == 0.5
    torch.testing.assert_close(fedprox.terms()["global_params"]["w"], torch.ones(3))

    content = RecordDict({CONFIG: ConfigRecord(), CONTROL: to_record({"w": np.full(3, 2.0, np.float32)})})
    state = RecordDict()
    scaffold = LocalObjective.received(content, state, start, CPU)
    torch.testing.assert_close(scaffold.terms()["gradient_correction"]["w"], torch.full((3,), 2.0))  # c - c_i, c_i = 0
    trained = {"w": np.zeros(3, np.float32)}
    records = scaffold.reply(start, trained, 4, 0.25, state)
    # c_i+ = c_i - c + (x - y) / (K lr) = 0 - 2 + 1 / 1 = -1; delta = c_i+ - c_i = -1
    np.testing.assert_allclose(from_record(records[CONTROL_DELTA])["w"], [-1.0] * 3)
    np.testing.assert_allclose(from_record(state.array_records[CLIENT_CONTROL])["w"], [-1.0] * 3)


def test_the_compression_step_sends_the_model_or_its_encoded_update():
    start = {"w": np.zeros(100, np.float32)}
    trained = {"w": np.linspace(-1, 1, 100).astype(np.float32)}
    plain = compression.arrays_to_send(config_with({}), trained, start, RecordDict())
    np.testing.assert_array_equal(from_record(plain)["w"], trained["w"])
    state = RecordDict()
    sent = compression.arrays_to_send(config_with({"compression": "topk", "compression-topk-fraction": 0.1}),
                                      trained, start, state)
    assert isinstance(sent, ArrayRecord) and compression.is_compressed(sent)
    update = compression.decode_update(sent, like=start)["w"]
    assert np.count_nonzero(update) == 10  # the 10 largest entries, the rest kept as the residual
    np.testing.assert_allclose(update + from_record(state.array_records[RESIDUAL])["w"], trained["w"])
