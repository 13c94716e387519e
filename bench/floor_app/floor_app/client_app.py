"""Replies at once with the arrays it got: no data, no training."""

# Imported, not used: the training app's ClientApp imports torch, and a process per message
# pays that import every round, so the floor must pay it too.
import torch  # noqa: F401
from flwr.app import Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp

app = ClientApp()


@app.train()
def train(msg: Message, context: Context) -> Message:
    return Message(RecordDict({"arrays": msg.content["arrays"], "metrics": MetricRecord({"num-examples": 1})}),
                   reply_to=msg)
