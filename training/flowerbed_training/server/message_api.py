"""The Message-API training path: a Flower strategy's own loop (`Strategy.start`) through the RoundRecorder.

Every synchronous run without SecAgg+ takes this path (secagg.py and fedbuff.py are the
other two). `RoundRecorder` wraps the chosen Flower strategy (or SCAFFOLD) and reports
each round to the job's `Rounds`: what crossed the wire, the replies (quorum, names,
example-weighted means: rounds.py), decompression of compressed updates before the
strategy averages them, and contribution scores (scoring.py).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from logging import INFO

import numpy as np
from flwr.app import ArrayRecord, ConfigRecord, Message, MetricRecord
from flwr.serverapp import Grid
from flwr.serverapp.strategy import Strategy
from flwr.supercore import log

from flowerbed_training.common.compression import decode_update, is_compressed
from flowerbed_training.common.protocol import ARRAYS, from_record, to_record
from flowerbed_training.server import privacy
from flowerbed_training.server.replies import SiteNames, SiteReply, payload_bytes
from flowerbed_training.server.rounds import Rounds
from flowerbed_training.server.scoring import cosine_contributions, plain_site_models
from flowerbed_training.server.strategies import build_strategy, restore_strategy_state, strategy_state
from flowerbed_training.server.training_job import TrainingJob

Arrays = dict[str, np.ndarray]


def run_rounds(job: TrainingJob) -> Arrays:
    """Train the job's remaining rounds from its start; return the final global model."""
    config, federation = job.config, job.federation
    base = build_strategy(config)
    restore_strategy_state(base, job.start.strategy_state)
    sampled = privacy.sites_per_round(config, len(federation.examples))
    recorder = RoundRecorder(privacy.wrap_central_dp(base, config, sampled), job.rounds,
                             min_train_sites=config.min_train_sites, state_of=lambda: strategy_state(base),
                             site_names=job.site_names)
    result = recorder.start(
        grid=job.grid,
        initial_arrays=to_record(job.start.model),
        num_rounds=job.remaining,
        timeout=config.round_timeout,
        train_config=ConfigRecord(federation.config()),
        evaluate_config=ConfigRecord(federation.config()),
        evaluate_fn=recorder.end_round,
    )
    return from_record(result.arrays)


def expand_replies(answered: list[Message], global_model: Mapping[str, np.ndarray]) -> None:
    """In place: a reply carrying a compressed update gets the full model (global + update) that the
    strategies average. Run after bytes were counted on the compressed payload."""
    for message in answered:
        record = message.content.array_records[ARRAYS]
        if is_compressed(record):
            update = decode_update(record, like=global_model)
            message.content[ARRAYS] = to_record({k: global_model[k] + update[k] for k in global_model})


class RoundRecorder(Strategy):
    """Delegates aggregation to `inner`; reports every round to `rounds`, decompresses and scores."""

    def __init__(self, inner: Strategy, rounds: Rounds, *, min_train_sites: int,
                 state_of: Callable[[], dict[str, np.ndarray]], site_names: SiteNames | None = None) -> None:
        self.inner = inner
        self.rounds = rounds
        self.min_train_sites = min_train_sites
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
        site_replies = [SiteReply.of(m, self.site_name) for m in answered]
        failed = {self.site_name(m): m.error.reason for m in replies if m.has_error()}
        if not self.rounds.trained(site_replies, failed, minimum=self.min_train_sites):
            return None, None
        expand_replies(answered, self._global)
        site_models = plain_site_models(answered, self._global, self.site_name)
        arrays, metrics = self.inner.aggregate_train(record.round, replies)
        if arrays is None:
            return None, metrics
        # FedAdam/FedYogi's numpy arithmetic promotes float32 to float64 (NEP 50); keep the
        # model's own dtypes so it does not double in size on the wire every round.
        new_model = {k: v.astype(self._global[k].dtype, copy=False) for k, v in from_record(arrays).items()}
        scores = cosine_contributions(self._global, site_models, new_model)
        self.rounds.aggregated((reply.site, scores.get(reply.site)) for reply in site_replies)
        return to_record(new_model), metrics

    def configure_evaluate(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        record = self.rounds.current
        messages = list(self.inner.configure_evaluate(record.round, arrays, config, grid))
        record.eval_bytes_down = sum(payload_bytes(m) for m in messages)
        return messages

    def aggregate_evaluate(self, server_round: int, replies: Iterable[Message]) -> MetricRecord | None:
        replies = list(replies)
        self.rounds.evaluated([SiteReply.of(m, self.site_name) for m in replies if not m.has_error()])
        return self.inner.aggregate_evaluate(self.rounds.current.round, replies)

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
            self.rounds.directory, self.min_train_sites)
        self.inner.summary()
