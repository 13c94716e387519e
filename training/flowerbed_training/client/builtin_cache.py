"""A site's built-in demo data, prepared once and kept on disk instead of rebuilt for every message.

Flower runs each message in a fresh ClientApp process, so a cache in memory dies
with the message: without this one every train/evaluate imports scikit-learn,
parses its CSV, splits and partitions the data again (~1.5 s CPU per site per
message). The site's training and validation split (builtin_data.builtin_site_split) is
kept as

    <state-dir>/.builtin-data/<key>.npz

with node config `state-dir` (pods: the retained `clientapp-state` volume at
`/state`; `make federate`: out/federate/state/<site>), or under the system's temp
directory for a site without one. The leading dot keeps it apart from the
per-federation state directories (site_state.py). Standardization is not cached:
it is one vectorized step, and the federation's standardizer changes whenever
the set of sites does, while a site's share changes only with what `key` covers.

`key` hashes every field of the `BuiltinShare` (the build's only input), the
sources of common/data.py and common/builtin_data.py (the code that builds it) and numpy's and scikit-learn's
versions (the random streams and the bundled data), so a value added to
BuiltinShare later is covered without touching this module. Entries are written
to a unique temporary file and renamed into place, so a concurrent task of the
same site reads the old entry, the new one or none, never half of one; an entry
that cannot be read is rebuilt and replaced. A cache directory that cannot be
written to costs the speed-up only (a warning), never the message.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import tempfile
from functools import cache
from importlib import metadata
from logging import WARNING
from pathlib import Path

import numpy as np
from flwr.supercore import log

from flowerbed_training.client.node_config import NodeConfig
from flowerbed_training.common import builtin_data, data
from flowerbed_training.common.atomic_file import replacing
from flowerbed_training.common.builtin_data import BuiltinShare, builtin_site_split
from flowerbed_training.common.data import Dataset, DataSpec, Split

CACHE_DIR = ".builtin-data"  # under node config state-dir
SCRATCH_DIR = "flowerbed-builtin-data"  # under the temp directory, without state-dir
_ARRAYS = ("train-x", "train-y", "test-x", "test-y", "spec")


def cache_dir(node: NodeConfig) -> Path:
    """Where this site keeps prepared built-in data (see the module docstring)."""
    if node.state_dir is not None:
        return node.state_dir / CACHE_DIR
    return Path(tempfile.gettempdir()) / SCRATCH_DIR


def key(share: BuiltinShare) -> str:
    """Hex SHA-256 of everything that shapes the share's arrays (see the module docstring)."""
    shaping = {"share": dataclasses.asdict(share), "code": _code_digest(),
               "numpy": np.__version__, "scikit-learn": metadata.version("scikit-learn")}
    return hashlib.sha256(json.dumps(shaping, sort_keys=True).encode()).hexdigest()


@cache
def _code_digest() -> str:
    code = hashlib.sha256()
    for module in (data, builtin_data):
        code.update(Path(module.__file__).read_bytes())
    return code.hexdigest()


def site_split(share: BuiltinShare, directory: Path) -> Split:
    """The share's training/validation split: from `directory` when cached there, else built and stored."""
    path = directory / f"{key(share)}.npz"
    try:
        return _read(path)
    except FileNotFoundError:
        pass
    except Exception as err:  # truncated, foreign or from another format: it is only a cache
        log(WARNING, "Prepared data %s cannot be read (%s: %s); rebuilding it", path, type(err).__name__, err)
    split = builtin_site_split(share)
    try:
        _write(path, split)
    except OSError as err:
        log(WARNING, "Prepared data cannot be cached in %s (%s); every message will rebuild it", directory, err)
    return split


def _read(path: Path) -> Split:
    # Our own handle: np.load leaks the one it opens when the file is not a valid archive.
    with path.open("rb") as file, np.load(file, allow_pickle=False) as archive:
        arrays = {name: archive[name] for name in _ARRAYS}
    num_features, num_classes, *image_shape = (int(v) for v in arrays["spec"])
    spec = DataSpec(num_features, num_classes, tuple(image_shape) or None)
    train = Dataset(arrays["train-x"], arrays["train-y"], spec)
    test = Dataset(arrays["test-x"], arrays["test-y"], spec)
    for part in (train, test):
        if part.x.dtype != np.float32 or part.y.dtype != np.int64 or part.x.shape != (len(part.y), num_features):
            raise ValueError(f"arrays of dtype {part.x.dtype}/{part.y.dtype} and shape {part.x.shape} "
                             f"do not hold {num_features} float32 features and int64 labels")
    return Split(train=train, test=test)


def _write(path: Path, split: Split) -> None:
    spec = split.train.spec
    with replacing(path) as file:  # two tasks of one site may build the same entry at once
        np.savez(file, **{"train-x": split.train.x, "train-y": split.train.y,
                          "test-x": split.test.x, "test-y": split.test.y,
                          "spec": np.array([spec.num_features, spec.num_classes, *(spec.image_shape or ())])})
