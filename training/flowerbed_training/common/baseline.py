"""The centralized baseline: the run's model trained on the pooled built-in data, as `make federate`
and bench/ compare the federation against (the sites never pool their data; this is the yardstick)."""

from __future__ import annotations

import time

import numpy as np

from flowerbed_training.common.builtin_data import builtin_name, builtin_options, builtin_site_train_sets, builtin_split
from flowerbed_training.common.data import DataError, Dataset, DataSpec
from flowerbed_training.common.models import model_for
from flowerbed_training.common.run_config import RunConfig
from flowerbed_training.common.standardization import FeatureSums, Standardizer
from flowerbed_training.common.task import device, evaluate, loader, seed_everything, sgd, train


def centralized_baseline(config: RunConfig, sites: int | None = None) -> dict[str, float]:
    """Train the run's model on the pooled built-in training data for
    `num-server-rounds x local-epochs` epochs; evaluate on the same global test set.

    With `sites`, pool exactly what that many sites train on (`pooled_training_data`)
    instead of the whole training pool. Returns accuracy (0-1), loss (mean cross-entropy),
    seconds (wall), epochs and examples (rows trained on). Raises DataError for study data."""
    name = builtin_name(config.dataset)
    if name is None:
        raise DataError("dataset: the centralized baseline needs a builtin: source (study data never pools)")
    started = time.perf_counter()
    seed_everything(config.seed)
    split = builtin_split(name, builtin_options(config))
    pool = split.train if sites is None else pooled_training_data(config, sites)
    standardizer = Standardizer.from_sums(FeatureSums.of(pool.x))
    train_set, test_set = standardizer.apply(pool), standardizer.apply(split.test)
    spec = DataSpec(train_set.spec.num_features, int(split.train.y.max()) + 1, train_set.spec.image_shape)
    model = model_for(config, spec)
    dev = device()
    epochs = config.num_server_rounds * config.local_epochs
    train(model, loader(train_set, config.batch_size, True, config.seed), sgd(model, config.lr),
          epochs, dev, max_grad_norm=config.local_max_grad_norm, amp=config.amp)
    loss, accuracy = evaluate(model, loader(test_set, 256, False), dev)
    return {"accuracy": accuracy, "loss": loss, "seconds": time.perf_counter() - started,
            "epochs": float(epochs), "examples": float(len(train_set.y))}


def pooled_training_data(config: RunConfig, sites: int) -> Dataset:
    """The union of what `sites` sites train on in a run with this config (built-in data):
    each site's share of the run's partitioning, less the validation hold-out (`test-fraction`)
    it keeps at home (builtin_site_train_sets); rows site by site, unstandardized. It depends on
    the partition: the hold-outs are stratified per site, so another partitioning pools other
    rows. DataError for study data (builtin_share)."""
    parts = builtin_site_train_sets(config, sites)
    return Dataset(x=np.concatenate([p.x for p in parts]), y=np.concatenate([p.y for p in parts]), spec=parts[0].spec)
