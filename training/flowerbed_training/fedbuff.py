"""FedBuff: buffered asynchronous aggregation (run config `strategy = "fedbuff"`).

Nguyen, Malik, Zhan, Yousefpour, Rabbat, Malek, Huba, "Federated Learning with
Buffered Asynchronous Aggregation", AISTATS 2022 (arXiv:2106.06639),
Algorithm 1, on Flower's Message API (`Grid.push_messages` / `pull_messages`)
instead of Flower's synchronous strategy loop:

- every connected site is kept busy: it gets the current global model x_t at
  once, and again as soon as it replies (a slow site never holds the others
  back, and the fast sites never wait for it);
- a reply from site i trained from version tau_i, arriving at version t, has
  staleness t - tau_i. Replies staler than `async-max-staleness` are dropped;
  the others go into the buffer with their update Delta_i = y_i - x_{tau_i}
  (a compressed update is decoded against x_{tau_i}, the model it was trained
  from);
- every `async-buffer-size` (K) replies the server steps

      x_{t+1} = x_t + async-server-lr * sum_i p_i s(t - tau_i) Delta_i

  with s the staleness function (staleness.py: constant, polynomial, hinge)
  and p_i = n_i / sum_j n_j over the buffer's training-example counts. The
  paper averages the buffer uniformly (p_i = 1/K): the same when the sites
  hold as many examples; weighting by examples matches the app's FedAvg and
  SCAFFOLD (training/README.md) under label skew. As in the paper, the weights
  s are not renormalised: stale updates make a shorter step;
- the run ends after `num-server-rounds` server updates in total (also when
  resuming) or when `async-time-budget` seconds (> 0) have passed.

Sites that answer with an error are listed under `failed` and asked again at
the next server update; a site that has not answered within `round-timeout`
seconds is asked again with the current model (its late reply is ignored). If
every site failed and none is busy, the run stops with the sites' errors.

Per server update one line in metrics.jsonl (recording.append_metrics), a
checkpoint (the version is the checkpoint's round; FedBuff keeps no other
server state, and refuses to resume a checkpoint that holds a synchronous
strategy's) and contribution scores (recording.cosine_contributions, one per
reply, averaged per site). Accuracy per update comes from the global held-out
test set (built-in data); with study data it is null (no federated evaluation
while the sites are busy training).
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from logging import INFO, WARNING
from pathlib import Path
from typing import Any

import numpy as np
from flwr.app import ArrayRecord, ConfigRecord, Context, Message, MessageType, RecordDict
from flwr.serverapp import Grid
from flwr.supercore import log

from flowerbed_training import compression, task
from flowerbed_training.checkpoints import Checkpoint, CheckpointStore
from flowerbed_training.protocol import (
    ARRAYS,
    CONFIG,
    METRICS,
    NUM_EXAMPLES,
    SiteNames,
    from_record,
    payload_bytes,
    to_record,
)
from flowerbed_training.recording import CentralEvaluation, append_metrics, cosine_contributions
from flowerbed_training.settings import ServerSettings, SettingsError, _get
from flowerbed_training.staleness import FUNCTIONS, Staleness
from flowerbed_training.survey import FederationData

Arrays = dict[str, np.ndarray]
# How often the server asks the SuperLink for replies while none has arrived.
POLL_SECONDS = 0.1
# Train-config key: the global model version a task trains from (its "server-round" is the task's
# own sequence number, so a site that trains twice from one version shuffles its data differently).
MODEL_VERSION = "model-version"

# (key, default, the value fedbuff needs, why): settings that only work with synchronous rounds.
_SYNCHRONOUS_ONLY: tuple[tuple[str, Any, Any, str], ...] = (
    ("secagg", False, False, "SecAgg+ unmasks the sum of one synchronous round's replies"),
    ("central-dp", "off", "off", "Flower's central-DP wrappers clip and noise one synchronous round's aggregate"),
    ("local-dp", False, False, "the local-DP budget is calibrated for num-server-rounds trainings per site, "
     "and under fedbuff a fast site trains far more often"),
    ("fraction-train", 1.0, 1.0, "fedbuff keeps every connected site busy"),
)


@dataclass(frozen=True)
class AsyncSettings:
    """Run config `async-*` (training/README.md); valid only with strategy fedbuff."""

    buffer_size: int  # K: replies per server update
    staleness: Staleness
    max_staleness: int  # replies staler than this many versions are dropped
    server_lr: float  # eta_g
    time_budget: float  # seconds from the first task; 0: no budget

    @staticmethod
    def from_run_config(run_config: Mapping[str, Any]) -> AsyncSettings:
        """Raises SettingsError naming the key(s) for a bad value or a combination that cannot work."""
        for key, default, needed, why in _SYNCHRONOUS_ONLY:
            value = _get(run_config, key, type(default), default)
            if value != needed:
                raise SettingsError(f"run config {key} = {value!r} cannot be combined with strategy = 'fedbuff': "
                                    f"{why}; set {key} = {needed!r} or choose a synchronous strategy")
        settings = AsyncSettings(
            buffer_size=_get(run_config, "async-buffer-size", int, 3),
            staleness=Staleness(
                function=_get(run_config, "async-staleness", str, "polynomial"),
                polynomial_a=_get(run_config, "async-polynomial-a", float, 0.5),
                hinge_a=_get(run_config, "async-hinge-a", float, 10.0),
                hinge_b=_get(run_config, "async-hinge-b", int, 4),
            ),
            max_staleness=_get(run_config, "async-max-staleness", int, 10),
            server_lr=_get(run_config, "async-server-lr", float, 1.0),
            time_budget=_get(run_config, "async-time-budget", float, 0.0),
        )
        s = settings.staleness
        for key, value, ok, rule in (
            ("async-buffer-size", settings.buffer_size, settings.buffer_size >= 1, "must be >= 1"),
            ("async-staleness", s.function, s.function in FUNCTIONS, f"must be one of {', '.join(FUNCTIONS)}"),
            ("async-polynomial-a", s.polynomial_a, s.polynomial_a > 0, "must be > 0"),
            ("async-hinge-a", s.hinge_a, s.hinge_a > 0, "must be > 0"),
            ("async-hinge-b", s.hinge_b, s.hinge_b >= 0, "must be >= 0"),
            ("async-max-staleness", settings.max_staleness, settings.max_staleness >= 0, "must be >= 0"),
            ("async-server-lr", settings.server_lr, settings.server_lr > 0, "must be > 0"),
            ("async-time-budget", settings.time_budget, settings.time_budget >= 0, "must be >= 0 seconds (0: none)"),
        ):
            if not ok:
                raise SettingsError(f"run config {key}: {value!r} {rule}")
        return settings


class FederationStalled(RuntimeError):
    """Every site failed since the last server update and none is still training."""


@dataclass(frozen=True)
class BufferedReply:
    """One site's reply in the buffer."""

    site: str
    staleness: int  # server updates since the version it trained from
    weight: float  # s(staleness)
    examples: int  # n_i: the site's training examples
    update: Arrays  # Delta_i = y_i - x_tau, same keys and shapes as the model
    train_loss: float | None


def buffered_step(model: Arrays, buffer: list[BufferedReply], server_lr: float) -> Arrays:
    """x + server_lr * sum_i p_i s_i Delta_i with p_i = n_i / sum_j n_j; keeps each array's dtype."""
    total = float(sum(reply.examples for reply in buffer))
    step = {k: sum((reply.examples / total) * reply.weight * reply.update[k].astype(np.float64)
                   for reply in buffer) for k in model}
    return {k: (model[k] + server_lr * step[k]).astype(model[k].dtype) for k in model}


@dataclass(frozen=True)
class _Task:
    node: int
    version: int
    sent: float  # time.monotonic()


@dataclass
class _Interval:
    """What happened since the last server update; becomes one line of metrics.jsonl."""

    started: float
    dropped: list[dict[str, Any]] = field(default_factory=list)
    failed: dict[str, str] = field(default_factory=dict)
    bytes_up: int = 0
    bytes_down: int = 0


class FedBuffServer:
    """The asynchronous loop: keep every site busy, step every K replies, record each step."""

    def __init__(self, grid: Grid, settings: AsyncSettings, *, model: Arrays, version: int, num_updates: int,
                 round_timeout: float, train_config: Mapping[str, Any], artifacts_dir: Path,
                 checkpoints: CheckpointStore, central_evaluation: CentralEvaluation | None,
                 site_names: SiteNames) -> None:
        self.grid = grid
        self.settings = settings
        self.model = model
        self.version = version
        self.num_updates = num_updates
        self.round_timeout = round_timeout
        self.train_config = dict(train_config)
        self.artifacts_dir = artifacts_dir
        self.checkpoints = checkpoints
        self.central_evaluation = central_evaluation
        self.site_name = site_names
        self.versions: dict[int, Arrays] = {version: model}  # models that tasks in flight trained from
        self.in_flight: dict[str, _Task] = {}  # message id -> task
        self.resting: set[int] = set()  # failed since the last update: asked again at the next one
        self.buffer: list[BufferedReply] = []
        self.tasks = 0
        self.started = time.monotonic()
        self.interval = _Interval(self.started)

    def run(self) -> Arrays:
        """Run until `num_updates` versions exist or the time budget is spent; return the model."""
        budget = self.settings.time_budget
        while self.version < self.num_updates:
            if budget and time.monotonic() - self.started >= budget:
                log(INFO, "fedbuff: async-time-budget of %gs spent after server update %d", budget, self.version)
                break
            self._dispatch()
            replies = list(self.grid.pull_messages(list(self.in_flight)))
            for reply in replies:
                if self.version < self.num_updates:
                    self._receive(reply)
            if not replies:
                if not self.in_flight and self.resting:
                    raise FederationStalled(f"fedbuff: every site failed since server update {self.version}: "
                                            + "; ".join(f"{s}: {r}" for s, r in sorted(self.interval.failed.items())))
                time.sleep(POLL_SECONDS)
        if self.in_flight:
            log(INFO, "fedbuff: done; %d task(s) still running are not waited for", len(self.in_flight))
        return self.model

    def _dispatch(self) -> None:
        """Give every connected site that is not busy (or resting after a failure) the current model."""
        now = time.monotonic()
        for message_id, job in list(self.in_flight.items()):
            if now - job.sent > self.round_timeout:
                del self.in_flight[message_id]
                site = self.site_name.of_node(job.node)
                self.interval.failed[site] = f"no reply within round-timeout {self.round_timeout:g}s; asked again"
                log(WARNING, "fedbuff: %s", f"{site}: {self.interval.failed[site]}")
        busy = {job.node for job in self.in_flight.values()}
        idle = [node for node in self.grid.get_node_ids() if node not in busy and node not in self.resting]
        if not idle:
            return
        arrays = to_record(self.model)
        messages = []
        for node in idle:
            self.tasks += 1
            config = ConfigRecord({**self.train_config, "server-round": self.tasks, MODEL_VERSION: self.version})
            messages.append(Message(RecordDict({ARRAYS: arrays, CONFIG: config}), dst_node_id=node,
                                    message_type=MessageType.TRAIN, group_id=str(self.version)))
        message_ids = list(self.grid.push_messages(messages))
        for index, message in enumerate(messages):
            node = message.metadata.dst_node_id
            # HttpGrid answers None for a message the SuperLink refused, and nothing at all when
            # the request was too large: such a site rests until the next server update.
            message_id = message_ids[index] if index < len(message_ids) else None
            if not message_id:
                self.resting.add(node)
                self.interval.failed[self.site_name.of_node(node)] = "the SuperLink did not accept its task"
                continue
            self.in_flight[message_id] = _Task(node, self.version, now)
            self.interval.bytes_down += payload_bytes(message)

    def _receive(self, reply: Message) -> None:
        job = self.in_flight.pop(reply.metadata.reply_to_message_id)
        site = self.site_name(reply)
        self.interval.bytes_up += payload_bytes(reply)
        if reply.has_error():
            self.interval.failed[site] = reply.error.reason
            self.resting.add(job.node)
            log(WARNING, "fedbuff: %s failed: %s", site, reply.error.reason)
            return
        staleness = self.version - job.version
        if staleness > self.settings.max_staleness:
            self.interval.dropped.append({"site": site, "staleness": staleness})
            return
        metrics = reply.content.metric_records[METRICS]
        loss = metrics.get("train-loss")
        self.buffer.append(BufferedReply(
            site=site, staleness=staleness, weight=self.settings.staleness(staleness),
            examples=int(metrics[NUM_EXAMPLES]),  # type: ignore[arg-type]
            update=_update(reply.content.array_records[ARRAYS], self.versions[job.version]),
            train_loss=float(loss) if isinstance(loss, (int, float)) else None,
        ))
        if len(self.buffer) >= self.settings.buffer_size:
            self._step()

    def _step(self) -> None:
        new_model = buffered_step(self.model, self.buffer, self.settings.server_lr)
        applied = {str(i): {k: self.model[k] + r.update[k] for k in self.model} for i, r in enumerate(self.buffer)}
        scores = cosine_contributions(self.model, applied, new_model)
        self.version += 1
        self.model = new_model
        self.versions[self.version] = new_model
        still_used = {job.version for job in self.in_flight.values()} | {self.version}
        self.versions = {v: m for v, m in self.versions.items() if v in still_used}
        self._record(scores)
        self.checkpoints.save(Checkpoint(round=self.version, model=new_model, strategy_state={}))
        self.buffer = []
        self.resting.clear()
        self.interval = _Interval(time.monotonic())

    def _record(self, scores: dict[str, float]) -> None:
        central = self.central_evaluation(self.model) if self.central_evaluation else None
        loss, accuracy = central if central else (None, None)
        per_site: dict[str, list[float]] = {}
        for index, reply in enumerate(self.buffer):
            per_site.setdefault(reply.site, []).append(scores[str(index)])
        losses = [(r.train_loss, r.examples) for r in self.buffer if r.train_loss is not None]
        now = time.monotonic()
        line = {
            "round": self.version,  # federate and the benches read rounds; here one round = one server update
            "version": self.version,
            "loss": loss,
            "accuracy": accuracy,
            "evaluated_on": "server-test-set" if central else None,
            "sites": sorted(per_site),
            "replies": [{"site": r.site, "staleness": r.staleness, "weight": r.weight, "examples": r.examples,
                         "contribution": scores[str(i)]} for i, r in enumerate(self.buffer)],
            "dropped": self.interval.dropped,
            "failed": self.interval.failed,
            "aggregated": True,
            "bytes_up": self.interval.bytes_up,
            "bytes_down": self.interval.bytes_down,
            "eval_bytes_down": 0,
            "seconds": round(now - self.interval.started, 4),
            "elapsed": round(now - self.started, 4),
            "contribution": {site: float(np.mean(values)) for site, values in sorted(per_site.items())},
            "train_loss": (sum(l * n for l, n in losses) / sum(n for _, n in losses)) if losses else None,
        }
        append_metrics(self.artifacts_dir, line)
        log(INFO, "fedbuff: version %d accuracy=%s replies=%s", self.version, accuracy,
            [(r.site, r.staleness) for r in self.buffer])


def _update(record: ArrayRecord, base: Arrays) -> Arrays:
    """Delta = y - x_tau from a reply's arrays (the trained model, or its compressed update)."""
    if compression.is_compressed(record):
        return compression.decode_update(record, like=base)
    trained = from_record(record)
    return {k: trained[k] - base[k] for k in base}


def run(grid: Grid, context: Context, settings: ServerSettings, async_settings: AsyncSettings,
        federation: FederationData, central_evaluation: CentralEvaluation | None) -> Arrays:
    """FedBuff from a fresh model or, with `resume`, from the latest checkpoint; returns the final model."""
    settings.artifacts_dir.mkdir(parents=True, exist_ok=True)
    checkpoints = CheckpointStore(settings.artifacts_dir, settings.checkpoint_keep)
    latest = checkpoints.latest() if settings.resume else None
    if latest is not None and latest.strategy_state:
        groups = sorted({key.split("/")[0] for key in latest.strategy_state})
        raise SettingsError(
            f"run config resume: the latest checkpoint in {checkpoints.directory} (round {latest.round}) holds "
            f"server state of a synchronous strategy ({', '.join(groups)}: SCAFFOLD's control variate or "
            "FedAdam/FedYogi's moments) that strategy = 'fedbuff' cannot continue; resume with the strategy "
            "that wrote it, or start in a new artifacts-dir")
    model, version = (latest.model, latest.round) if latest is not None else (
        task.get_weights(task.model_for(context.run_config, federation.spec)), 0)
    if latest is not None:
        log(INFO, "fedbuff: resuming after server update %d from %s", version, checkpoints.directory)
    server = FedBuffServer(
        grid, async_settings, model=model, version=version, num_updates=settings.num_rounds,
        round_timeout=settings.round_timeout, train_config=federation.config(),
        artifacts_dir=settings.artifacts_dir, checkpoints=checkpoints, central_evaluation=central_evaluation,
        site_names=SiteNames(federation.names),
    )
    return server.run()
