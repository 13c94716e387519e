"""The round bookkeeper: every training path (Message API, SecAgg+, FedBuff) reports its rounds here.

A round (for FedBuff: a server update) is reported in one order, by every path:

    rounds.begin(n)                       open its RoundLog
    rounds.trained(replies, failed, min)  who answered and who failed: the one quorum check, the one
                                          site naming (replies.SiteNames), the one example-weighted mean
    rounds.aggregated(scores)             the model moved: per-site contribution scores (mean per site)
    rounds.evaluated(replies)             the sites' own validation numbers, when they evaluated
    rounds.finish(model, state)           evaluate on the server's test set, add the central-DP epsilon,
                                          append the metrics.jsonl line, write the checkpoint

The paths count their bytes into the open RoundLog (`current`) themselves, as each sees
its traffic differently. `Rounds` also tells the sites which state to continue
(`site_config`: the run lineage and the sites that have spent local-DP budget in it). A
resumed run passes `round_offset` so round numbers, FedAdam's bias correction and the
log carry on.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from logging import INFO, WARNING
from pathlib import Path

import numpy as np
from flwr.supercore import log

from flowerbed_training.common.protocol import DP_SITES, EPSILON, EVAL_ACCURACY, EVAL_LOSS, STATE_RUN, TRAIN_LOSS
from flowerbed_training.server.checkpoints import Checkpoint, CheckpointStore
from flowerbed_training.server.privacy import CentralDpAccountant
from flowerbed_training.server.replies import SiteReply
from flowerbed_training.server.round_log import RoundLog, append_metrics, read_metrics

Arrays = dict[str, np.ndarray]
CentralEvaluation = Callable[[Arrays], tuple[float, float]]  # model -> (loss, accuracy)


def weighted_mean(replies: Iterable[SiteReply], key: str) -> float | None:
    """The example-weighted mean of metric `key` over the replies that carry it; None when none does.

    Summed as Flower's strategies aggregate a MetricRecord (flwr.serverapp.strategy.strategy_utils.
    aggregate_metricrecords: sum of value * n_i / n), so a Message-API round's figure is Flower's own."""
    values = [(reply.examples, value) for reply in replies if (value := reply.number(key)) is not None]
    total = sum(n for n, _ in values)
    return float(sum(value * (n / total) for n, value in values)) if total else None


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
        self.aggregated_rounds = 0  # rounds aggregated in this run
        self._current: RoundLog | None = None
        directory.mkdir(parents=True, exist_ok=True)

    def site_config(self) -> dict[str, int | list[str]]:
        """What every train message carries for the sites' state (client/site_state.py)."""
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

    def trained(self, replies: Sequence[SiteReply], failed: Mapping[str, str], *, minimum: int) -> bool:
        """Record the current round's training answers (`failed`: site -> error reason); True when at
        least `minimum` sites answered (the quorum), else the round keeps the previous model."""
        record = self.current
        record.sites = sorted({reply.site for reply in replies})
        record.failed = dict(failed)
        record.epsilon = {reply.site: reply.number(EPSILON) for reply in replies}
        record.train_loss = weighted_mean(replies, TRAIN_LOSS)
        if len(replies) >= minimum:
            return True
        log(WARNING, "Round %d: %d site(s) answered, %d required; keeping the previous model",
            record.round, len(replies), minimum)
        return False

    def aggregated(self, scores: Iterable[tuple[str, float | None]]) -> None:
        """The current round moved the model; `scores`: (site, contribution) per reply, None where an
        update cannot be scored (scoring.py). A site's contribution is the mean of its scores."""
        per_site: dict[str, list[float]] = {}
        for site, score in scores:
            per_site.setdefault(site, [])
            if score is not None:
                per_site[site].append(score)
        record = self.current
        record.aggregated = True
        record.contribution = {site: float(np.mean(values)) if values else None for site, values in per_site.items()}

    def evaluated(self, replies: Sequence[SiteReply]) -> None:
        """The sites' federated evaluation of the current round (example-weighted)."""
        record = self.current
        record.federated_loss = weighted_mean(replies, EVAL_LOSS)
        record.federated_accuracy = weighted_mean(replies, EVAL_ACCURACY)

    def evaluate(self, model: Arrays) -> tuple[float, float] | None:
        """(loss, accuracy) on the server's test set; None for study data (it stays at the sites)."""
        return self.central_evaluation(model) if self.central_evaluation else None

    def finish(self, model: Arrays, strategy_state: dict[str, np.ndarray]) -> tuple[float, float] | None:
        """Close the current round: metrics.jsonl line and checkpoint; returns the central evaluation."""
        record = self.current
        self.dp_sites |= {site for site, eps in record.epsilon.items() if eps is not None}
        if record.aggregated:
            self.aggregated_rounds += 1
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
