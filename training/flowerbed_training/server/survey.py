"""Before the first round the server learns what every site's data looks like, asking each site once.

The server derives the model's input shape and a federation-wide standardizer
from pooled per-feature sums (never rows). Both travel in every train/evaluate
config (common/data_config.py), so a site that joins later with different data
fails with a clear error instead of training garbage.

- Study data (each site's own files): the server sends `query.data_summary`;
  each site answers with its name, feature count, label range, image shape and
  the per-feature sums of its training split. Sites that disagree on the feature
  count or image shape stop the run (DataError).
- Built-in data: the server sends `query.site_name` (the site loads nothing),
  assigns the partitions by sorted name (partitions.py) and computes each site's
  share, example count and sums itself, from the same built-in source it holds
  out the global test set from, with the code each site runs on its own share
  (builtin_data.builtin_site_train_sets): the figures the sites would have sent.

Fewer than `min-available-sites` answers stop the run (FederationNotReady,
naming the sites that failed and why). The sites are named as every round names them
(replies.SiteNames); the training paths go on learning names from there.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from logging import INFO, WARNING

import numpy as np
from flwr.app import ConfigRecord, Message, RecordDict
from flwr.serverapp import Grid
from flwr.supercore import log

from flowerbed_training.common.builtin_data import builtin_site_train_sets
from flowerbed_training.common.data import DataError, DataSpec
from flowerbed_training.common.data_config import DataConfig, data_config, summary_of
from flowerbed_training.common.partitions import assign
from flowerbed_training.common.protocol import CONFIG, QUERY_DATA_SUMMARY, QUERY_SITE_NAME
from flowerbed_training.common.run_config import RunConfig
from flowerbed_training.common.standardization import FeatureSums, Standardizer
from flowerbed_training.server.replies import SiteNames

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

    def config(self) -> DataConfig:
        """What every train/evaluate ConfigRecord carries (common/data_config.py)."""
        return data_config(self.spec, self.standardizer, self.partition_sites)


def survey_sites(grid: Grid, config: RunConfig) -> FederationData:
    """Survey the connected sites (one query each, see the module docstring); with built-in data
    share it out among them."""
    node_ids = _wait_for_sites(grid, config.min_available_sites, config.round_timeout)
    names = SiteNames()
    if config.builtin:
        named = _ask(grid, node_ids, QUERY_SITE_NAME, names, config.min_available_sites, config.round_timeout)
        return _builtin_federation(config, {m.metadata.src_node_id: names(m) for m in named})
    answered = _ask(grid, node_ids, QUERY_DATA_SUMMARY, names, config.min_available_sites, config.round_timeout)
    return _study_federation(answered, names)


def _ask(grid: Grid, node_ids: list[int], message_type: str, names: SiteNames, min_sites: int,
         timeout: float) -> list[Message]:
    """The sites' answers to a survey query; fewer than `min_sites` stops the run."""
    queries = [Message(RecordDict({CONFIG: ConfigRecord()}), dst_node_id=node, message_type=message_type)
               for node in node_ids]
    replies = list(grid.send_and_receive(queries, timeout=timeout))
    answered = [m for m in replies if not m.has_error()]
    for message in replies:
        if message.has_error():
            log(WARNING, "Site %s cannot train: %s", names(message), message.error.reason)
    if len(answered) < min_sites:
        problems = "; ".join(f"{names(m)}: {m.error.reason}" for m in replies if m.has_error())
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


def _study_federation(answered: list[Message], names: SiteNames) -> FederationData:
    described = [(names(m), *summary_of(m.content)) for m in answered]  # (site, DataSpec, FeatureSums)
    for what, value_of in (("feature count", lambda spec: spec.num_features),
                           ("image shape", lambda spec: spec.image_shape or ())):
        values = {site: value_of(spec) for site, spec, _ in described}
        if len(set(values.values())) > 1:
            listing = ", ".join(f"{site}={value}" for site, value in sorted(values.items()))
            raise DataError(f"sites disagree on the {what}: {listing}; every site needs the same feature columns")
    _, first, _ = described[0]
    spec = DataSpec(first.num_features, max(spec.num_classes for _, spec, _ in described), first.image_shape)
    sums = [(site, site_sums) for site, _, site_sums in described]
    return _federation(spec, sums, {m.metadata.src_node_id: names(m) for m in answered}, None)


def _federation(spec: DataSpec, sums: list[tuple[str, FeatureSums]], names: dict[int, str],
                partition_sites: list[str] | None) -> FederationData:
    """Pool the sites' sums ((site, sums of its training split) each) into the federation's standardizer."""
    total = FeatureSums(0, np.zeros(spec.num_features), np.zeros(spec.num_features))
    for _, site_sums in sums:
        total = total + site_sums
    log(INFO, "Federation data: %s from %d sites (%d examples)", spec, len(sums), total.count)
    return FederationData(spec, Standardizer.from_sums(total), {site: s.count for site, s in sums},
                          names, partition_sites)
