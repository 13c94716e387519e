"""Per-round bookkeeping shared by every training path, and the Message-API strategy wrapper.

`Rounds` is what every path (Message API, SecAgg+) reports to: it opens a round's
`RoundLog`, and at the end of the round evaluates the model on the server's test
set, adds the central-DP epsilon, appends the metrics.jsonl line and writes the
checkpoint. It also tells the sites which state to continue (`site_config`:
the run lineage and the sites that have spent local-DP budget in it). `RoundRecorder` wraps a Flower strategy and fills the log from the
messages, with the other parts named: `Quorum` (minimum answers),
`compression.expand_replies` (decompression), `scoring` (contributions). A resumed
run passes `round_offset` so round numbers, FedAdam's bias correction and the log
carry on.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from logging import INFO
from pathlib import Path

import numpy as np
from flwr.app import ArrayRecord, ConfigRecord, Message, MetricRecord
from flwr.serverapp import Grid
from flwr.serverapp.strategy import Strategy
from flwr.supercore import log

from flowerbed_training import compression
from flowerbed_training.checkpoints import Checkpoint, CheckpointStore
from flowerbed_training.privacy import CentralDpAccountant
from flowerbed_training.protocol import METRICS, SiteNames, from_record, payload_bytes, to_record
from flowerbed_training.quorum import Quorum
from flowerbed_training.round_log import RoundLog, append_metrics, read_metrics
from flowerbed_training.scoring import cosine_contributions, plain_site_models
from flowerbed_training.site_state import DP_SITES, STATE_RUN

Arrays = dict[str, np.ndarray]
CentralEvaluation = Callable[[Arrays], tuple[float, float]]  # model -> (loss, accuracy)


class Rounds:
    """The rounds of one run: their logs, metrics.jsonl and checkpoints in `directory`.

    A resumed run's directory starts with the earlier rounds' lines (run_directory.py):
    they count for the central-DP epsilon and the sites that hold a DP ledger."""

    def __init__(
        self,
        directory: Path,
        checkpoints: CheckpointStore,
        *,
        central_evaluation: CentralEvaluation | None = None,
        round_offset: int = 0,
        central_dp: CentralDpAccountant | None = None,
        lineage: int = 0,
    ) -> None:
        self.directory = directory
        self.checkpoints = checkpoints
        self.central_evaluation = central_evaluation
        self.round_offset = round_offset
        self.central_dp = central_dp
        self.lineage = lineage  # the first run of this chain of resumes: the sites' state key
        earlier = read_metrics(directory)
        self.noised = sum(1 for line in earlier if line["aggregated"])  # aggregates released so far
        self.dp_sites = {site for line in earlier for site, eps in line["epsilon"].items() if eps is not None}
        self.aggregated = 0  # rounds aggregated in this run
        self._current: RoundLog | None = None
        directory.mkdir(parents=True, exist_ok=True)

    def site_config(self) -> dict[str, int | list[str]]:
        """What every train message carries for the sites' state (site_state.py)."""
        return {STATE_RUN: self.lineage, DP_SITES: sorted(self.dp_sites)}

    def begin(self, server_round: int) -> RoundLog:
        """Open round `server_round` of this run (numbered on after a resumed run's rounds)."""
        self._current = RoundLog(round=server_round + self.round_offset)
        return self._current

    @property
    def current(self) -> RoundLog:
        if self._current is None:
            raise RuntimeError("a round's log is used before the round began")
        return self._current

    def evaluate(self, model: Arrays) -> tuple[float, float] | None:
        """(loss, accuracy) on the server's test set; None for study data (it stays at the sites)."""
        return self.central_evaluation(model) if self.central_evaluation else None

    def finish(self, model: Arrays, strategy_state: dict[str, np.ndarray]) -> tuple[float, float] | None:
        """Close the current round: metrics.jsonl line and checkpoint; returns the central evaluation."""
        record = self.current
        self.dp_sites |= {site for site, eps in record.epsilon.items() if eps is not None}
        if record.aggregated:
            self.aggregated += 1
            self.noised += 1
        if self.central_dp is not None:
            record.central_epsilon = self.central_dp.epsilon(self.noised)
        central = self.evaluate(model)
        line = record.line(central)
        append_metrics(self.directory, line)
        self.checkpoints.save(Checkpoint(round=record.round, model=model, strategy_state=strategy_state))
        log(INFO, "Round %d: loss=%s accuracy=%s sites=%s", record.round, line["loss"], line["accuracy"],
            record.sites)
        return central


class RoundRecorder(Strategy):
    """Delegates aggregation to `inner`; adds minimum answers, decompression, bytes, scores, and the log."""

    def __init__(self, inner: Strategy, rounds: Rounds, quorum: Quorum, *,
                 state_of: Callable[[], dict[str, np.ndarray]], site_names: SiteNames | None = None) -> None:
        self.inner = inner
        self.rounds = rounds
        self.quorum = quorum
        # The strategy whose state is checkpointed may sit under wrappers (central DP).
        self.state_of = state_of
        self.site_name = site_names or SiteNames()
        self._global: Arrays = {}

    def configure_train(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        record = self.rounds.begin(server_round)
        self._global = from_record(arrays)
        config = ConfigRecord({**config, **self.rounds.site_config()})
        messages = list(self.inner.configure_train(record.round, arrays, config, grid))
        record.bytes_down = sum(payload_bytes(m) for m in messages)
        return messages

    def aggregate_train(
        self, server_round: int, replies: Iterable[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        record = self.rounds.current
        replies = list(replies)
        answered = [m for m in replies if not m.has_error()]
        record.bytes_up = sum(payload_bytes(m) for m in replies)
        record.sites = sorted(self.site_name(m) for m in answered)
        record.failed = {self.site_name(m): m.error.reason for m in replies if m.has_error()}
        record.epsilon = {self.site_name(m): _epsilon(m) for m in answered}
        if not self.quorum.met(record.round, len(answered)):
            return None, None
        compression.expand_replies(answered, self._global)
        site_models = plain_site_models(answered, self._global, self.site_name)
        arrays, metrics = self.inner.aggregate_train(record.round, replies)
        if arrays is None:
            return None, metrics
        record.aggregated = True
        if metrics is not None and "train-loss" in metrics:
            record.train_loss = float(metrics["train-loss"])  # type: ignore[arg-type]
        # FedAdam/FedYogi's numpy arithmetic promotes float32 to float64 (NEP 50); keep the
        # model's own dtypes so it does not double in size on the wire every round.
        new_model = {k: v.astype(self._global[k].dtype, copy=False) for k, v in from_record(arrays).items()}
        record.contribution = {self.site_name(m): None for m in answered}
        record.contribution.update(cosine_contributions(self._global, site_models, new_model))
        return to_record(new_model), metrics

    def configure_evaluate(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        record = self.rounds.current
        messages = list(self.inner.configure_evaluate(record.round, arrays, config, grid))
        record.eval_bytes_down = sum(payload_bytes(m) for m in messages)
        return messages

    def aggregate_evaluate(self, server_round: int, replies: Iterable[Message]) -> MetricRecord | None:
        record = self.rounds.current
        metrics = self.inner.aggregate_evaluate(record.round, replies)
        if metrics is not None:
            record.federated_loss = _maybe_float(metrics.get("eval-loss"))
            record.federated_accuracy = _maybe_float(metrics.get("eval-accuracy"))
        return metrics

    def end_round(self, server_round: int, arrays: ArrayRecord) -> MetricRecord | None:
        """Flower's `evaluate_fn`: runs after each round (and once before the first)."""
        model = from_record(arrays)
        if server_round == 0:
            central = self.rounds.evaluate(model)
        else:
            central = self.rounds.finish(model, self.state_of())
        return MetricRecord({"loss": central[0], "accuracy": central[1]}) if central else None

    def summary(self) -> None:
        log(INFO, "\t├──> RoundRecorder: artifacts in %s, minimum %d answering sites",
            self.rounds.directory, self.quorum.minimum)
        self.inner.summary()


def _epsilon(message: Message) -> float | None:
    metrics = message.content.metric_records.get(METRICS)
    value = metrics.get("epsilon") if metrics is not None else None
    return float(value) if value is not None else None  # type: ignore[arg-type]


def _maybe_float(value: object) -> float | None:
    return float(value) if isinstance(value, (int, float)) else None
