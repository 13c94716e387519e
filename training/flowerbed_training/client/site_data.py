"""The data step of a site's message: its own training and validation split, checked against and
standardized like the federation's (the server's train/evaluate config says what that is)."""

from __future__ import annotations

from collections.abc import Mapping

from flowerbed_training.client import builtin_cache
from flowerbed_training.client.node_config import NodeConfig
from flowerbed_training.common.builtin_data import builtin_share
from flowerbed_training.common.data import Dataset, load_directory, train_test_split
from flowerbed_training.common.data_config import check_compatible, standardizer_from_config
from flowerbed_training.common.partitions import partition_of
from flowerbed_training.common.run_config import RunConfig


def study_dataset(config: RunConfig, node: NodeConfig) -> Dataset:
    """The site's own study data: run config `dataset` (`<study>/<dataset>`) under node config `data-root`."""
    return load_directory(node.data_root / config.dataset, config.label_column)


def local_split(data: Dataset, config: RunConfig) -> tuple[Dataset, Dataset]:
    """A site's own train/validation split (`test-fraction`), used for federated evaluation."""
    split = train_test_split(data, config.test_fraction, config.seed)
    return split.train, split.test


def local_data(config: RunConfig, node: NodeConfig, instructions: Mapping[str, object]) -> tuple[Dataset, Dataset]:
    """The site's own train/validation split, unstandardized: of its share of built-in data (the partition
    the server assigned in `instructions`, prepared once per site: builtin_cache.py) or of its study data."""
    if config.builtin:
        share = builtin_share(config, partition_of(node.name, instructions))
        split = builtin_cache.site_split(share, builtin_cache.cache_dir(node))
        return split.train, split.test
    return local_split(study_dataset(config, node), config)


def prepared(config: RunConfig, node: NodeConfig, instructions: Mapping[str, object]) -> tuple[Dataset, Dataset]:
    """The site's train/validation data, checked against (DataError) and standardized like the federation's."""
    train_set, val_set = local_data(config, node, instructions)
    check_compatible(node.name, train_set.spec, instructions)
    standardizer = standardizer_from_config(instructions)
    return standardizer.apply(train_set), standardizer.apply(val_set)
