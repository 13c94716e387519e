"""RoundRecorder: wraps any Flower strategy to make rounds robust and observable.

Per round it measures the bytes actually sent and received, enforces the
minimum number of answering sites (a round with fewer keeps the previous
model), scores each site's contribution, and at the end of the round appends
one line to `metrics.jsonl` and writes a checkpoint. A resumed run passes
`round_offset` so round numbers, FedAdam's bias correction and the log carry on.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from logging import INFO, WARNING
from pathlib import Path

import numpy as np
from flwr.app import ArrayRecord, ConfigRecord, Message, MetricRecord
from flwr.serverapp import Grid
from flwr.serverapp.strategy import Strategy
from flwr.supercore import log

from flowerbed_training.checkpoints import Checkpoint, CheckpointStore
from flowerbed_training import compression
from flowerbed_training.protocol import ARRAYS, METRICS, SiteNames, from_record, payload_bytes, to_record

Arrays = dict[str, np.ndarray]
METRICS_FILE = "metrics.jsonl"
CentralEvaluation = Callable[[Arrays], tuple[float, float]]  # model -> (loss, accuracy)


def flatten(arrays: Arrays) -> np.ndarray:
    return np.concatenate([np.ravel(arrays[k]).astype(np.float64) for k in sorted(arrays)])


def cosine_contributions(global_model: Arrays, site_models: dict[str, Arrays], new_model: Arrays) -> dict[str, float]:
    """Cosine between each site's update (y_i - x) and the aggregate update (x_new - x).

    Near 1: the site pulled the way the federation went; near 0: a free rider
    sending noise or an unchanged model; negative: it pulled against the others."""
    x = flatten(global_model)
    aggregate = flatten(new_model) - x
    scores: dict[str, float] = {}
    for site, model in site_models.items():
        update = flatten(model) - x
        norms = np.linalg.norm(update) * np.linalg.norm(aggregate)
        scores[site] = float(update @ aggregate / norms) if norms > 0 else 0.0
    return scores


@dataclass
class RoundLog:
    """What one round did; becomes one line of metrics.jsonl."""

    round: int
    started: float = field(default_factory=time.perf_counter)
    sites: list[str] = field(default_factory=list)
    failed: dict[str, str] = field(default_factory=dict)
    bytes_down: int = 0
    bytes_up: int = 0
    eval_bytes_down: int = 0
    aggregated: bool = False
    contribution: dict[str, float | None] = field(default_factory=dict)
    epsilon: dict[str, float | None] = field(default_factory=dict)
    train_loss: float | None = None
    federated_loss: float | None = None
    federated_accuracy: float | None = None


class RoundRecorder(Strategy):
    """Delegates aggregation to `inner`; adds minimum-answer checks, bytes, scores, artifacts."""

    def __init__(
        self,
        inner: Strategy,
        artifacts_dir: Path,
        *,
        min_train_sites: int,
        checkpoints: CheckpointStore,
        central_evaluation: CentralEvaluation | None = None,
        round_offset: int = 0,
        state_of: Callable[[], dict[str, np.ndarray]],
        site_names: SiteNames | None = None,
    ) -> None:
        self.inner = inner
        self.artifacts_dir = artifacts_dir
        self.min_train_sites = min_train_sites
        self.checkpoints = checkpoints
        self.central_evaluation = central_evaluation
        self.round_offset = round_offset
        # The strategy whose state is checkpointed may sit under wrappers (central DP).
        self.state_of = state_of
        self.site_name = site_names or SiteNames()
        self.current: RoundLog | None = None
        self._global: Arrays = {}
        artifacts_dir.mkdir(parents=True, exist_ok=True)

    # --- training ---------------------------------------------------------------------

    def configure_train(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        round_number = server_round + self.round_offset
        self.current = RoundLog(round=round_number)
        self._global = from_record(arrays)
        messages = list(self.inner.configure_train(round_number, arrays, config, grid))
        self.current.bytes_down = sum(payload_bytes(m) for m in messages)
        return messages

    def aggregate_train(
        self, server_round: int, replies: Iterable[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        record = self._round()
        replies = list(replies)
        answered = [m for m in replies if not m.has_error()]
        record.bytes_up = sum(payload_bytes(m) for m in replies)
        record.sites = sorted(self.site_name(m) for m in answered)
        record.failed = {self.site_name(m): m.error.reason for m in replies if m.has_error()}
        record.epsilon = {self.site_name(m): _epsilon(m) for m in answered}
        if len(answered) < self.min_train_sites:
            log(WARNING, "Round %d: %d site(s) answered, %d required; keeping the previous model",
                record.round, len(answered), self.min_train_sites)
            return None, None
        for message in answered:
            _decompress(message, self._global)
        # Before aggregating: some Flower strategies (FedMedian) empty the replies' records.
        site_models = self._site_models(answered)
        arrays, metrics = self.inner.aggregate_train(record.round, replies)
        if arrays is None:
            return None, metrics
        record.aggregated = True
        if metrics is not None and "train-loss" in metrics:
            record.train_loss = float(metrics["train-loss"])  # type: ignore[arg-type]
        # FedAdam/FedYogi's numpy arithmetic promotes float32 to float64 (NEP 50); keep the
        # model's own dtypes so it does not double in size on the wire every round.
        new_model = {k: v.astype(self._global[k].dtype, copy=False) for k, v in from_record(arrays).items()}
        scores: dict[str, float | None] = {self.site_name(m): None for m in answered}
        scores.update(cosine_contributions(self._global, site_models, new_model))
        record.contribution = scores
        return to_record(new_model), metrics

    def _site_models(self, answered: list[Message]) -> dict[str, Arrays]:
        site_models: dict[str, Arrays] = {}
        for message in answered:
            model = from_record(message.content.array_records[ARRAYS])
            # A site whose update is not a plain model (masked for secure aggregation) gets no score.
            if model.keys() == self._global.keys():
                site_models[self.site_name(message)] = model
        return site_models

    # --- evaluation ---------------------------------------------------------------------

    def configure_evaluate(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        messages = list(self.inner.configure_evaluate(self._round().round, arrays, config, grid))
        self._round().eval_bytes_down = sum(payload_bytes(m) for m in messages)
        return messages

    def aggregate_evaluate(self, server_round: int, replies: Iterable[Message]) -> MetricRecord | None:
        metrics = self.inner.aggregate_evaluate(self._round().round, replies)
        if metrics is not None:
            self._round().federated_loss = _maybe_float(metrics.get("eval-loss"))
            self._round().federated_accuracy = _maybe_float(metrics.get("eval-accuracy"))
        return metrics

    def end_round(self, server_round: int, arrays: ArrayRecord) -> MetricRecord | None:
        """Flower's `evaluate_fn`: runs after each round (and once before the first)."""
        model = from_record(arrays)
        central = self.central_evaluation(model) if self.central_evaluation else None
        if server_round == 0:
            return _metric_record(central)
        record = self._round()
        loss, accuracy = central if central else (record.federated_loss, record.federated_accuracy)
        line = {
            "round": record.round,
            "loss": loss,
            "accuracy": accuracy,
            "evaluated_on": "server-test-set" if central else "sites",
            "sites": record.sites,
            "failed": record.failed,
            "aggregated": record.aggregated,
            "bytes_up": record.bytes_up,
            "bytes_down": record.bytes_down,
            "eval_bytes_down": record.eval_bytes_down,
            "seconds": round(time.perf_counter() - record.started, 4),
            "contribution": dict(sorted(record.contribution.items())),
            "epsilon": dict(sorted(record.epsilon.items())),
            "train_loss": record.train_loss,
            "federated_loss": record.federated_loss,
            "federated_accuracy": record.federated_accuracy,
        }
        append_metrics(self.artifacts_dir, line)
        self.checkpoints.save(Checkpoint(round=record.round, model=model, strategy_state=self.state_of()))
        log(INFO, "Round %d: loss=%s accuracy=%s sites=%s", record.round, loss, accuracy, record.sites)
        return _metric_record(central)

    def _round(self) -> RoundLog:
        if self.current is None:
            raise RuntimeError("configure_train must run before the rest of a round")
        return self.current

    def summary(self) -> None:
        log(INFO, "\t├──> RoundRecorder: artifacts in %s, minimum %d answering sites",
            self.artifacts_dir, self.min_train_sites)
        self.inner.summary()


def append_metrics(artifacts_dir: Path, line: dict) -> None:
    """One JSON object per round in `<artifacts-dir>/metrics.jsonl` (the brief's contract)."""
    with (artifacts_dir / METRICS_FILE).open("a") as metrics_file:
        metrics_file.write(json.dumps(line) + "\n")


def read_metrics(artifacts_dir: Path) -> list[dict]:
    path = artifacts_dir / METRICS_FILE
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def _decompress(message: Message, global_model: Arrays) -> None:
    """Turn a compressed update back into the full model the strategies average (after bytes
    were counted on the compressed payload)."""
    record = message.content.array_records[ARRAYS]
    if compression.is_compressed(record):
        update = compression.decode_update(record, like=global_model)
        message.content[ARRAYS] = to_record({k: global_model[k] + update[k] for k in global_model})


def _epsilon(message: Message) -> float | None:
    metrics = message.content.metric_records.get(METRICS)
    value = metrics.get("epsilon") if metrics is not None else None
    return float(value) if value is not None else None  # type: ignore[arg-type]


def _maybe_float(value: object) -> float | None:
    return float(value) if isinstance(value, (int, float)) else None


def _metric_record(central: tuple[float, float] | None) -> MetricRecord | None:
    return MetricRecord({"loss": central[0], "accuracy": central[1]}) if central else None
