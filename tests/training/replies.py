"""Hand-made site replies for strategy and recorder tests."""

import time

import numpy as np
from flwr.app import ConfigRecord, Error, Message, Metadata, MetricRecord, RecordDict
from flwr.common.constant import SUPERLINK_NODE_ID

from flowerbed_training.common.protocol import ARRAYS, METRICS, NUM_EXAMPLES, SITE, to_record


def _reply_metadata(node_id: int) -> Metadata:
    return Metadata(run_id=1, message_id=f"reply-{node_id}", src_node_id=node_id, dst_node_id=SUPERLINK_NODE_ID,
                    reply_to_message_id=f"ins-{node_id}", group_id="", created_at=time.time(), ttl=3600,
                    message_type="train")


def reply_from(node_id: int, content: RecordDict, site: str | None = None) -> Message:
    """A site's reply as the ServerApp receives it (hand-made: no grid involved)."""
    if site is not None:
        content[SITE] = ConfigRecord({"name": site})
    return Message(content=content, metadata=_reply_metadata(node_id))


def error_from(node_id: int, reason: str) -> Message:
    """The error reply a SuperNode sends when its ClientApp raised."""
    return Message(error=Error(300, reason), metadata=_reply_metadata(node_id))


def train_reply(node_id: int, arrays: dict, num_examples: int, site: str | None = None, **extra_records) -> Message:
    content = RecordDict({ARRAYS: to_record({k: np.asarray(v, dtype=np.float64) for k, v in arrays.items()}),
                          METRICS: MetricRecord({NUM_EXAMPLES: num_examples, "train-loss": 0.5}), **extra_records})
    return reply_from(node_id, content, site)

