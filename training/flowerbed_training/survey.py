"""Before the first round the server learns what every site's data looks like, asking each site once.

The server derives the model's input shape and a federation-wide standardizer
from pooled per-feature sums (never rows). Both travel in every train/evaluate
config, so a site that joins later with different data fails with a clear error
instead of training garbage.

- Study data (each site's own files): the server sends `query.data_summary`;
  each site answers with its name, feature count, label range, image shape and
  the per-feature sums of its training split. Sites that disagree on the feature
  count or image shape stop the run (DataError).
- Built-in data: the server sends `query.site_name` (the site loads nothing),
  assigns the partitions by sorted name (partitions.py) and computes each site's
  share, example count and sums itself, from the same built-in source it holds
  out the global test set from, with the code each site runs on its own share
  (task.builtin_site_train_sets, data.builtin_site_split): the figures the sites
  would have sent.

Fewer than `min-available-sites` answers stop the run (FederationNotReady,
naming the sites that failed and why).
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass
from logging import INFO, WARNING

import numpy as np
from flwr.app import ConfigRecord, Message, RecordDict
from flwr.serverapp import Grid
from flwr.supercore import log

from flowerbed_training.data import DataError, DataSpec
from flowerbed_training.partitions import PARTITION_SITES, assign
from flowerbed_training.protocol import (
    CONFIG,
    FEATURE_MEAN,
    FEATURE_STD,
    NUM_CLASSES,
    NUM_FEATURES,
    QUERY_DATA_SUMMARY,
    QUERY_SITE_NAME,
    SITE,
    SUMMARY,
    SUMS,
    from_record,
    site_name,
    to_record,
)
from flowerbed_training.run_config import RunConfig
from flowerbed_training.task import FeatureSums, Standardizer, builtin_site_train_sets

IMAGE_SHAPE = "image-shape"
# How often to look for connecting sites while waiting for the minimum.
_POLL_SECONDS = 1.0


class FederationNotReady(RuntimeError):
    """Too few sites connected or described their data in time."""


@dataclass(frozen=True)
class FederationData:
    spec: DataSpec
    standardizer: Standardizer
    examples: dict[str, int]  # site -> training examples
    names: dict[int, str]  # node id -> site name
    partition_sites: list[str] | None = None  # built-in data: the partition assignment

    def config(self) -> dict[str, int | list[int] | list[float] | list[str]]:
        """What every train/evaluate ConfigRecord carries (see protocol.py and partitions.py)."""
        config: dict[str, int | list[int] | list[float] | list[str]] = {
            NUM_FEATURES: self.spec.num_features,
            NUM_CLASSES: self.spec.num_classes,
            IMAGE_SHAPE: list(self.spec.image_shape or []),
            FEATURE_MEAN: self.standardizer.mean.tolist(),
            FEATURE_STD: self.standardizer.std.tolist(),
        }
        if self.partition_sites is not None:
            config[PARTITION_SITES] = self.partition_sites
        return config


def spec_from_config(config: Mapping[str, object]) -> DataSpec:
    shape = tuple(int(v) for v in config[IMAGE_SHAPE])  # type: ignore[attr-defined]
    return DataSpec(int(config[NUM_FEATURES]), int(config[NUM_CLASSES]), shape or None)  # type: ignore[arg-type]


def standardizer_from_config(config: Mapping[str, object]) -> Standardizer:
    return Standardizer(np.asarray(config[FEATURE_MEAN], dtype=np.float32),
                        np.asarray(config[FEATURE_STD], dtype=np.float32))


def summary_reply(message: Message, site: str, spec: DataSpec, sums: FeatureSums) -> Message:
    """The ClientApp's answer to QUERY_DATA_SUMMARY."""
    content = RecordDict({
        SUMMARY: ConfigRecord({NUM_FEATURES: spec.num_features, NUM_CLASSES: spec.num_classes,
                               IMAGE_SHAPE: list(spec.image_shape or []), "count": sums.count}),
        SUMS: to_record({"total": sums.total, "total-sq": sums.total_sq}),
        SITE: ConfigRecord({"name": site}),
    })
    return Message(content, reply_to=message)


def survey_sites(grid: Grid, config: RunConfig) -> FederationData:
    """Survey the connected sites (one query each, see the module docstring); with built-in data
    share it out among them."""
    node_ids = _wait_for_sites(grid, config.min_available_sites, config.round_timeout)
    if config.builtin:
        named = _ask(grid, node_ids, QUERY_SITE_NAME, config.min_available_sites, config.round_timeout)
        return _builtin_federation(config, {m.metadata.src_node_id: site_name(m) for m in named})
    answered = _ask(grid, node_ids, QUERY_DATA_SUMMARY, config.min_available_sites, config.round_timeout)
    return _study_federation(answered)


def _ask(grid: Grid, node_ids: list[int], message_type: str, min_sites: int, timeout: float) -> list[Message]:
    """The sites' answers to a survey query; fewer than `min_sites` stops the run."""
    queries = [Message(RecordDict({CONFIG: ConfigRecord()}), dst_node_id=node, message_type=message_type)
               for node in node_ids]
    replies = list(grid.send_and_receive(queries, timeout=timeout))
    answered = [m for m in replies if not m.has_error()]
    for message in replies:
        if message.has_error():
            log(WARNING, "Site %s cannot train: %s", site_name(message), message.error.reason)
    if len(answered) < min_sites:
        problems = "; ".join(f"{site_name(m)}: {m.error.reason}" for m in replies if m.has_error())
        raise FederationNotReady(
            f"{len(answered)} of {len(node_ids)} sites answered {message_type} within {timeout:g}s, "
            f"min-available-sites is {min_sites}" + (f" ({problems})" if problems else "")
        )
    return answered


def _wait_for_sites(grid: Grid, min_sites: int, timeout: float) -> list[int]:
    deadline = time.monotonic() + timeout
    while len(node_ids := list(grid.get_node_ids())) < min_sites:
        if time.monotonic() > deadline:
            raise FederationNotReady(
                f"{len(node_ids)} site(s) connected within {timeout:g}s, min-available-sites is {min_sites}"
            )
        time.sleep(_POLL_SECONDS)
    return node_ids


def _builtin_federation(config: RunConfig, names: dict[int, str]) -> FederationData:
    partition_sites = assign(names.values())
    log(INFO, "Partitions of the built-in data: %s", ", ".join(partition_sites))
    train_sets = builtin_site_train_sets(config, len(partition_sites))
    sums = [(site, FeatureSums.of(share.x)) for site, share in zip(partition_sites, train_sets)]
    return _federation(train_sets[0].spec, sums, names, partition_sites)


def _study_federation(answered: list[Message]) -> FederationData:
    summaries = {site_name(m): m.content.config_records[SUMMARY] for m in answered}
    for key, what in ((NUM_FEATURES, "feature count"), (IMAGE_SHAPE, "image shape")):
        values = {site: tuple(s[key]) if key == IMAGE_SHAPE else s[key] for site, s in summaries.items()}
        if len(set(values.values())) > 1:
            listing = ", ".join(f"{site}={value}" for site, value in sorted(values.items()))
            raise DataError(f"sites disagree on the {what}: {listing}; every site needs the same feature columns")
    first = next(iter(summaries.values()))
    spec = DataSpec(
        num_features=int(first[NUM_FEATURES]),  # type: ignore[arg-type]
        num_classes=max(int(s[NUM_CLASSES]) for s in summaries.values()),  # type: ignore[arg-type]
        image_shape=tuple(first[IMAGE_SHAPE]) or None,  # type: ignore[arg-type]
    )
    sums = []
    for message in answered:
        arrays = from_record(message.content.array_records[SUMS])
        count = int(message.content.config_records[SUMMARY]["count"])  # type: ignore[arg-type]
        sums.append((site_name(message), FeatureSums(count, arrays["total"], arrays["total-sq"])))
    return _federation(spec, sums, {m.metadata.src_node_id: site_name(m) for m in answered}, None)


def _federation(spec: DataSpec, sums: list[tuple[str, FeatureSums]], names: dict[int, str],
                partition_sites: list[str] | None) -> FederationData:
    """Pool the sites' sums ((site, sums of its training split) each) into the federation's standardizer."""
    total = FeatureSums(0, np.zeros(spec.num_features), np.zeros(spec.num_features))
    for _, site_sums in sums:
        total = total + site_sums
    log(INFO, "Federation data: %s from %d sites (%d examples)", spec, len(sums), total.count)
    return FederationData(spec, Standardizer.from_sums(total), {site: s.count for site, s in sums},
                          names, partition_sites)
