"""Models, standardization, local training (FedProx / SCAFFOLD drift terms), baseline."""

import numpy as np
import pytest
import torch

from flowerbed_training.client import site_data
from flowerbed_training.client.objective import client_control_update
from flowerbed_training.common import baseline, models, task
from flowerbed_training.common.data import DataError, Dataset, DataSpec
from flowerbed_training.common.standardization import FeatureSums, Standardizer
from tests.inprocess import builtin_sites, config_with, run_config_with, run_federation
from tests.training.arrays import global_norm


def toy_data(n: int = 64, features: int = 6, seed: int = 0) -> Dataset:
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, features)).astype(np.float32)
    y = (x[:, 0] + x[:, 1] > 0).astype(np.int64)
    return Dataset(x, y, DataSpec(features, 2))


def test_models_map_a_batch_to_one_logit_per_class():
    tabular = models.build_model("auto", DataSpec(30, 2))
    assert isinstance(tabular, models.TabularMLP)
    assert tabular(torch.zeros(5, 30)).shape == (5, 2)
    images = models.build_model("auto", DataSpec(64, 10, (1, 8, 8)))
    assert isinstance(images, models.SmallCNN)
    assert images(torch.zeros(7, 64)).shape == (7, 10)
    assert models.build_model("mlp", DataSpec(64, 10, (1, 8, 8)))(torch.zeros(3, 64)).shape == (3, 10)


def test_model_choice_errors_name_the_key():
    with pytest.raises(DataError, match="model: 'resnet' is not one of auto, mlp, cnn"):
        models.build_model("resnet", DataSpec(3, 2))
    with pytest.raises(DataError, match="model: cnn needs image data"):
        models.build_model("cnn", DataSpec(30, 2))


def test_models_have_no_batchnorm_so_opacus_and_averaging_work():
    for spec in (DataSpec(30, 2), DataSpec(64, 10, (1, 8, 8))):
        model = models.build_model("auto", spec)
        assert not any(isinstance(m, torch.nn.modules.batchnorm._BatchNorm) for m in model.modules())
        assert set(models.get_weights(model)) == {k for k, _ in model.named_parameters()}


def test_the_same_seed_builds_the_same_model_everywhere():
    a = models.get_weights(models.model_for(config_with({"seed": 3}), DataSpec(30, 2)))
    b = models.get_weights(models.model_for(config_with({"seed": 3}), DataSpec(30, 2)))
    c = models.get_weights(models.model_for(config_with({"seed": 4}), DataSpec(30, 2)))
    assert all(np.array_equal(a[k], b[k]) for k in a)
    assert not all(np.array_equal(a[k], c[k]) for k in a)


def test_weights_round_trip():
    model = models.build_model("mlp", DataSpec(4, 3))
    weights = {k: np.full_like(v, 0.5) for k, v in models.get_weights(model).items()}
    models.set_weights(model, weights)
    assert all(np.all(v == 0.5) for v in models.get_weights(model).values())


def test_standardizer_from_site_sums_equals_the_pooled_statistics():
    sites = [toy_data(40, seed=s).x * (s + 1) + s for s in range(3)]
    sums = FeatureSums.of(sites[0]) + FeatureSums.of(sites[1]) + FeatureSums.of(sites[2])
    standardizer = Standardizer.from_sums(sums)
    pooled = np.concatenate(sites)
    np.testing.assert_allclose(standardizer.mean, pooled.mean(axis=0), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(standardizer.std, pooled.std(axis=0), rtol=1e-4)


def test_constant_features_are_centred_not_divided_by_zero():
    x = np.ones((5, 2), dtype=np.float32)
    standardizer = Standardizer.from_sums(FeatureSums.of(x))
    out = standardizer.apply(Dataset(x, np.zeros(5, dtype=np.int64), DataSpec(2, 1)))
    assert np.all(out.x == 0)


@pytest.mark.parametrize("kwargs", [{}, {"proximal_mu": 0.5}], ids=["sgd", "with-fedprox-drift"])
def test_plain_sgd_trains_to_exactly_the_weights_torch_sgd_does(kwargs):
    data = toy_data()
    trained = []
    for optimizer_for in (lambda m: task.sgd(m, 0.1), lambda m: torch.optim.SGD(m.parameters(), lr=0.1)):
        torch.manual_seed(0)
        model = models.build_model("mlp", data.spec, hidden=16)
        extra = {"global_params": {k: v.detach().clone() + 0.1 for k, v in model.named_parameters()}} if kwargs else {}
        stats = task.train(model, task.loader(data, 16, True, seed=1), optimizer_for(model), 3, torch.device("cpu"),
                           **kwargs, **extra)
        trained.append((models.get_weights(model), stats))
    (plain, plain_stats), (reference, reference_stats) = trained
    assert plain_stats == reference_stats and plain_stats.steps == 12
    for key in reference:
        np.testing.assert_array_equal(plain[key], reference[key])


def train_once(data: Dataset, **kwargs) -> tuple[torch.nn.Module, task.TrainStats]:
    torch.manual_seed(0)
    model = models.build_model("mlp", data.spec, hidden=16)
    stats = task.train(model, task.loader(data, 16, True), task.sgd(model, 0.1), 20, torch.device("cpu"), **kwargs)
    return model, stats


def test_local_training_learns_and_counts_steps():
    data = toy_data()
    model, stats = train_once(data)
    assert stats.steps == 20 * 4 and stats.examples == 64
    _, accuracy = task.evaluate(model, task.loader(data, 64, False), torch.device("cpu"))
    assert accuracy > 0.9


def test_fedprox_term_keeps_the_model_near_the_global_one():
    data = toy_data()
    torch.manual_seed(0)
    start = models.get_weights(models.build_model("mlp", data.spec, hidden=16))
    global_params = {k: torch.from_numpy(v) for k, v in start.items()}

    def distance(model: torch.nn.Module) -> float:
        return float(sum(np.sum((v - start[k]) ** 2) for k, v in models.get_weights(model).items()))

    free, _ = train_once(data)
    held, _ = train_once(data, proximal_mu=5.0, global_params=global_params)
    assert distance(held) < 0.5 * distance(free)


def test_scaffold_correction_is_an_extra_sgd_step_on_every_parameter():
    """With zero data gradient (lr applied to the loss only), a constant correction
    moves every weight by exactly -lr * correction * steps."""
    data = toy_data(16)
    torch.manual_seed(0)
    model = models.build_model("mlp", data.spec, hidden=8)
    before = models.get_weights(model)
    correction = {k: torch.full_like(torch.from_numpy(v), 0.25) for k, v in before.items()}
    frozen = torch.optim.SGD(model.parameters(), lr=0.0)  # data loss contributes nothing

    class FixedLr:  # the drift step reads the optimizer's lr; 0.0 would hide it
        param_groups = [{"lr": 0.1}]

        def zero_grad(self):
            frozen.zero_grad()

        def step(self):
            frozen.step()

    stats = task.train(model, task.loader(data, 8, False), FixedLr(), 1, torch.device("cpu"),  # type: ignore[arg-type]
                       gradient_correction=correction)
    after = models.get_weights(model)
    for key in before:
        np.testing.assert_allclose(after[key], before[key] - 0.1 * 0.25 * stats.steps, rtol=1e-5, atol=1e-6)


def test_local_max_grad_norm_scales_each_step_down_to_that_norm():
    data = toy_data(32)
    torch.manual_seed(0)
    model = models.build_model("mlp", data.spec, hidden=8)
    before = models.get_weights(model)
    # The full-batch gradient at the start, by hand.
    torch.nn.CrossEntropyLoss()(model(torch.from_numpy(data.x)), torch.from_numpy(data.y)).backward()
    gradient = {k: p.grad.numpy().copy() for k, p in model.named_parameters()}
    norm = global_norm(gradient)
    assert norm > 0.2  # so that a 0.2 bound binds
    model.zero_grad()
    task.train(model, task.loader(data, 32, False), task.sgd(model, 0.1), 1, torch.device("cpu"), max_grad_norm=0.2)
    after = models.get_weights(model)
    # w1 = w0 - lr * g * min(1, G / ||g||): the step's norm is lr * G.
    for key in before:
        np.testing.assert_allclose(after[key], before[key] - 0.1 * gradient[key] * 0.2 / norm, rtol=1e-4, atol=1e-7)
    np.testing.assert_allclose(global_norm({k: after[k] - before[k] for k in before}), 0.1 * 0.2, rtol=1e-4)


def test_local_max_grad_norm_bounds_scaffolds_client_control_variate():
    """Option II gives c_i+ = c_i - c + (x - y_i) / (K lr) = the mean of the K (clipped) data
    gradients, whatever the correction c - c_i: so ||c_i+|| <= local-max-grad-norm."""
    plain = toy_data(64)
    data = Dataset(plain.x * 30, plain.y, plain.spec)  # large inputs: large, growing gradients at lr 0.5
    trained = {}
    for bound in (0.0, 0.5):
        torch.manual_seed(0)
        model = models.build_model("mlp", data.spec, hidden=8)
        x = models.get_weights(model)
        c = {k: np.full_like(v, 0.1) for k, v in x.items()}  # the server's control variate; c_i = 0
        correction = {k: torch.from_numpy(v) for k, v in c.items()}
        stats = task.train(model, task.loader(data, 8, True), task.sgd(model, 0.5), 2, torch.device("cpu"),
                           gradient_correction=correction, max_grad_norm=bound)
        c_i = {k: np.zeros_like(v) for k, v in x.items()}
        trained[bound] = client_control_update(c_i, c, x, models.get_weights(model), stats.steps, 0.5)
    assert global_norm(trained[0.0]) > 0.5  # unclipped, the run's gradients are larger than the bound
    assert global_norm(trained[0.5]) <= 0.5 * (1 + 1e-4)


def test_device_is_cpu_without_a_gpu():
    assert task.device().type == ("cuda" if torch.cuda.is_available() else "cpu")


def test_centralized_baseline_trains_the_same_model_on_pooled_data():
    result = baseline.centralized_baseline(config_with({"dataset": "builtin:breast-cancer", "num-server-rounds": 5,
                                                    "local-epochs": 2, "lr": 0.1}))
    assert result["accuracy"] >= 0.93
    assert result["loss"] < 0.3 and result["seconds"] > 0
    assert result["epochs"] == 10
    with pytest.raises(DataError, match="centralized baseline needs a builtin: source"):
        baseline.centralized_baseline(config_with({"dataset": "cardio/visits"}))


def _rows(data: Dataset) -> np.ndarray:
    """Label and features per row, in one canonical (lexicographic) order."""
    table = np.column_stack([data.y.astype(np.float32), data.x])
    return table[np.lexsort(table.T[::-1])]


def test_pooled_training_data_is_the_union_of_what_the_sites_trained_on(tmp_path, monkeypatch):
    # Non-IID: each site's validation hold-out is stratified within its own share, so the
    # union depends on the partition (the IID union of the same seed differs, checked below).
    overrides = {"dataset": "builtin:breast-cancer", "partitioning": "dirichlet", "dirichlet-alpha": 0.5,
                 "seed": 3, "num-server-rounds": 1, "fraction-evaluate": 0.0}
    trained: dict[str, Dataset] = {}
    local_data = site_data.local_data

    def recording(run, node, config):  # type: ignore[no-untyped-def]
        train_set, val_set = local_data(run, node, config)
        if config.get("server-round"):  # a training message, not the survey's query
            trained[node.name] = train_set
        return train_set, val_set

    monkeypatch.setattr(site_data, "local_data", recording)
    run_federation(builtin_sites(3), run_config_with({**overrides, "artifacts-root": str(tmp_path)}))

    assert sorted(trained) == ["site-0", "site-1", "site-2"]
    union = Dataset(np.concatenate([d.x for d in trained.values()]), np.concatenate([d.y for d in trained.values()]),
                    DataSpec(30, 2))
    pooled = baseline.pooled_training_data(config_with(overrides), sites=3)
    assert len(pooled.y) == len(union.y) == sum(len(d.y) for d in trained.values())
    np.testing.assert_array_equal(_rows(pooled), _rows(union))
    assert baseline.centralized_baseline(config_with(overrides), sites=3)["examples"] == len(union.y)
    iid = baseline.pooled_training_data(config_with({**overrides, "partitioning": "iid"}), sites=3)
    assert not np.array_equal(_rows(iid), _rows(union))


def test_device_preference_from_node_config():
    assert task.device("cpu").type == "cpu"
    with pytest.raises(DataError, match="node config device: 'tpu' must be auto, cpu, cuda or cuda:<n>"):
        task.device("tpu")
    if not torch.cuda.is_available():
        with pytest.raises(DataError, match="this pod sees no GPU"):
            task.device("cuda")
