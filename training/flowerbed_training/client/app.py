"""ClientApp: runs at each site (one pod per site, with its GPU and study data), one process per message.

Thin: each handler reads the run config and the site's node config, then runs its
steps. Training is a pipeline of named steps, each a function of its own module:
data (site_data.py), privacy (privacy.py: plain SGD or Opacus' DP-SGD), the
strategy's local objective (objective.py: FedProx's and SCAFFOLD's terms), local SGD
(common/task.py) and compression (common/compression.py). The share of a built-in
dataset comes from the server, in each message's config (common/partitions.py), and is
prepared once per site (builtin_cache.py, on the state volume of node config `state-dir`).
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from flwr.app import ConfigRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp

from flowerbed_training.client import privacy, secagg, site_data, site_state
from flowerbed_training.client.node_config import NodeConfig
from flowerbed_training.client.objective import LocalObjective
from flowerbed_training.common import models, task
from flowerbed_training.common.compression import arrays_to_send
from flowerbed_training.common.data_config import spec_from_config, summary_content
from flowerbed_training.common.protocol import (
    ARRAYS,
    CONFIG,
    EVAL_ACCURACY,
    EVAL_LOSS,
    METRICS,
    NUM_EXAMPLES,
    SERVER_ROUND,
    SITE,
    SITE_NAME,
    TRAIN_LOSS,
    from_record,
)
from flowerbed_training.common.run_config import RunConfig
from flowerbed_training.common.standardization import FeatureSums

# Each mod acts only on the messages meant for it: SecAgg+ protocol / legacy-layout
# messages, messages that carry a central-DP clipping norm, and training messages of a
# site with a state volume (site_state_mod, innermost: it sees the app's own layout).
app = ClientApp(mods=[secagg.secagg_plus_mod, privacy.central_dp_clipping_mod, site_state.site_state_mod])


@app.query("site_name")
def name(message: Message, context: Context) -> Message:
    """Who this site is: with built-in data the server assigns the partitions by name and
    describes the shares itself (server/survey.py), so the site loads nothing."""
    return _reply(message, NodeConfig.of(context), {})


@app.query("data_summary")
def describe(message: Message, context: Context) -> Message:
    """Feature count, classes, image shape and per-feature sums of the site's training split (study data)."""
    run, node = RunConfig.parse(context.run_config), NodeConfig.of(context)
    train_set, _ = site_data.local_data(run, node, message.content.config_records.get(CONFIG, ConfigRecord()))
    return _reply(message, node, summary_content(train_set.spec, FeatureSums.of(train_set.x)))


@app.train()
def train(message: Message, context: Context) -> Message:
    run, node = RunConfig.parse(context.run_config), NodeConfig.of(context)
    instructions = message.content.config_records[CONFIG]
    server_round = int(instructions.get(SERVER_ROUND, 0))  # type: ignore[arg-type]
    task.seed_everything(run.seed + server_round)
    train_set, _ = site_data.prepared(run, node, instructions)  # data
    model = _received_model(run, message)
    start = models.get_weights(model)
    device = task.device(node.device)
    loader = task.loader(train_set, run.batch_size, shuffle=True, seed=run.seed + server_round)
    sgd = privacy.local_sgd(model, loader, run, context.state,  # privacy
                            spent_before=privacy.spent_before(node.name, instructions))
    objective = LocalObjective.received(message.content, context.state, start, device)  # the strategy's objective
    stats = task.train(model, sgd.loader, sgd.optimizer, run.local_epochs, device,
                       max_grad_norm=sgd.max_grad_norm, amp=run.amp, **objective.terms())
    trained = models.get_weights(model)
    metrics = MetricRecord({NUM_EXAMPLES: stats.examples, TRAIN_LOSS: stats.loss, **sgd.spent(context.state)})
    return _reply(message, node, {ARRAYS: arrays_to_send(run, trained, start, context.state),  # compression
                                  METRICS: metrics,
                                  **objective.reply(start, trained, stats.steps, run.lr, context.state)})


@app.evaluate()
def evaluate(message: Message, context: Context) -> Message:
    run, node = RunConfig.parse(context.run_config), NodeConfig.of(context)
    _, val_set = site_data.prepared(run, node, message.content.config_records[CONFIG])
    model = _received_model(run, message)
    loss, accuracy = task.evaluate(model, task.loader(val_set, 256, shuffle=False), task.device(node.device))
    metrics = MetricRecord({NUM_EXAMPLES: len(val_set.y), EVAL_LOSS: loss, EVAL_ACCURACY: accuracy})
    return _reply(message, node, {METRICS: metrics})


def _received_model(run: RunConfig, message: Message) -> torch.nn.Module:
    """The run's model with the weights the server sent, shaped as its config says."""
    model = models.model_for(run, spec_from_config(message.content.config_records[CONFIG]))
    models.set_weights(model, from_record(message.content.array_records[ARRAYS]))
    return model


def _reply(message: Message, node: NodeConfig, records: Mapping[str, object]) -> Message:
    content = RecordDict({**records, SITE: ConfigRecord({SITE_NAME: node.name})})  # type: ignore[dict-item]
    return Message(content, reply_to=message)
