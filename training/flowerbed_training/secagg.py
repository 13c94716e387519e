"""Secure aggregation (SecAgg+): the server only ever sees the masked sum of the sites' models.

Flower 1.41 has SecAgg+ only in its legacy workflow API: on the server,
`DefaultWorkflow(fit_workflow=SecAggPlusWorkflow(...))` driving a legacy
`FedAvg` through a `LegacyContext`; at each site, `secaggplus_mod` answering
the protocol's four stages (setup, share keys, collect masked vectors,
unmask), all sent as "train" messages in the legacy FitIns/FitRes layout.

This module is the ServerApp's SecAgg+ training path (`run_rounds`: that
workflow, each round reported to the same `Rounds` as the Message-API path) and gives the
ClientApp one mod (`secagg_plus_mod`) that speaks the legacy layout on the
wire and the app's own layout ({"arrays", "config"} in, {"arrays",
"metrics", "site"} out) to the train/evaluate functions, so they need no
SecAgg-specific code.

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
from flwr.app import ConfigRecord, Context, Message, RecordDict
from flwr.app.message_type import MessageType
from flwr.client.mod import secaggplus_mod
from flwr.clientapp.typing import ClientAppCallable
from flwr.common import (
    Code,
    EvaluateRes,
    FitRes,
    Parameters,
    Scalar,
    Status,
    ndarrays_to_parameters,
    parameters_to_ndarrays,
)
from flwr.common.secure_aggregation.secaggplus_constants import RECORD_KEY_CONFIGS
from flwr.compat.common import recorddict_compat as compat
from flwr.server import ServerConfig
from flwr.server.client_proxy import ClientProxy
from flwr.server.compat.legacy_context import LegacyContext
from flwr.server.strategy import FedAvg
from flwr.server.workflow import DefaultWorkflow, SecAggPlusWorkflow
from flwr.server.workflow.constant import MAIN_CONFIGS_RECORD, MAIN_PARAMS_RECORD, Key
from flwr.server.workflow.default_workflows import default_evaluate_workflow
from flwr.serverapp import Grid

from flowerbed_training.grid_polling import DelegatingGrid
from flowerbed_training.protocol import ARRAYS, CONFIG, METRICS, NUM_EXAMPLES, SITE, from_record, payload_bytes, to_record
from flowerbed_training.quorum import Quorum
from flowerbed_training.recording import Rounds
from flowerbed_training.round_log import weighted_mean
from flowerbed_training.run_config import RunConfig
from flowerbed_training.training_job import TrainingJob

# Legacy Parameters carry no names: the model's state_dict keys travel in the
# fit/evaluate config (one string, newline-separated) so sites can load them.
ARRAY_KEYS = "array-keys"
SITE_NAME = "site-name"  # legacy FitRes/EvaluateRes metrics: which site answered


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
    """Delegates to a Grid; counts the bytes of train/evaluate traffic and bounds every wait.

    Flower's legacy evaluate workflow waits without a timeout; here every
    exchange ends at the round timeout, as in the Message-API strategies.
    """

    def __init__(self, grid: Grid, timeout: float) -> None:
        super().__init__(grid)
        self.timeout = timeout
        self.bytes: dict[str, int] = {}

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

    def _count(self, messages: list[Message], direction: str) -> None:
        for message in messages:
            kind = f"{message.metadata.message_type}-{direction}"
            self.bytes[kind] = self.bytes.get(kind, 0) + payload_bytes(message)


class _RecordedFedAvg(FedAvg):
    """Legacy FedAvg that reports who answered to `rounds` (the models it gets are the secure sum)."""

    def __init__(self, rounds: Rounds, quorum: Quorum, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.rounds = rounds
        self.quorum = quorum

    def aggregate_fit(
        self,
        server_round: int,
        results: list[tuple[ClientProxy, FitRes]],
        failures: list[tuple[ClientProxy, FitRes] | BaseException],
    ) -> tuple[Parameters | None, dict[str, Scalar]]:
        record = self.rounds.current
        record.sites = sorted(str(res.metrics.get(SITE_NAME, f"node-{proxy.node_id}")) for proxy, res in results)
        record.failed = {f"failure-{i}": str(f) for i, f in enumerate(failures)}
        record.epsilon = {str(res.metrics.get(SITE_NAME, proxy.node_id)): _maybe(res.metrics.get("epsilon"))
                          for proxy, res in results}
        # No per-site contribution: the server cannot see a site's update.
        record.contribution = {site: None for site in record.sites}
        if not self.quorum.met(record.round, len(results)):
            return None, {}
        parameters, metrics = super().aggregate_fit(server_round, results, failures)
        if parameters is not None:
            # SecAgg+ dequantizes to float64; keep the model's float32 on the wire.
            parameters = ndarrays_to_parameters([a.astype(np.float32) for a in parameters_to_ndarrays(parameters)])
        record.aggregated = parameters is not None
        losses = [(res.num_examples, res.metrics.get("train-loss")) for _, res in results]
        record.train_loss = weighted_mean([(n, v) for n, v in losses if isinstance(v, (int, float))])
        return parameters, metrics

    def aggregate_evaluate(
        self,
        server_round: int,
        results: list[tuple[ClientProxy, EvaluateRes]],
        failures: list[tuple[ClientProxy, EvaluateRes] | BaseException],
    ) -> tuple[float | None, dict[str, Scalar]]:
        loss, _ = super().aggregate_evaluate(server_round, results, failures)
        accuracy = weighted_mean([(res.num_examples, res.metrics.get("eval-accuracy")) for _, res in results
                              if isinstance(res.metrics.get("eval-accuracy"), (int, float))])
        record = self.rounds.current
        record.federated_loss, record.federated_accuracy = loss, accuracy
        return loss, {"eval-accuracy": accuracy} if accuracy is not None else {}


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
                "server-round": server_round + job.rounds.round_offset, ARRAY_KEYS: "\n".join(names)}

    strategy = _RecordedFedAvg(
        job.rounds,
        Quorum(config.min_train_sites),
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
    metered = MeteredGrid(job.grid, config.round_timeout)
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


def _maybe(value: Any) -> float | None:
    return float(value) if isinstance(value, (int, float)) else None


# --- client -------------------------------------------------------------------------


def secagg_plus_mod(msg: Message, ctxt: Context, call_next: ClientAppCallable) -> Message:
    """ClientApp mod: SecAgg+ for legacy train messages, layout adapters for legacy evaluate.

    Install it always: messages of the app's own layout pass straight through.
    """
    if msg.metadata.message_type == MessageType.TRAIN and RECORD_KEY_CONFIGS in msg.content.config_records:
        return secaggplus_mod(msg, ctxt, lambda m, c: _legacy_train(m, c, call_next))
    if msg.metadata.message_type == MessageType.EVALUATE and "evaluateins.parameters" in msg.content.array_records:
        return _legacy_evaluate(msg, ctxt, call_next)
    return call_next(msg, ctxt)


def _as_app_message(msg: Message, prefix: str) -> list[str]:
    """Rewrite a legacy FitIns/EvaluateIns message in place into the app's layout; return the array names."""
    config = dict(msg.content.config_records[f"{prefix}.config"])
    names = str(config.pop(ARRAY_KEYS)).split("\n")
    arrays = [a.numpy() for a in msg.content.array_records[f"{prefix}.parameters"].values()]
    msg.content = RecordDict({ARRAYS: to_record(dict(zip(names, arrays, strict=True))), CONFIG: ConfigRecord(config)})
    return names


def _legacy_train(msg: Message, ctxt: Context, call_next: ClientAppCallable) -> Message:
    names = _as_app_message(msg, "fitins")
    reply = call_next(msg, ctxt)
    if reply.has_error():
        return reply
    trained = from_record(reply.content.array_records[ARRAYS])
    metrics = dict(reply.content.metric_records[METRICS])
    fitres = FitRes(
        status=Status(Code.OK, "ok"),
        parameters=ndarrays_to_parameters([trained[n] for n in names]),
        num_examples=int(metrics.pop(NUM_EXAMPLES)),
        metrics={**metrics, SITE_NAME: _site(reply)},
    )
    reply.content = compat.fitres_to_recorddict(fitres, keep_input=False)
    return reply


def _legacy_evaluate(msg: Message, ctxt: Context, call_next: ClientAppCallable) -> Message:
    _as_app_message(msg, "evaluateins")
    reply = call_next(msg, ctxt)
    if reply.has_error():
        return reply
    metrics = dict(reply.content.metric_records[METRICS])
    evaluateres = EvaluateRes(
        status=Status(Code.OK, "ok"),
        loss=float(metrics.pop("eval-loss")),
        num_examples=int(metrics.pop(NUM_EXAMPLES)),
        metrics={**metrics, SITE_NAME: _site(reply)},
    )
    reply.content = compat.evaluateres_to_recorddict(evaluateres)
    return reply


def _site(reply: Message) -> str:
    return str(reply.content.config_records[SITE]["name"]) if SITE in reply.content.config_records else ""

