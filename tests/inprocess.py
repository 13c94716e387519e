"""Run the real ServerApp and ClientApp objects in one process, without Ray or SuperLink.

For tests and `bench/` (and a quick local try-out): no network, no processes.
It lives outside the app bundle (training/pyproject.toml's `fab-include`).

`InProcessGrid` implements Flower's `Grid` interface: every pushed message is
serialized to protobuf and back (as on the wire), handed to the ClientApp with
that site's own persistent `Context`, and the reply travels back the same way.
Sites can be scripted to crash (the ClientApp raises, so Flower's error reply
arrives) or to stay silent (a straggler or a dropped site: no reply within the
round timeout) in given rounds, and to answer again afterwards; a `tamper`
function makes a site Byzantine (it rewrites the site's training replies), and
`train_seconds` makes it slow (its training replies wait that long: tests/slow_sites.py;
with ConcurrentGrid the other sites carry on meanwhile).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from uuid import uuid4

from flwr.app import Context, Error, Message, RecordDict
from flwr.clientapp import ClientApp
from flwr.common.config import get_fused_config_from_dir
from flwr.common.serde import message_from_proto, message_to_proto
from flwr.common.constant import SUPERLINK_NODE_ID
from flwr.serverapp import Grid, ServerApp
from flwr.supercore.run import Run
from flwr.supercore.task_identity import TaskIdentity

from flowerbed_training.common.protocol import CONFIG, SERVER_ROUND
from flowerbed_training.common.run_config import RunConfig
from tests.slow_sites import pad

TRAINING_APP_DIR = Path(__file__).resolve().parents[1] / "training"  # holds pyproject.toml
RUN_ID = 1
# Flower's error code for an exception raised inside a ClientApp.
CLIENT_APP_RAISED_EXCEPTION = 300


@dataclass
class Site:
    node_id: int
    node_config: dict[str, Any]
    crash_rounds: set[int] = field(default_factory=set)  # ClientApp raises while training
    silent_rounds: set[int] = field(default_factory=set)  # no reply (straggler past the timeout)
    # A Byzantine site: rewrites its own train replies (e.g. a poisoned model) before sending.
    tamper: Callable[[Message], Message] | None = None
    train_seconds: float = 0.0  # a slow site: each training reply waits until this long after it began
    state: RecordDict = field(default_factory=RecordDict)
    handled: list[str] = field(default_factory=list)  # "<message type>@<round>" it processed


def _round_of(message: Message) -> int:
    config = message.content.config_records.get(CONFIG)
    return int(config.get(SERVER_ROUND, 0)) if config is not None else 0


def _over_the_wire(message: Message) -> Message:
    return message_from_proto(message_to_proto(message))


class InProcessGrid(Grid):
    def __init__(self, client_app: ClientApp, sites: list[Site], run_config: Mapping[str, Any],
                 run_id: int = RUN_ID) -> None:
        self.client_app = client_app
        self.sites = {site.node_id: site for site in sites}
        self.run_config = dict(run_config)
        self.run_id = run_id
        self._run = Run.create_empty(run_id)
        self._replies: dict[str, Message] = {}

    def set_run(self, run: Run) -> None:
        self._run = run

    @property
    def run(self) -> Run:
        return self._run

    def create_message(self, content: RecordDict, message_type: str, dst_node_id: int,
                       group_id: str, ttl: float | None = None) -> Message:
        return Message(content, dst_node_id, message_type, ttl=ttl, group_id=group_id)

    def get_node_ids(self) -> Iterable[int]:
        return list(self.sites)

    def push_messages(self, messages: Iterable[Message]) -> Iterable[str]:
        ids = []
        for message in messages:
            message.metadata.__dict__["_message_id"] = str(uuid4())
            message.metadata.__dict__["_run_id"] = self.run_id
            ids.append(message.metadata.message_id)
            self._handle(message.metadata.message_id, _over_the_wire(message))
        return ids

    def _handle(self, message_id: str, message: Message) -> None:
        """The site answers at once, before push_messages returns (ConcurrentGrid: in its own thread)."""
        reply = self._deliver(message)
        if reply is not None:
            self._replies[message_id] = _over_the_wire(reply)

    def _deliver(self, message: Message) -> Message | None:
        site = self.sites[message.metadata.dst_node_id]
        server_round = _round_of(message)
        if server_round in site.silent_rounds:
            return None
        site.handled.append(f"{message.metadata.message_type}@{server_round}")
        context = Context(self.run_id, site.node_id, site.node_config, site.state, self.run_config)
        training = message.metadata.message_type == "train"
        started = time.monotonic()
        try:
            if training and server_round in site.crash_rounds:
                raise RuntimeError(f"site {site.node_config.get('site-name')} crashed (scripted)")
            reply = self.client_app(message, context)
        except Exception as err:  # the SuperNode turns a ClientApp exception into an error reply
            return Message(Error(CLIENT_APP_RAISED_EXCEPTION, f"{type(err).__name__}: {err}"), reply_to=message)
        if training:
            pad(started, site.train_seconds)
        if site.tamper is not None and training and not reply.has_error():
            return site.tamper(reply)
        return reply

    def pull_messages(self, message_ids: Iterable[str]) -> Iterable[Message]:
        return [self._replies.pop(i) for i in list(message_ids) if i in self._replies]

    def send_and_receive(self, messages: Iterable[Message], *, timeout: float | None = None) -> Iterable[Message]:
        # Sites answer synchronously here, so whatever has not answered now never will:
        # exactly what the server sees once a real round timeout expires.
        return self.pull_messages(self.push_messages(messages))

    def close(self) -> None:
        """Nothing runs between calls here (ConcurrentGrid stops its sites' threads), as HttpGrid.close."""


def run_config_with(overrides: Mapping[str, Any]) -> dict[str, Any]:
    """The app's pyproject defaults with overrides, as `flwr run --run-config` fuses them."""
    return dict(get_fused_config_from_dir(TRAINING_APP_DIR, dict(overrides)))


def config_with(overrides: Mapping[str, Any]) -> RunConfig:
    """`run_config_with`, parsed and validated as the apps parse it."""
    return RunConfig.parse(run_config_with(overrides))


def run_dir(artifacts_root: Path, run_id: int = RUN_ID) -> Path:
    """Where run `run_id` writes under `artifacts-root` (run_directory.py)."""
    return artifacts_root / str(run_id)


def run_federation(sites: list[Site], run_config: Mapping[str, Any], *, run_id: int = RUN_ID,
                   server_app: ServerApp | None = None, client_app: ClientApp | None = None,
                   grid_type: type[InProcessGrid] = InProcessGrid) -> InProcessGrid:
    """Run the app's ServerApp (or `server_app`) as run `run_id` against `sites` running its ClientApp
    (`grid_type` ConcurrentGrid: every site in its own thread, see tests/inprocess_threads.py)."""
    if server_app is None or client_app is None:
        from flowerbed_training.client import app as client_module
        from flowerbed_training.server import app as server_module

        server_app, client_app = server_app or server_module.app, client_app or client_module.app
    grid = grid_type(client_app, sites, run_config, run_id)
    # What Flower's ServerApp process runner sets before calling the app (messages read it).
    TaskIdentity.task_id, TaskIdentity.run_id, TaskIdentity.node_id = 1, run_id, SUPERLINK_NODE_ID
    try:
        server_app(grid, Context(run_id, 0, {}, RecordDict(), dict(run_config)))
    finally:
        grid.close()
    return grid


def builtin_sites(count: int, state_root: Path | None = None, train_seconds: Mapping[int, float] | None = None,
                  **scripted: Any) -> list[Site]:
    """`count` sites sharing a built-in dataset (node ids 101, 102, ...; names `site-<i>`).

    The server gives site-<i> partition i (names sort by index below 10 sites). With
    `state_root`, each site keeps its state in `<state_root>/site-<i>` (node config
    `state-dir`, federation `inprocess`), as a site with a state volume does. `train_seconds`:
    site index -> its Site.train_seconds; `scripted`: site index -> rounds, per Site field.
    """
    def node_config(i: int) -> dict[str, Any]:
        config = {"site-name": f"site-{i}", "data-root": "/nonexistent"}
        if state_root is not None:
            config |= {"state-dir": str(state_root / f"site-{i}"), "federation": "inprocess"}
        return config

    return [Site(node_id=101 + i, node_config=node_config(i), train_seconds=(train_seconds or {}).get(i, 0.0),
                 **{k: v.get(i, set()) for k, v in scripted.items()})
            for i in range(count)]
