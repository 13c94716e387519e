"""What the ServerApp and the ClientApp say to each other: record keys and small helpers."""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
from flwr.app import Array, ArrayRecord, Message
from flwr.common.serde import recorddict_to_proto

# Record keys in message content (the arrays/metrics/config keys are Flower's strategy defaults).
ARRAYS = "arrays"
METRICS = "metrics"
CONFIG = "config"
SITE = "site"  # ConfigRecord {"name": <site-name>} in every reply: node ids change when a site rejoins
CONTROL = "control"  # SCAFFOLD: server control variate c (server -> site)
CONTROL_DELTA = "control-delta"  # SCAFFOLD: the site's delta c_i+ - c_i (site -> server)
SUMS = "sums"  # survey reply: per-feature sums for federated standardization
SUMMARY = "summary"  # survey reply: ConfigRecord describing the site's data

# Before training, the server asks every site once (survey.py): what its study data looks
# like, or, for built-in data, only its name, which decides its partition (partitions.py).
QUERY_SITE_NAME = "query.site_name"
QUERY_DATA_SUMMARY = "query.data_summary"

# Keys the server puts in every train/evaluate ConfigRecord.
NUM_FEATURES = "num-features"
NUM_CLASSES = "num-classes"
FEATURE_MEAN = "feature-mean"
FEATURE_STD = "feature-std"
NUM_EXAMPLES = "num-examples"
# Built-in data: the partition assignment, `partitions.PARTITION_SITES`, travels with them.


def to_record(arrays: Mapping[str, np.ndarray]) -> ArrayRecord:
    return ArrayRecord({key: Array(np.ascontiguousarray(value)) for key, value in arrays.items()})


def from_record(record: ArrayRecord) -> dict[str, np.ndarray]:
    return {key: array.numpy() for key, array in record.items()}


def site_name(message: Message) -> str:
    """The site that sent a reply (falls back to the node id for replies without a name)."""
    if not message.has_error() and SITE in message.content.config_records:
        return str(message.content.config_records[SITE]["name"])
    return f"node-{message.metadata.src_node_id}"


class SiteNames:
    """Node id -> site name, learnt from replies; error replies carry no content, so a site
    that crashes is named by what it said before (or its node id if it never answered)."""

    def __init__(self, known: Mapping[int, str] | None = None) -> None:
        self._known = dict(known or {})

    def __call__(self, message: Message) -> str:
        node = message.metadata.src_node_id
        if not message.has_error() and SITE in message.content.config_records:
            self._known[node] = site_name(message)
        return self.of_node(node)

    def of_node(self, node_id: int) -> str:
        """The name learnt for a node (for a site that never answered: `node-<id>`)."""
        return self._known.get(node_id, f"node-{node_id}")


def payload_bytes(message: Message) -> int:
    """Bytes of the message content as Flower serializes it (0 for error replies)."""
    return 0 if message.has_error() else recorddict_to_proto(message.content).ByteSize()
