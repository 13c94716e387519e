"""ClientApp: runs at each site (one pod per site, with its GPU and study data).

Thin: reads the site's data through `task`, trains or evaluates the model the
server sent, and answers. Node config (`--node-config`): `site-name`,
`data-root` (see the brief's contract) and optionally `device` (auto | cpu |
cuda | cuda:<n>; default auto). The share of a built-in dataset comes from the
server, in each message's config (partitions.py), and is prepared once per site
(builtin_cache.py, on the state volume of node config `state-dir`).
"""

from __future__ import annotations

import time
from collections.abc import Mapping

import numpy as np
import torch
from flwr.app import ArrayRecord, ConfigRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp

from flowerbed_training import benchdelay, builtin_cache, compression, privacy, secagg, site_state, task
from flowerbed_training.data import Dataset, check_compatible
from flowerbed_training.partitions import partition_of
from flowerbed_training.protocol import (
    ARRAYS,
    CONFIG,
    CONTROL_DELTA,
    METRICS,
    NUM_EXAMPLES,
    SITE,
    from_record,
    to_record,
)
from flowerbed_training.run_config import RunConfig
from flowerbed_training.scaffold import SiteControl
from flowerbed_training.site_state import DP_SITES
from flowerbed_training.survey import spec_from_config, standardizer_from_config, summary_reply

# Each mod acts only on the messages meant for it: SecAgg+ protocol / legacy-layout
# messages, messages that carry a central-DP clipping norm, and training messages of a
# site with a state volume (site_state_mod, innermost: it sees the app's own layout).
app = ClientApp(mods=[secagg.secagg_plus_mod, privacy.central_dp_clipping_mod, site_state.site_state_mod])

def _site(context: Context) -> str:
    return str(context.node_config.get("site-name", f"node-{context.node_id}"))


def _device(context: Context) -> torch.device:
    return task.device(str(context.node_config.get("device", "auto")))


def _local_data(run: RunConfig, context: Context, config: ConfigRecord) -> tuple[Dataset, Dataset]:
    """The site's own train/validation split: of its share of built-in data (prepared once per site,
    builtin_cache.py) or of its study data."""
    if run.builtin:
        share = task.builtin_share(run, partition_of(_site(context), config))
        split = builtin_cache.site_split(share, builtin_cache.cache_dir(context.node_config))
        return split.train, split.test
    return task.local_split(task.study_dataset(run, context.node_config), run)


def _prepared(run: RunConfig, context: Context, config: ConfigRecord) -> tuple[Dataset, Dataset]:
    """The site's train/validation data, checked against and standardized like the federation's."""
    train_set, val_set = _local_data(run, context, config)
    check_compatible(_site(context), train_set.spec, config)  # type: ignore[arg-type]
    standardizer = standardizer_from_config(config)
    return standardizer.apply(train_set), standardizer.apply(val_set)


def _model(run: RunConfig, config: ConfigRecord, arrays: ArrayRecord) -> torch.nn.Module:
    model = task.model_for(run, spec_from_config(config))
    task.set_weights(model, from_record(arrays))
    return model


def _reply(message: Message, context: Context, records: Mapping[str, object]) -> Message:
    content = RecordDict({**records, SITE: ConfigRecord({"name": _site(context)})})  # type: ignore[dict-item]
    return Message(content, reply_to=message)


@app.query("site_name")
def name(message: Message, context: Context) -> Message:
    """Who this site is: with built-in data the server assigns the partitions by name and
    describes the shares itself (survey.py), so the site loads nothing."""
    return _reply(message, context, {})


@app.query("data_summary")
def describe(message: Message, context: Context) -> Message:
    """Feature count, classes, image shape and per-feature sums of the site's training split (study data)."""
    run = RunConfig.parse(context.run_config)
    train_set, _ = _local_data(run, context, message.content.config_records.get(CONFIG, ConfigRecord()))
    return summary_reply(message, _site(context), train_set.spec, task.FeatureSums.of(train_set.x))


@app.train()
def train(message: Message, context: Context) -> Message:
    started = time.monotonic()
    run = RunConfig.parse(context.run_config)
    config = message.content.config_records[CONFIG]
    server_round = int(config.get("server-round", 0))  # type: ignore[arg-type]
    task.seed_everything(run.seed + server_round)
    train_set, _ = _prepared(run, context, config)
    model = _model(run, config, message.content.array_records[ARRAYS])
    global_model = task.get_weights(model)
    dev = _device(context)
    train_loader = task.loader(train_set, run.batch_size, shuffle=True, seed=run.seed + server_round)
    optimizer: torch.optim.Optimizer | task.PlainSgd = task.sgd(model, run.lr)
    private = None
    if run.local_dp:
        # Opacus hooks this same model and wraps a torch Optimizer (task.PlainSgd is not one);
        # the optimizer and loader are its DP versions.
        spent_before = _site(context) in [str(s) for s in config.get(DP_SITES, [])]  # type: ignore[union-attr]
        private = privacy.make_private(model, torch.optim.SGD(model.parameters(), lr=run.lr), train_loader, run,
                                       context.state, spent_before=spent_before)
        optimizer, train_loader = private.optimizer, private.loader

    proximal_mu = float(config.get("proximal-mu", 0.0))  # type: ignore[arg-type]  # set by FedProx
    global_params = {k: torch.from_numpy(v).to(dev) for k, v in global_model.items()} if proximal_mu else None
    control = SiteControl.received(message.content, context.state)  # SCAFFOLD only
    stats = task.train(model, train_loader, optimizer, run.local_epochs, dev,
                       proximal_mu=proximal_mu, global_params=global_params,
                       gradient_correction=control.correction(dev) if control else None,
                       max_grad_norm=0.0 if private else run.local_max_grad_norm, amp=run.amp)
    trained = task.get_weights(model)

    metrics = MetricRecord({NUM_EXAMPLES: stats.examples, "train-loss": stats.loss})
    if private is not None:
        metrics["epsilon"] = privacy.epsilon_spent(private, context.state)
    records: dict[str, object] = {ARRAYS: _outgoing(run, trained, global_model, context), METRICS: metrics}
    if control is not None:
        records[CONTROL_DELTA] = control.finish(global_model, trained, stats.steps, run.lr, context.state)
    benchdelay.pad(run.bench_train_seconds, _site(context), started)  # benchmarks only: a slow site's sleep
    return _reply(message, context, records)


def _outgoing(run: RunConfig, trained: dict[str, np.ndarray], global_model: dict[str, np.ndarray],
              context: Context) -> ArrayRecord:
    """The trained model, or its compressed update (trained - global) when the run asks for it."""
    if run.compression == "none":
        return to_record(trained)
    update = {k: trained[k] - global_model[k] for k in trained}
    return compression.encode_update(update, compression.CompressionSettings.of(run), context.state)


@app.evaluate()
def evaluate(message: Message, context: Context) -> Message:
    run = RunConfig.parse(context.run_config)
    config = message.content.config_records[CONFIG]
    _, val_set = _prepared(run, context, config)
    model = _model(run, config, message.content.array_records[ARRAYS])
    loss, accuracy = task.evaluate(model, task.loader(val_set, 256, shuffle=False), _device(context))
    metrics = MetricRecord({NUM_EXAMPLES: len(val_set.y), "eval-loss": loss, "eval-accuracy": accuracy})
    return _reply(message, context, {METRICS: metrics})
