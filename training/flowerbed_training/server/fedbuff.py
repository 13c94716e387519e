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

The run config's rules for it (which keys fedbuff refuses) are in run_config.py;
server/app.py's training_path chooses this path up front, like the other two.

Sites that answer with an error are listed under `failed` and asked again at
the next server update; a site that has not answered within `round-timeout`
seconds is asked again with the current model (its late reply is ignored). If
every site failed and none is busy, the run stops with the sites' errors.

Each server update is reported like a round, through the job's `Rounds`
(rounds.py: the buffer's replies are the update's answers): one metrics.jsonl
line in the run's directory (round_log.py, with fedbuff's `version`, `replies`,
`dropped` and `elapsed`), a checkpoint (the version is the checkpoint's round;
FedBuff keeps no other server state, and refuses to resume a run whose
checkpoint holds a synchronous strategy's) and contribution scores (scoring.py,
one per reply, averaged per site). Train messages carry `Rounds.site_config()`,
so site state (client/site_state.py: the top-k residual) works as in the
synchronous paths. Accuracy per update comes from the
global held-out test set (built-in data); with study data it is null (no
federated evaluation while the sites are busy training).
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass
from logging import INFO, WARNING
from typing import Any

import numpy as np
from flwr.app import ArrayRecord, ConfigRecord, Message, MessageType, RecordDict
from flwr.serverapp import Grid
from flwr.supercore import log

from flowerbed_training.common.compression import decode_update, is_compressed
from flowerbed_training.common.protocol import ARRAYS, CONFIG, SERVER_ROUND, from_record, to_record
from flowerbed_training.common.run_config import RunConfig, RunConfigError
from flowerbed_training.server.grid_polling import POLL_SECONDS
from flowerbed_training.server.replies import SiteNames, SiteReply, payload_bytes
from flowerbed_training.server.rounds import Rounds
from flowerbed_training.server.scoring import cosine_contributions
from flowerbed_training.server.staleness import Staleness
from flowerbed_training.server.training_job import TrainingJob

Arrays = dict[str, np.ndarray]


class FederationStalled(RuntimeError):
    """Every site failed since the last server update and none is still training."""


@dataclass(frozen=True)
class BufferedReply:
    """One site's reply in the buffer."""

    reply: SiteReply  # who, n_i (its training examples) and its metrics
    staleness: int  # server updates since the version it trained from
    weight: float  # s(staleness)
    update: Arrays  # Delta_i = y_i - x_tau, same keys and shapes as the model


def buffered_step(model: Arrays, buffer: list[BufferedReply], server_lr: float) -> Arrays:
    """x + server_lr * sum_i p_i s_i Delta_i with p_i = n_i / sum_j n_j; keeps each array's dtype."""
    total = float(sum(buffered.reply.examples for buffered in buffer))
    step = {k: sum((buffered.reply.examples / total) * buffered.weight * buffered.update[k].astype(np.float64)
                   for buffered in buffer) for k in model}
    return {k: (model[k] + server_lr * step[k]).astype(model[k].dtype) for k in model}


@dataclass(frozen=True)
class _Task:
    node: int
    version: int
    sent: float  # time.perf_counter()


class FedBuffServer:
    """The asynchronous loop: keep every site busy, step every K replies, report each step to `rounds`.

    Versions count the server updates of this run (0: the model it starts from); `rounds`
    numbers them on after a resumed run's."""

    def __init__(self, grid: Grid, config: RunConfig, rounds: Rounds, *, model: Arrays, num_updates: int,
                 train_config: Mapping[str, Any], site_names: SiteNames) -> None:
        self.grid = grid
        self.config = config
        self.staleness = Staleness.of(config)
        self.rounds = rounds
        self.model = model
        self.version = 0
        self.num_updates = num_updates
        self.train_config = {**train_config, **rounds.site_config()}
        self.site_name = site_names
        self.versions: dict[int, Arrays] = {0: model}  # models that tasks in flight trained from
        self.in_flight: dict[str, _Task] = {}  # message id -> task
        self.resting: set[int] = set()  # failed since the last update: asked again at the next one
        self.buffer: list[BufferedReply] = []
        self.tasks = 0
        self.started = time.perf_counter()
        # What happens until the next server update goes into that update's round (metrics line);
        # `failed` is reported with the buffer's replies, `dropped` is fedbuff's own field.
        self.record = rounds.begin(self.version + 1)
        self.failed: dict[str, str] = {}
        self.dropped: list[dict[str, Any]] = []

    def run(self) -> Arrays:
        """Run until `num_updates` versions exist or the time budget is spent; return the model."""
        budget = self.config.async_time_budget
        while self.version < self.num_updates:
            if budget and time.perf_counter() - self.started >= budget:
                log(INFO, "fedbuff: async-time-budget of %gs spent after %d server update(s)", budget, self.version)
                break
            self._dispatch()
            replies = list(self.grid.pull_messages(list(self.in_flight)))
            for reply in replies:
                if self.version < self.num_updates:
                    self._receive(reply)
            if not replies:
                if not self.in_flight and self.resting:
                    raise FederationStalled(f"fedbuff: every site failed since server update {self.version}: "
                                            + "; ".join(f"{s}: {r}" for s, r in sorted(self.failed.items())))
                time.sleep(POLL_SECONDS)
        if self.in_flight:
            log(INFO, "fedbuff: done; %d task(s) still running are not waited for", len(self.in_flight))
        return self.model

    def _dispatch(self) -> None:
        """Give every connected site that is not busy (or resting after a failure) the current model."""
        now = time.perf_counter()
        timeout = self.config.round_timeout
        for message_id, job in list(self.in_flight.items()):
            if now - job.sent > timeout:
                del self.in_flight[message_id]
                site = self.site_name.named(job.node)
                self.failed[site] = f"no reply within round-timeout {timeout:g}s; asked again"
                log(WARNING, "fedbuff: %s", f"{site}: {self.failed[site]}")
        busy = {job.node for job in self.in_flight.values()}
        idle = [node for node in self.grid.get_node_ids() if node not in busy and node not in self.resting]
        if not idle:
            return
        arrays = to_record(self.model)
        messages = []
        for node in idle:
            self.tasks += 1
            # "server-round" is the task's own sequence number, so a site that trains twice from one
            # version shuffles its data differently; the version a task trains from is in _Task.
            config = ConfigRecord({**self.train_config, SERVER_ROUND: self.tasks})
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
                self.failed[self.site_name.named(node)] = "the SuperLink did not accept its task"
                continue
            self.in_flight[message_id] = _Task(node, self.version, now)
            self.record.bytes_down += payload_bytes(message)

    def _receive(self, reply: Message) -> None:
        job = self.in_flight.pop(reply.metadata.reply_to_message_id)
        self.record.bytes_up += payload_bytes(reply)
        if reply.has_error():
            site = self.site_name(reply)
            self.failed[site] = reply.error.reason
            self.resting.add(job.node)
            log(WARNING, "fedbuff: %s failed: %s", site, reply.error.reason)
            return
        answer = SiteReply.of(reply, self.site_name)
        staleness = self.version - job.version
        if staleness > self.config.async_max_staleness:
            self.dropped.append({"site": answer.site, "staleness": staleness})
            return
        self.buffer.append(BufferedReply(
            reply=answer, staleness=staleness, weight=self.staleness(staleness),
            update=_update(reply.content.array_records[ARRAYS], self.versions[job.version]),
        ))
        if len(self.buffer) >= self.config.async_buffer_size:
            self._step()

    def _step(self) -> None:
        new_model = buffered_step(self.model, self.buffer, self.config.async_server_lr)
        applied = {str(i): {k: self.model[k] + r.update[k] for k in self.model} for i, r in enumerate(self.buffer)}
        scores = cosine_contributions(self.model, applied, new_model)
        self.version += 1
        self.model = new_model
        self.versions[self.version] = new_model
        still_used = {job.version for job in self.in_flight.values()} | {self.version}
        self.versions = {v: m for v, m in self.versions.items() if v in still_used}
        self._report(scores)
        self.buffer = []
        self.resting.clear()
        self.failed = {}
        self.dropped = []
        self.record = self.rounds.begin(self.version + 1)

    def _report(self, scores: dict[str, float]) -> None:
        """The update as a round of `rounds`: the buffer's replies as its answers, its metrics line (with
        fedbuff's own fields) and checkpoint."""
        replies = [buffered.reply for buffered in self.buffer]
        self.rounds.trained(replies, self.failed, minimum=self.config.async_buffer_size)
        self.rounds.aggregated((reply.site, scores[str(i)]) for i, reply in enumerate(replies))
        self.record.asynchronous = {
            "version": self.record.round,
            "replies": [{"site": b.reply.site, "staleness": b.staleness, "weight": b.weight,
                         "examples": b.reply.examples, "contribution": scores[str(i)]}
                        for i, b in enumerate(self.buffer)],
            "dropped": self.dropped,
            "elapsed": round(time.perf_counter() - self.started, 4),
        }
        self.rounds.finish(self.model, strategy_state={})


def _update(record: ArrayRecord, base: Arrays) -> Arrays:
    """Delta = y - x_tau from a reply's arrays (the trained model, or its compressed update)."""
    if is_compressed(record):
        return decode_update(record, like=base)
    trained = from_record(record)
    return {k: trained[k] - base[k] for k in base}


def run_rounds(job: TrainingJob) -> Arrays:
    """The FedBuff training path: the job's remaining server updates from its start; returns the final model."""
    if job.start.strategy_state:
        groups = sorted({key.split("/")[0] for key in job.start.strategy_state})
        raise RunConfigError(
            f"run config resume: {job.config.resume!r}: its checkpoint (round {job.start.round}) holds server "
            f"state of a synchronous strategy ({', '.join(groups)}: SCAFFOLD's control variate or FedAdam/FedYogi's "
            f"moments) that strategy {job.config.strategy!r} cannot continue; resume with the strategy that "
            "wrote it, or start a fresh run")
    server = FedBuffServer(job.grid, job.config, job.rounds, model=job.start.model, num_updates=job.remaining,
                           train_config=job.federation.config(), site_names=job.site_names)
    return server.run()
