"""The data a federation trains on, as it travels: in every train/evaluate config, and in a site's survey answer.

Before the first round the server learns what the sites' data looks like (server/survey.py)
and fixes the model's input (a `DataSpec`) and one standardization for the whole
federation. Both travel in every train/evaluate config (`data_config`), so a site that
joins later with other data fails with a clear error (`check_compatible`) instead of
training on garbage. Study-data sites describe their training split in their survey
answer (`summary_content` at the site, `summary_of` on the server): shape, classes and
per-feature sums, never rows.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
from flwr.app import ArrayRecord, ConfigRecord, RecordDict

from flowerbed_training.common.data import DataError, DataSpec
from flowerbed_training.common.protocol import (
    EXAMPLE_COUNT,
    FEATURE_MEAN,
    FEATURE_STD,
    FEATURE_TOTAL,
    FEATURE_TOTAL_SQ,
    IMAGE_SHAPE,
    NUM_CLASSES,
    NUM_FEATURES,
    PARTITION_SITES,
    SUMMARY,
    SUMS,
    from_record,
    to_record,
)
from flowerbed_training.common.standardization import FeatureSums, Standardizer

DataConfig = dict[str, int | list[int] | list[float] | list[str]]


def data_config(spec: DataSpec, standardizer: Standardizer, partition_sites: Sequence[str] | None) -> DataConfig:
    """What every train/evaluate ConfigRecord carries about the data (and, for built-in data, the
    partition assignment: partitions.py)."""
    config: DataConfig = {
        NUM_FEATURES: spec.num_features,
        NUM_CLASSES: spec.num_classes,
        IMAGE_SHAPE: list(spec.image_shape or []),
        FEATURE_MEAN: standardizer.mean.tolist(),
        FEATURE_STD: standardizer.std.tolist(),
    }
    if partition_sites is not None:
        config[PARTITION_SITES] = list(partition_sites)
    return config


def spec_from_config(config: Mapping[str, object]) -> DataSpec:
    shape = tuple(int(v) for v in config[IMAGE_SHAPE])  # type: ignore[attr-defined]
    return DataSpec(int(config[NUM_FEATURES]), int(config[NUM_CLASSES]), shape or None)  # type: ignore[arg-type]


def standardizer_from_config(config: Mapping[str, object]) -> Standardizer:
    return Standardizer(np.asarray(config[FEATURE_MEAN], dtype=np.float32),
                        np.asarray(config[FEATURE_STD], dtype=np.float32))


def check_compatible(site: str, spec: DataSpec, config: Mapping[str, object]) -> None:
    """Fail clearly (DataError) when a site's data does not match what the federation trains on."""
    expected_features, expected_classes = int(config[NUM_FEATURES]), int(config[NUM_CLASSES])  # type: ignore[arg-type]
    if spec.num_features != expected_features:
        raise DataError(
            f"site {site}: data has {spec.num_features} features but the federation's model "
            f"expects {expected_features}; every site needs the same feature columns"
        )
    if spec.num_classes > expected_classes:
        raise DataError(
            f"site {site}: data has label {spec.num_classes - 1} but the federation's model "
            f"has {expected_classes} classes"
        )


def summary_content(spec: DataSpec, sums: FeatureSums) -> dict[str, ConfigRecord | ArrayRecord]:
    """A study-data site's survey answer (its reply's records): its training split's shape, classes and
    per-feature sums."""
    return {
        SUMMARY: ConfigRecord({NUM_FEATURES: spec.num_features, NUM_CLASSES: spec.num_classes,
                               IMAGE_SHAPE: list(spec.image_shape or []), EXAMPLE_COUNT: sums.count}),
        SUMS: to_record({FEATURE_TOTAL: sums.total, FEATURE_TOTAL_SQ: sums.total_sq}),
    }


def summary_of(content: RecordDict) -> tuple[DataSpec, FeatureSums]:
    """What `summary_content` said (the server's side of the survey)."""
    summary = content.config_records[SUMMARY]
    arrays = from_record(content.array_records[SUMS])
    spec = DataSpec(int(summary[NUM_FEATURES]), int(summary[NUM_CLASSES]),  # type: ignore[arg-type]
                    tuple(int(v) for v in summary[IMAGE_SHAPE]) or None)  # type: ignore[union-attr]
    count = int(summary[EXAMPLE_COUNT])  # type: ignore[arg-type]
    return spec, FeatureSums(count, arrays[FEATURE_TOTAL], arrays[FEATURE_TOTAL_SQ])
