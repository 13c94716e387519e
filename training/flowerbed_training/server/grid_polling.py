"""The ServerApp waits for replies with a 0.1 s poll instead of Flower's 3 s.

Flower 1.42's `HttpGrid.send_and_receive` (flwr/superlink/grid/http_grid.py), the
grid a `flwr-serverapp` process gets, pushes the messages and then pulls replies
every 3 s: a round whose last reply is in at 3.1 s is seen at 6 s, so every
exchange (survey query, train, evaluate) ends on a multiple of 3 s, 1.5 s late
on average. `Grid.push_messages` and `Grid.pull_messages` are public API, and
`PollingGrid` waits on them every `POLL_SECONDS` (one PullMessages call to the
SuperLink per poll) with `send_and_receive`'s own contract: the replies that
arrived before `timeout` seconds (None: wait for all of them), in arrival order.
0.1 s is what Flower's simulation runtime polls at (`InMemoryGrid.pull_interval`,
flwr/superlink/grid/inmemory_grid.py), so only an HttpGrid is wrapped (`prompt`).

The SuperNode's own 3 s poll for new messages (flwr/supernode/
start_client_internal.py) is hard-coded in Flower and stays.
"""

from __future__ import annotations

import time
from collections.abc import Iterable

from flwr.app import Message, RecordDict
from flwr.serverapp import Grid
from flwr.supercore.run import Run
from flwr.superlink.grid.http_grid import HttpGrid

# Seconds between two pulls while replies are outstanding (also FedBuff's loop, fedbuff.py).
POLL_SECONDS = 0.1


class DelegatingGrid(Grid):
    """A Grid that hands every call to `grid`; subclasses override what they change."""

    def __init__(self, grid: Grid) -> None:
        self.grid = grid

    def set_run(self, run: Run) -> None:
        self.grid.set_run(run)

    @property
    def run(self) -> Run:
        return self.grid.run

    def create_message(self, content: RecordDict, message_type: str, dst_node_id: int,
                       group_id: str, ttl: float | None = None) -> Message:
        return self.grid.create_message(content, message_type, dst_node_id, group_id, ttl)

    def get_node_ids(self) -> Iterable[int]:
        return self.grid.get_node_ids()

    def push_messages(self, messages: Iterable[Message]) -> Iterable[str]:
        return self.grid.push_messages(messages)

    def pull_messages(self, message_ids: Iterable[str]) -> Iterable[Message]:
        return self.grid.pull_messages(message_ids)

    def send_and_receive(self, messages: Iterable[Message], *, timeout: float | None = None) -> Iterable[Message]:
        return self.grid.send_and_receive(messages, timeout=timeout)


class PollingGrid(DelegatingGrid):
    """`send_and_receive` on push/pull with a `poll_seconds` poll (seconds, > 0)."""

    def __init__(self, grid: Grid, poll_seconds: float = POLL_SECONDS) -> None:
        super().__init__(grid)
        self.poll_seconds = poll_seconds

    def send_and_receive(self, messages: Iterable[Message], *, timeout: float | None = None) -> Iterable[Message]:
        outstanding = set(self.grid.push_messages(messages))
        deadline = None if timeout is None else time.monotonic() + timeout
        replies: list[Message] = []
        while outstanding and (deadline is None or time.monotonic() < deadline):
            pulled = list(self.grid.pull_messages(outstanding))
            replies.extend(pulled)
            outstanding -= {reply.metadata.reply_to_message_id for reply in pulled}
            if outstanding:
                time.sleep(self.poll_seconds)
        return replies


def prompt(grid: Grid) -> Grid:
    """A deployed ServerApp's HttpGrid wrapped in a PollingGrid; any other grid as it is (the simulation
    runtime's InMemoryGrid already polls every 0.1 s; in-process test grids answer at once)."""
    return PollingGrid(grid) if isinstance(grid, HttpGrid) else grid
