"""Site data: one example per row, with what the model needs to know about it; study directories (CSV, NPZ).

Pure: no Flower, no torch. Every loader returns float32 features (one row per
example, images flattened) and int64 labels, plus a `DataSpec` describing them,
so the server can check that all sites agree before training starts. The built-in
scikit-learn sources and their partitioning are in builtin_data.py.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path

import numpy as np


class DataError(ValueError):
    """A dataset cannot be used; the message names the field or file and what is allowed."""


@dataclass(frozen=True)
class DataSpec:
    """What the model needs to know about the data: shape and number of classes."""

    num_features: int
    num_classes: int
    image_shape: tuple[int, ...] | None = None  # (channels, height, width) for image data


@dataclass(frozen=True)
class Dataset:
    x: np.ndarray  # (n, num_features) float32
    y: np.ndarray  # (n,) int64
    spec: DataSpec


@dataclass(frozen=True)
class Split:
    train: Dataset
    test: Dataset


def as_dataset(x: np.ndarray, y: np.ndarray, image_shape: tuple[int, ...] | None) -> Dataset:
    x = np.asarray(x, dtype=np.float32).reshape(len(x), -1)
    y = np.asarray(y).astype(np.int64)
    if len(x) == 0:
        raise DataError("dataset is empty")
    if y.min() < 0:
        raise DataError(f"labels must be integers >= 0, found {int(y.min())}")
    spec = DataSpec(num_features=x.shape[1], num_classes=int(y.max()) + 1, image_shape=image_shape)
    return Dataset(x=x, y=y, spec=spec)


def subset(data: Dataset, index: np.ndarray) -> Dataset:
    return Dataset(x=data.x[index], y=data.y[index], spec=data.spec)


def train_test_split(data: Dataset, test_fraction: float, seed: int) -> Split:
    """Stratified, deterministic split (every class keeps its share in the test set)."""
    if not 0.0 < test_fraction < 1.0:
        raise DataError(f"test-fraction: {test_fraction} must be between 0 and 1 (exclusive)")
    rng = np.random.default_rng(seed)
    test_index: list[np.ndarray] = []
    for label in np.unique(data.y):
        members = rng.permutation(np.flatnonzero(data.y == label))
        test_index.append(members[: int(round(len(members) * test_fraction))])
    test = np.sort(np.concatenate(test_index))
    train = np.setdiff1d(np.arange(len(data.y)), test)
    return Split(train=subset(data, train), test=subset(data, test))


# --- study directories ----------------------------------------------------------------


def load_directory(path: Path, label_column: str) -> Dataset:
    """A site's study data: every `*.csv` (features + label column) or `*.npz` (x, y) in `path`."""
    if not path.is_dir():
        raise DataError(f"data directory {path} does not exist (is the study volume mounted?)")
    files = sorted(p for p in path.iterdir() if p.suffix in (".csv", ".npz"))
    if not files:
        raise DataError(f"data directory {path} has no .csv or .npz files")
    kinds = {p.suffix for p in files}
    if len(kinds) > 1:
        raise DataError(f"data directory {path} mixes .csv and .npz files; use one format")
    parts = [_load_csv(p, label_column) if p.suffix == ".csv" else _load_npz(p) for p in files]
    shapes = {part.spec.num_features for part in parts}
    if len(shapes) > 1:
        raise DataError(f"files in {path} have different feature counts: {sorted(shapes)}")
    x = np.concatenate([p.x for p in parts])
    y = np.concatenate([p.y for p in parts])
    return as_dataset(x, y, parts[0].spec.image_shape)


def _load_csv(path: Path, label_column: str) -> Dataset:
    with path.open(newline="") as handle:
        reader = csv.reader(handle)
        header = next(reader, None)
        if header is None:
            raise DataError(f"{path}: file is empty")
        if label_column not in header:
            raise DataError(
                f"{path}: label column {label_column!r} (run config label-column) not found; "
                f"columns are {', '.join(header)}"
            )
        label_at = header.index(label_column)
        rows = list(reader)
    try:
        table = np.asarray(rows, dtype=np.float64)
    except ValueError as err:
        raise DataError(f"{path}: every value must be numeric ({err})") from None
    if table.ndim != 2 or table.shape[1] != len(header):
        raise DataError(f"{path}: every row must have {len(header)} values")
    features = np.delete(table, label_at, axis=1)
    return as_dataset(features, table[:, label_at], image_shape=None)


def _load_npz(path: Path) -> Dataset:
    with np.load(path) as archive:
        missing = {"x", "y"} - set(archive.files)
        if missing:
            raise DataError(f"{path}: arrays {sorted(missing)} missing; an .npz needs 'x' and 'y'")
        x, y = archive["x"], archive["y"]
    if len(x) != len(y):
        raise DataError(f"{path}: 'x' has {len(x)} rows but 'y' has {len(y)}")
    image_shape = _image_shape(x.shape[1:])
    return as_dataset(x, y, image_shape)


def _image_shape(example_shape: tuple[int, ...]) -> tuple[int, ...] | None:
    """(h, w) and (c, h, w) examples are images; flat vectors are tabular."""
    if len(example_shape) == 2:
        return (1, *example_shape)
    if len(example_shape) == 3:
        return tuple(example_shape)
    return None
