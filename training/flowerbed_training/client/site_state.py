"""Site state that must outlive a SuperNode: the DP ledger, SCAFFOLD's c_i, the top-k residual.

Flower keeps a ClientApp's `context.state` in the SuperNode's memory, so a
restarted SuperNode (or a resumed run, which is a new Flower run) would start a
fresh privacy budget, control variate and residual. With node config
`state-dir` (pods: the site's retained state volume at `/state`; `make
federate`: a directory per site), `site_state_mod` loads `context.state` from

    <state-dir>/<federation>/<lineage>/state.pb

before every training message and writes it back (atomically) after a
successful one: only those three records (protocol.PERSISTED), so other state
(SecAgg+'s protocol state, which lives for one round) stays in memory.
`federation` is node config `federation`; `lineage` is the run
the server says this run continues (`state-run` in the train config: the run id
of the first run of a chain of resumes), so a resumed run finds the ledger of
the run it resumes, and different runs or federations never share state.

A site whose ledger cannot be read refuses to train, and a local-DP site that
the server lists as having spent budget in this lineage (`dp-sites`) but that
holds no ledger refuses too: it must not start a new budget.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

from flwr.app import ConfigRecord, Context, Message, RecordDict
from flwr.app.message_type import MessageType
from flwr.clientapp.typing import ClientAppCallable
from flwr.common.serde import recorddict_from_proto, recorddict_to_proto
from flwr.proto.recorddict_pb2 import RecordDict as ProtoRecordDict  # pylint: disable=no-name-in-module

from flowerbed_training.client.node_config import NodeConfig
from flowerbed_training.common.atomic_file import replacing
from flowerbed_training.common.protocol import CONFIG, PERSISTED, STATE_RUN

STATE_FILE = "state.pb"


class SiteStateError(RuntimeError):
    """The site's persisted state is unusable; training would silently reset it."""


def state_path(node: NodeConfig, config: Mapping[str, object]) -> Path | None:
    """Where this site keeps this lineage's state; None without node config `state-dir`."""
    if node.state_dir is None or STATE_RUN not in config:
        return None
    if node.federation is None:
        raise SiteStateError("node config federation: missing; a site with state-dir needs it "
                             "(state is kept per federation and run)")
    return node.state_dir / node.federation / str(config[STATE_RUN]) / STATE_FILE


def load(path: Path) -> RecordDict | None:
    """The saved state, or None when there is none yet; SiteStateError when it cannot be read."""
    if not path.exists():
        return None
    try:
        proto = ProtoRecordDict()
        proto.ParseFromString(path.read_bytes())
        return recorddict_from_proto(proto)
    except Exception as err:  # a truncated or foreign file: never guess, never reset
        raise SiteStateError(f"site state {path} cannot be read ({type(err).__name__}: {err}); "
                             "refusing to train rather than start from empty state") from err


def save(path: Path, state: RecordDict) -> None:
    """The PERSISTED records of `state`, written atomically (a killed pod leaves the previous file)."""
    kept = RecordDict({key: state[key] for key in PERSISTED if key in state})
    with replacing(path) as file:
        file.write(recorddict_to_proto(kept).SerializeToString())


def site_state_mod(msg: Message, ctxt: Context, call_next: ClientAppCallable) -> Message:
    """ClientApp mod: training messages run with the site's persisted state (see the module docstring).

    Safe to install always: without `state-dir` (or for other messages) it passes straight through.
    """
    config = msg.content.config_records.get(CONFIG, ConfigRecord())
    path = state_path(NodeConfig.of(ctxt), config) if msg.metadata.message_type == MessageType.TRAIN else None
    if path is None:
        return call_next(msg, ctxt)
    saved = load(path) or RecordDict()
    for key in PERSISTED:  # the volume, not the SuperNode's memory, is what counts
        if key in ctxt.state:
            del ctxt.state[key]
        if key in saved:
            ctxt.state[key] = saved[key]
    reply = call_next(msg, ctxt)
    if not reply.has_error():
        save(path, ctxt.state)
    return reply
