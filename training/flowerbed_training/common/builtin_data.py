"""The built-in demo sources (scikit-learn's bundled datasets; nothing downloads) and how they are shared out.

A built-in source is split into a pool the sites share and a global held-out test set
(the server evaluates on it); the pool is partitioned among the sites IID, by
Dirichlet(alpha) label skew, or `labels-per-site` classes per site, deterministically from
`seed`. Which partition a site gets is decided by the server per run (partitions.py).
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cache, lru_cache

import numpy as np

from flowerbed_training.common.data import DataError, Dataset, Split, as_dataset, subset, train_test_split
from flowerbed_training.common.partitions import Partition
from flowerbed_training.common.protocol import PARTITION_SITES
from flowerbed_training.common.run_config import BUILTIN_PREFIX, BUILTIN_SOURCES, PARTITIONINGS, RunConfig

# A Dirichlet draw may leave a site almost empty; redraw until each site has this many.
MIN_EXAMPLES_PER_SITE = 10
MAX_DIRICHLET_DRAWS = 100


@cache
def load_builtin(name: str) -> Dataset:
    """The whole built-in dataset (scikit-learn ships it; nothing downloads).

    Read once per process and returned read-only: a site reads it for every message,
    and parsing scikit-learn's CSV costs more than a small model's training step."""
    from sklearn import datasets  # imported here: only built-in sources need it

    if name == "breast-cancer":
        bunch = datasets.load_breast_cancer()
        return _read_only(as_dataset(bunch.data, bunch.target, image_shape=None))
    if name == "digits":
        bunch = datasets.load_digits()
        return _read_only(as_dataset(bunch.images, bunch.target, image_shape=(1, 8, 8)))
    raise DataError(
        f"dataset: unknown built-in source {BUILTIN_PREFIX}{name!r}; allowed: "
        + ", ".join(BUILTIN_PREFIX + s for s in BUILTIN_SOURCES)
    )


def _read_only(data: Dataset) -> Dataset:
    data.x.flags.writeable = False
    data.y.flags.writeable = False
    return data


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

    The site's prepared-data cache is keyed by all of its fields (client/builtin_cache.py),
    so a value that changes the arrays must live here to reach them at all."""

    source: str  # a BUILTIN_SOURCES name
    options: BuiltinOptions
    partition_index: int  # the site's position in the survey's assignment (partitions.py)
    num_partitions: int


def builtin_site_split(share: BuiltinShare) -> Split:
    """The site's share of the built-in pool, split into its own training and validation sets
    (the same stratified test-fraction split every site makes of its study data, client/site_data.py)."""
    data = builtin_partition(share.source, share.partition_index, share.num_partitions, share.options)
    return train_test_split(data, share.options.test_fraction, share.options.seed)



# --- from the run config ------------------------------------------------------------------


def builtin_options(config: RunConfig) -> BuiltinOptions:
    return BuiltinOptions(
        partitioning=config.partitioning,
        alpha=config.dirichlet_alpha,
        test_fraction=config.test_fraction,
        seed=config.seed,
        labels_per_site=config.labels_per_site,
    )


def builtin_name(dataset: str) -> str | None:
    """`builtin:digits` -> `digits`; a study path -> None."""
    return dataset[len(BUILTIN_PREFIX) :] if dataset.startswith(BUILTIN_PREFIX) else None


def builtin_share(config: RunConfig, partition: Partition | None) -> BuiltinShare:
    """What shapes a site's built-in data: the run's source and options and the `partition`
    the server assigned the site (partitions.py); DataError without one."""
    name = builtin_name(config.dataset)
    if name is None:
        raise DataError(f"dataset {config.dataset!r}: not a {BUILTIN_PREFIX} source")
    if partition is None:
        raise DataError(
            f"dataset {config.dataset!r}: the server assigned this site no partition ({PARTITION_SITES} "
            "missing from the message config)"
        )
    return BuiltinShare(name, builtin_options(config), partition.index, partition.count)


def builtin_site_train_sets(config: RunConfig, num_sites: int) -> list[Dataset]:
    """The training set of each of `num_sites` sites sharing the run's built-in source (index = partition),
    exactly as each site computes its own (builtin_site_split)."""
    return [builtin_site_split(builtin_share(config, Partition(i, num_sites))).train for i in range(num_sites)]


def server_test_set(config: RunConfig) -> Dataset | None:
    """The global held-out test set: exists for built-in sources only (study data stays at sites)."""
    name = builtin_name(config.dataset)
    return builtin_split(name, builtin_options(config)).test if name else None
