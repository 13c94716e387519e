"""SecAgg+ at the site: Flower's `secaggplus_mod` for the protocol, and the legacy layout adapted to the app's.

Flower 1.42 has SecAgg+ only in its legacy workflow API (server/secagg.py): the
protocol's four stages (setup, share keys, collect masked vectors, unmask) arrive as
"train" messages in the legacy FitIns/FitRes layout, and evaluation as legacy
EvaluateIns. `secagg_plus_mod` answers the stages with Flower's `secaggplus_mod` and
speaks the legacy layout on the wire and the app's own layout ({ARRAYS, CONFIG} in,
{ARRAYS, METRICS, SITE} out) to the train/evaluate handlers, so they need no
SecAgg-specific code. The site's name travels in the legacy metrics (LEGACY_SITE_NAME).
"""

from __future__ import annotations

from flwr.app import ConfigRecord, Context, Message, RecordDict
from flwr.app.message_type import MessageType
from flwr.client.mod import secaggplus_mod
from flwr.clientapp.typing import ClientAppCallable
from flwr.common import Code, EvaluateRes, FitRes, Status, ndarrays_to_parameters
from flwr.common.secure_aggregation.secaggplus_constants import RECORD_KEY_CONFIGS
from flwr.compat.common import recorddict_compat as compat

from flowerbed_training.common.protocol import (
    ARRAY_KEYS,
    ARRAYS,
    CONFIG,
    EVAL_LOSS,
    LEGACY_EVALUATE,
    LEGACY_SITE_NAME,
    LEGACY_TRAIN,
    METRICS,
    NUM_EXAMPLES,
    from_record,
    legacy_record,
    stated_site_name,
    to_record,
)


def secagg_plus_mod(msg: Message, ctxt: Context, call_next: ClientAppCallable) -> Message:
    """ClientApp mod: SecAgg+ for legacy train messages, layout adapters for legacy evaluate.

    Install it always: messages of the app's own layout pass straight through.
    """
    if msg.metadata.message_type == MessageType.TRAIN and RECORD_KEY_CONFIGS in msg.content.config_records:
        return secaggplus_mod(msg, ctxt, lambda m, c: _legacy_train(m, c, call_next))
    if (msg.metadata.message_type == MessageType.EVALUATE
            and legacy_record(LEGACY_EVALUATE, "parameters") in msg.content.array_records):
        return _legacy_evaluate(msg, ctxt, call_next)
    return call_next(msg, ctxt)


def _as_app_message(msg: Message, layout: str) -> list[str]:
    """Rewrite a legacy FitIns/EvaluateIns message in place into the app's layout; return the array names."""
    config = dict(msg.content.config_records[legacy_record(layout, "config")])
    names = str(config.pop(ARRAY_KEYS)).split("\n")
    arrays = [a.numpy() for a in msg.content.array_records[legacy_record(layout, "parameters")].values()]
    msg.content = RecordDict({ARRAYS: to_record(dict(zip(names, arrays, strict=True))), CONFIG: ConfigRecord(config)})
    return names


def _legacy_train(msg: Message, ctxt: Context, call_next: ClientAppCallable) -> Message:
    names = _as_app_message(msg, LEGACY_TRAIN)
    reply = call_next(msg, ctxt)
    if reply.has_error():
        return reply
    trained = from_record(reply.content.array_records[ARRAYS])
    metrics = dict(reply.content.metric_records[METRICS])
    fitres = FitRes(
        status=Status(Code.OK, "ok"),
        parameters=ndarrays_to_parameters([trained[n] for n in names]),
        num_examples=int(metrics.pop(NUM_EXAMPLES)),
        metrics={**metrics, LEGACY_SITE_NAME: stated_site_name(reply.content) or ""},
    )
    reply.content = compat.fitres_to_recorddict(fitres, keep_input=False)
    return reply


def _legacy_evaluate(msg: Message, ctxt: Context, call_next: ClientAppCallable) -> Message:
    _as_app_message(msg, LEGACY_EVALUATE)
    reply = call_next(msg, ctxt)
    if reply.has_error():
        return reply
    metrics = dict(reply.content.metric_records[METRICS])
    evaluateres = EvaluateRes(
        status=Status(Code.OK, "ok"),
        loss=float(metrics.pop(EVAL_LOSS)),
        num_examples=int(metrics.pop(NUM_EXAMPLES)),
        metrics={**metrics, LEGACY_SITE_NAME: stated_site_name(reply.content) or ""},
    )
    reply.content = compat.evaluateres_to_recorddict(evaluateres)
    return reply
