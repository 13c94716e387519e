"""Secure aggregation (SecAgg+): the server only ever sees the masked sum of the sites' models.

Flower 1.42 has SecAgg+ only in its legacy workflow API: on the server,
`DefaultWorkflow(fit_workflow=SecAggPlusWorkflow(...))` driving a legacy
`FedAvg` through a `LegacyContext`; at each site, `secaggplus_mod` answering
the protocol's four stages (setup, share keys, collect masked vectors,
unmask), all sent as "train" messages in the legacy FitIns/FitRes layout.

This module is the ServerApp's SecAgg+ training path (`run_rounds`: that
workflow, each round reported to the same `Rounds` as the other paths). The site's
half, a mod that speaks the legacy layout on the wire and the app's own to the
train/evaluate handlers, is client/secagg.py.

Sites clip their model to +-`secagg-clipping-range` and quantize it to 2**22
levels before masking, and weights are carried as num_examples /
`secagg-max-weight` (also quantized): the unmasked aggregate equals FedAvg's
up to that quantization. A site with more examples than `secagg-max-weight`
would overflow the clipping range (Flower only warns at the site), so the run
refuses to start (`check_weights`).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any, cast

import numpy as np
from flwr.app import Context, Message
from flwr.common import EvaluateRes, FitRes, Parameters, Scalar, ndarrays_to_parameters, parameters_to_ndarrays
from flwr.compat.common import recorddict_compat as compat
from flwr.server import ServerConfig
from flwr.server.client_proxy import ClientProxy
from flwr.server.compat.legacy_context import LegacyContext
from flwr.server.strategy import FedAvg
from flwr.server.workflow import DefaultWorkflow, SecAggPlusWorkflow
from flwr.server.workflow.constant import MAIN_CONFIGS_RECORD, MAIN_PARAMS_RECORD, Key
from flwr.server.workflow.default_workflows import default_evaluate_workflow
from flwr.serverapp import Grid

from flowerbed_training.common.protocol import ARRAY_KEYS, EVAL_ACCURACY, EVAL_LOSS, SERVER_ROUND
from flowerbed_training.common.run_config import RunConfig
from flowerbed_training.server.grid_polling import DelegatingGrid
from flowerbed_training.server.replies import SiteNames, SiteReply, payload_bytes
from flowerbed_training.server.rounds import Rounds
from flowerbed_training.server.training_job import TrainingJob


class WeightTooLarge(ValueError):
    """A site holds more examples than `secagg-max-weight`: SecAgg+ would clip its weighted model."""


def check_weights(config: RunConfig, examples: Mapping[str, int]) -> None:
    """Refuse the run when a site's weight (training examples) exceeds `secagg-max-weight`.

    Each site multiplies its model by n_i / max_weight before quantizing it to
    [-clipping_range, clipping_range]; above 1 the product overflows that range and
    Flower's secaggplus_mod only logs a warning at the site, so the aggregate would
    be silently wrong. Raises WeightTooLarge naming every such site and the value to set.
    """
    over = {site: n for site, n in sorted(examples.items()) if n > config.secagg_max_weight}
    if over:
        listing = ", ".join(f"{site} ({n} examples)" for site, n in over.items())
        raise WeightTooLarge(
            f"run config secagg-max-weight: {config.secagg_max_weight:g} is below the training examples of "
            f"{listing}; SecAgg+ would clip their weighted models. Set secagg-max-weight >= {max(over.values())}"
        )


def workflow(config: RunConfig) -> SecAggPlusWorkflow:
    """Flower's SecAgg+ fit workflow with the run config's `secagg-*` parameters."""
    return SecAggPlusWorkflow(
        num_shares=config.secagg_num_shares,
        reconstruction_threshold=config.secagg_reconstruction_threshold,
        clipping_range=config.secagg_clipping_range,
        max_weight=config.secagg_max_weight,
        timeout=config.round_timeout,
    )


# --- server -------------------------------------------------------------------------


class MeteredGrid(DelegatingGrid):
    """Delegates to a Grid; counts the bytes of train/evaluate traffic, notes the sites that answer a
    train message with an error, and bounds every wait.

    Flower's legacy workflows keep only the error of a failed reply, not its sender;
    here it is named like every reply (SiteNames). Flower's legacy evaluate workflow
    waits without a timeout; here every exchange ends at the round timeout, as in the
    Message-API strategies.
    """

    def __init__(self, grid: Grid, timeout: float, site_names: SiteNames) -> None:
        super().__init__(grid)
        self.timeout = timeout
        self.site_names = site_names
        self.bytes: dict[str, int] = {}
        self.failed: dict[str, str] = {}

    def push_messages(self, messages: Iterable[Message]) -> Iterable[str]:
        messages = list(messages)
        self._count(messages, "down")
        return self.grid.push_messages(messages)

    def pull_messages(self, message_ids: Iterable[str]) -> Iterable[Message]:
        replies = list(self.grid.pull_messages(message_ids))
        self._count(replies, "up")
        return replies

    def send_and_receive(self, messages: Iterable[Message], *, timeout: float | None = None) -> Iterable[Message]:
        messages = list(messages)
        self._count(messages, "down")
        replies = list(self.grid.send_and_receive(messages, timeout=timeout or self.timeout))
        self._count(replies, "up")
        return replies

    def take(self, kind: str) -> int:
        """Bytes counted for `kind` ("train-up", "evaluate-down", ...) since the last take."""
        return self.bytes.pop(kind, 0)

    def take_failed(self) -> dict[str, str]:
        """Site -> error reason of the train messages answered with an error since the last take."""
        failed, self.failed = self.failed, {}
        return failed

    def _count(self, messages: list[Message], direction: str) -> None:
        for message in messages:
            kind = f"{message.metadata.message_type}-{direction}"
            self.bytes[kind] = self.bytes.get(kind, 0) + payload_bytes(message)
            if message.has_error() and message.metadata.message_type == "train":
                self.failed[self.site_names.named(message.metadata.src_node_id)] = message.error.reason


class _RecordedFedAvg(FedAvg):
    """Legacy FedAvg that reports each round's answers to `rounds` (the models it gets are the secure sum)."""

    def __init__(self, rounds: Rounds, grid: MeteredGrid, min_train_sites: int, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.rounds = rounds
        self.grid = grid
        self.min_train_sites = min_train_sites

    def aggregate_fit(
        self,
        server_round: int,
        results: list[tuple[ClientProxy, FitRes]],
        failures: list[tuple[ClientProxy, FitRes] | BaseException],
    ) -> tuple[Parameters | None, dict[str, Scalar]]:
        replies = [SiteReply.of_legacy(proxy.node_id, res.num_examples, res.metrics, self.grid.site_names)
                   for proxy, res in results]
        if not self.rounds.trained(replies, self.grid.take_failed(), minimum=self.min_train_sites):
            return None, {}
        parameters, metrics = super().aggregate_fit(server_round, results, failures)
        if parameters is not None:
            # SecAgg+ dequantizes to float64; keep the model's float32 on the wire.
            parameters = ndarrays_to_parameters([a.astype(np.float32) for a in parameters_to_ndarrays(parameters)])
            # No per-site contribution: the server cannot see a site's update.
            self.rounds.aggregated((reply.site, None) for reply in replies)
        return parameters, metrics

    def aggregate_evaluate(
        self,
        server_round: int,
        results: list[tuple[ClientProxy, EvaluateRes]],
        failures: list[tuple[ClientProxy, EvaluateRes] | BaseException],
    ) -> tuple[float | None, dict[str, Scalar]]:
        # The legacy EvaluateRes carries the loss apart from its metrics (client/secagg.py).
        names = self.grid.site_names
        self.rounds.evaluated([SiteReply.of_legacy(proxy.node_id, res.num_examples,
                                                   {**res.metrics, EVAL_LOSS: res.loss}, names)
                               for proxy, res in results])
        record = self.rounds.current
        accuracy = {} if record.federated_accuracy is None else {EVAL_ACCURACY: record.federated_accuracy}
        return record.federated_loss, accuracy


@dataclass
class _Workflows:
    """The fit and evaluate workflows, each round opened and finished in `rounds`."""

    rounds: Rounds
    grid: MeteredGrid
    secure_fit: SecAggPlusWorkflow
    names: list[str]

    def fit(self, grid: Grid, context: Context) -> None:
        legacy = cast(LegacyContext, context)
        record = self.rounds.begin(_current_round(legacy))
        self.secure_fit(grid, legacy)
        record.bytes_down, record.bytes_up = self.grid.take("train-down"), self.grid.take("train-up")

    def evaluate(self, grid: Grid, context: Context) -> None:
        legacy = cast(LegacyContext, context)
        default_evaluate_workflow(grid, legacy)
        self.rounds.current.eval_bytes_down = self.grid.take("evaluate-down")
        self.grid.take("evaluate-up")
        self.rounds.finish(global_model(legacy, self.names), strategy_state={})


def run_rounds(job: TrainingJob) -> dict[str, np.ndarray]:
    """The SecAgg+ training path: the job's remaining FedAvg rounds with SecAgg+; returns the final model.

    Raises WeightTooLarge before any round when a site's weight would be clipped."""
    config = job.config
    check_weights(config, job.federation.examples)
    names = list(job.start.model)
    train_config = job.federation.config()

    def round_config(server_round: int) -> dict[str, Scalar]:
        return {**train_config, **job.rounds.site_config(),  # type: ignore[dict-item]
                SERVER_ROUND: server_round + job.rounds.round_offset, ARRAY_KEYS: "\n".join(names)}

    metered = MeteredGrid(job.grid, config.round_timeout, job.site_names)
    strategy = _RecordedFedAvg(
        job.rounds,
        metered,
        config.min_train_sites,
        fraction_fit=config.fraction_train,
        fraction_evaluate=config.fraction_evaluate,
        min_fit_clients=config.min_train_sites,
        min_evaluate_clients=1 if config.fraction_evaluate > 0 else 0,
        min_available_clients=config.min_available_sites,
        on_fit_config_fn=round_config,
        on_evaluate_config_fn=round_config,
        initial_parameters=ndarrays_to_parameters([job.start.model[n] for n in names]),
        fit_metrics_aggregation_fn=_no_metrics,
        evaluate_metrics_aggregation_fn=_no_metrics,
    )
    workflows = _Workflows(job.rounds, metered, workflow(config), names)
    legacy = LegacyContext(job.context, config=ServerConfig(num_rounds=job.remaining), strategy=strategy)
    DefaultWorkflow(fit_workflow=workflows.fit, evaluate_workflow=workflows.evaluate)(metered, legacy)
    return global_model(legacy, names)


def _current_round(context: LegacyContext) -> int:
    return int(context.state.config_records[MAIN_CONFIGS_RECORD][Key.CURRENT_ROUND])  # type: ignore[arg-type]


def global_model(context: LegacyContext, names: list[str]) -> dict[str, np.ndarray]:
    """The legacy workflow's current global model, under the model's own array names."""
    parameters = compat.arrayrecord_to_parameters(context.state.array_records[MAIN_PARAMS_RECORD], keep_input=True)
    return dict(zip(names, parameters_to_ndarrays(parameters), strict=True))


def _no_metrics(_: list[tuple[int, dict[str, Scalar]]]) -> dict[str, Scalar]:
    # Per-site metrics are recorded by _RecordedFedAvg; an aggregate is not needed.
    return {}
