"""Site data: study directories (CSV, NPZ) and built-in scikit-learn sources.

Pure: no Flower, no torch. Every loader returns float32 features (one row per
example, images flattened) and int64 labels, plus a `DataSpec` describing them,
so the server can check that all sites agree before training starts.
"""

from __future__ import annotations

import csv
from collections.abc import Mapping
from dataclasses import dataclass
from functools import cache, lru_cache
from pathlib import Path

import numpy as np

BUILTIN_PREFIX = "builtin:"
BUILTIN_SOURCES = ("breast-cancer", "digits")
PARTITIONINGS = ("iid", "dirichlet", "labels")
# A Dirichlet draw may leave a site almost empty; redraw until each site has this many.
MIN_EXAMPLES_PER_SITE = 10
MAX_DIRICHLET_DRAWS = 100


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


def _dataset(x: np.ndarray, y: np.ndarray, image_shape: tuple[int, ...] | None) -> Dataset:
    x = np.asarray(x, dtype=np.float32).reshape(len(x), -1)
    y = np.asarray(y).astype(np.int64)
    if len(x) == 0:
        raise DataError("dataset is empty")
    if y.min() < 0:
        raise DataError(f"labels must be integers >= 0, found {int(y.min())}")
    spec = DataSpec(num_features=x.shape[1], num_classes=int(y.max()) + 1, image_shape=image_shape)
    return Dataset(x=x, y=y, spec=spec)


# --- built-in sources ---------------------------------------------------------------


@cache
def load_builtin(name: str) -> Dataset:
    """The whole built-in dataset (scikit-learn ships it; nothing downloads).

    Read once per process and returned read-only: a site reads it for every message,
    and parsing scikit-learn's CSV costs more than a small model's training step."""
    from sklearn import datasets  # imported here: only built-in sources need it

    if name == "breast-cancer":
        bunch = datasets.load_breast_cancer()
        return _read_only(_dataset(bunch.data, bunch.target, image_shape=None))
    if name == "digits":
        bunch = datasets.load_digits()
        return _read_only(_dataset(bunch.images, bunch.target, image_shape=(1, 8, 8)))
    raise DataError(
        f"dataset: unknown built-in source {BUILTIN_PREFIX}{name!r}; allowed: "
        + ", ".join(BUILTIN_PREFIX + s for s in BUILTIN_SOURCES)
    )


def _read_only(data: Dataset) -> Dataset:
    data.x.flags.writeable = False
    data.y.flags.writeable = False
    return data


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


def partition_indices(
    labels: np.ndarray, num_partitions: int, partitioning: str, alpha: float, seed: int,
    labels_per_site: int = 2,
) -> list[np.ndarray]:
    """Indices of each site's share: IID, label-skewed with per-class Dirichlet(alpha) shares,
    or `labels_per_site` classes per site (NIID-Bench's "#C=k", Li et al., ICDE 2022)."""
    if num_partitions < 1:
        raise DataError(f"num-partitions: {num_partitions} must be >= 1")
    if partitioning not in PARTITIONINGS:
        raise DataError(f"partitioning: {partitioning!r} is not one of {', '.join(PARTITIONINGS)}")
    if len(labels) < num_partitions * MIN_EXAMPLES_PER_SITE:
        raise DataError(
            f"num-partitions: {num_partitions} sites need at least "
            f"{num_partitions * MIN_EXAMPLES_PER_SITE} examples, the data has {len(labels)}"
        )
    rng = np.random.default_rng(seed)
    if partitioning == "iid":
        return [np.sort(part) for part in np.array_split(rng.permutation(len(labels)), num_partitions)]
    if partitioning == "labels":
        return _label_quantity_parts(labels, num_partitions, labels_per_site, rng)
    return _dirichlet_parts(labels, num_partitions, alpha, rng)


def _dirichlet_parts(labels: np.ndarray, num_partitions: int, alpha: float,
                     rng: np.random.Generator) -> list[np.ndarray]:
    if alpha <= 0:
        raise DataError(f"dirichlet-alpha: {alpha} must be > 0")
    for _ in range(MAX_DIRICHLET_DRAWS):
        parts: list[list[int]] = [[] for _ in range(num_partitions)]
        for label in np.unique(labels):
            members = rng.permutation(np.flatnonzero(labels == label))
            shares = rng.dirichlet(np.full(num_partitions, alpha))
            cuts = (np.cumsum(shares)[:-1] * len(members)).astype(int)
            for site, chunk in enumerate(np.split(members, cuts)):
                parts[site].extend(chunk.tolist())
        if min(len(p) for p in parts) >= MIN_EXAMPLES_PER_SITE:
            return [np.sort(np.asarray(p, dtype=np.int64)) for p in parts]
    raise DataError(
        f"dirichlet-alpha: {alpha} leaves a site with fewer than {MIN_EXAMPLES_PER_SITE} "
        f"examples in {MAX_DIRICHLET_DRAWS} draws; use a larger alpha or fewer sites"
    )


def _label_quantity_parts(labels: np.ndarray, num_partitions: int, labels_per_site: int,
                          rng: np.random.Generator) -> list[np.ndarray]:
    """NIID-Bench's "#C=k": site i holds class i mod K and k - 1 other classes drawn at random;
    each class's examples are split evenly among the sites holding it. With fewer sites than
    classes, classes no site draws are left out (as in NIID-Bench)."""
    classes = np.unique(labels)
    if not 1 <= labels_per_site <= len(classes):
        raise DataError(f"labels-per-site: {labels_per_site} must be in [1, {len(classes)}] (the classes)")
    held = []
    for site in range(num_partitions):
        others = rng.permutation(np.delete(classes, site % len(classes)))[: labels_per_site - 1]
        held.append({int(classes[site % len(classes)]), *others.tolist()})
    parts: list[list[int]] = [[] for _ in range(num_partitions)]
    for label in classes:
        holders = [site for site in range(num_partitions) if label in held[site]]
        members = rng.permutation(np.flatnonzero(labels == label))
        for site, chunk in zip(holders, np.array_split(members, len(holders))):
            parts[site].extend(chunk.tolist())
    return [np.sort(np.asarray(p, dtype=np.int64)) for p in parts]


@dataclass(frozen=True)
class BuiltinOptions:
    partitioning: str = "dirichlet"
    alpha: float = 0.5
    test_fraction: float = 0.2
    seed: int = 42
    labels_per_site: int = 2  # partitioning "labels" only


# A site reads its share for every message: split and partition once per process (a run
# uses one options value; a benchmark process a few at a time). Callers share the arrays
# and must not write to them (torch warns on read-only arrays, so they are not marked).
@lru_cache(maxsize=16)
def builtin_split(name: str, options: BuiltinOptions) -> Split:
    """The built-in dataset split into a pool the sites share and a global held-out test set."""
    return train_test_split(load_builtin(name), options.test_fraction, options.seed)


@lru_cache(maxsize=16)
def _builtin_parts(name: str, num_partitions: int, options: BuiltinOptions) -> list[np.ndarray]:
    pool = builtin_split(name, options).train
    return partition_indices(pool.y, num_partitions, options.partitioning, options.alpha, options.seed,
                             options.labels_per_site)


def builtin_partition(
    name: str, partition_id: int, num_partitions: int, options: BuiltinOptions
) -> Dataset:
    """One site's share of the built-in training pool (same seed -> same shares everywhere)."""
    if not 0 <= partition_id < num_partitions:
        raise DataError(f"partition-id: {partition_id} must be in [0, {num_partitions})")
    pool = builtin_split(name, options).train
    return subset(pool, _builtin_parts(name, num_partitions, options)[partition_id])


@dataclass(frozen=True)
class BuiltinShare:
    """Everything that shapes one site's built-in data: `builtin_site_split`'s only input.

    The site's prepared-data cache is keyed by all of its fields (builtin_cache.py),
    so a value that changes the arrays must live here to reach them at all."""

    source: str  # a BUILTIN_SOURCES name
    options: BuiltinOptions
    partition_index: int  # the site's position in the survey's assignment (partitions.py)
    num_partitions: int


def builtin_site_split(share: BuiltinShare) -> Split:
    """The site's share of the built-in pool, split into its own training and validation sets
    (the same stratified test-fraction split every site makes of its data, task.local_split)."""
    data = builtin_partition(share.source, share.partition_index, share.num_partitions, share.options)
    return train_test_split(data, share.options.test_fraction, share.options.seed)


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
    return _dataset(x, y, parts[0].spec.image_shape)


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
    return _dataset(features, table[:, label_at], image_shape=None)


def _load_npz(path: Path) -> Dataset:
    with np.load(path) as archive:
        missing = {"x", "y"} - set(archive.files)
        if missing:
            raise DataError(f"{path}: arrays {sorted(missing)} missing; an .npz needs 'x' and 'y'")
        x, y = archive["x"], archive["y"]
    if len(x) != len(y):
        raise DataError(f"{path}: 'x' has {len(x)} rows but 'y' has {len(y)}")
    image_shape = _image_shape(x.shape[1:])
    return _dataset(x, y, image_shape)


def _image_shape(example_shape: tuple[int, ...]) -> tuple[int, ...] | None:
    """(h, w) and (c, h, w) examples are images; flat vectors are tabular."""
    if len(example_shape) == 2:
        return (1, *example_shape)
    if len(example_shape) == 3:
        return tuple(example_shape)
    return None


def check_compatible(site: str, spec: DataSpec, expected: Mapping[str, int]) -> None:
    """Fail clearly when a site's data does not match what the federation trains on."""
    if spec.num_features != expected["num-features"]:
        raise DataError(
            f"site {site}: data has {spec.num_features} features but the federation's model "
            f"expects {expected['num-features']}; every site needs the same feature columns"
        )
    if spec.num_classes > expected["num-classes"]:
        raise DataError(
            f"site {site}: data has label {spec.num_classes - 1} but the federation's model "
            f"has {expected['num-classes']} classes"
        )
