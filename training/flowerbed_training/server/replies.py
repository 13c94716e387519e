"""A site's reply as the server records it, whichever training path it came through: who sent it (one
naming rule for every path), what it reports, and its size on the wire."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from flwr.app import Message
from flwr.common.serde import recorddict_to_proto

from flowerbed_training.common.protocol import LEGACY_SITE_NAME, METRICS, NUM_EXAMPLES, stated_site_name

Metrics = Mapping[str, object]


class SiteNames:
    """Node id -> site name: the name a reply states (protocol.SITE), else the name its node stated
    before (error replies carry no content), else `node-<id>` for a node that never named itself."""

    def __init__(self, known: Mapping[int, str] | None = None) -> None:
        self._known = dict(known or {})

    def __call__(self, message: Message) -> str:
        """The sender of a reply of the app's own layout."""
        stated = None if message.has_error() else stated_site_name(message.content)
        return self.named(message.metadata.src_node_id, stated)

    def named(self, node_id: int, stated: object = None) -> str:
        """The site behind `node_id`, learning `stated` (a name, or None when the reply states none)."""
        if stated:
            self._known[node_id] = str(stated)
        return self._known.get(node_id, f"node-{node_id}")


@dataclass(frozen=True)
class SiteReply:
    """One site's train or evaluate answer: its examples (the weight of its numbers) and its metrics
    (protocol: TRAIN_LOSS, EPSILON, EVAL_LOSS, EVAL_ACCURACY)."""

    site: str
    examples: int
    metrics: Metrics

    @staticmethod
    def of(message: Message, names: SiteNames) -> SiteReply:
        """From a reply of the app's own layout (Message-API strategies, FedBuff)."""
        metrics = message.content.metric_records[METRICS]
        return SiteReply(names(message), int(metrics[NUM_EXAMPLES]), dict(metrics))  # type: ignore[arg-type]

    @staticmethod
    def of_legacy(node_id: int, examples: int, metrics: Metrics, names: SiteNames) -> SiteReply:
        """From a legacy FitRes/EvaluateRes (the SecAgg+ path; client/secagg.py adds the site's name)."""
        return SiteReply(names.named(node_id, metrics.get(LEGACY_SITE_NAME)), examples, metrics)

    def number(self, key: str) -> float | None:
        value = self.metrics.get(key)
        return float(value) if isinstance(value, (int, float)) else None


def payload_bytes(message: Message) -> int:
    """Bytes of the message content as Flower serializes it (0 for error replies)."""
    return 0 if message.has_error() else recorddict_to_proto(message.content).ByteSize()
