"""ConcurrentGrid: the in-process grid (tests/inprocess.py) with every site working in its own thread.

InProcessGrid answers while the server pushes, so no site is ever busy when the
server looks: fine for synchronous rounds, but asynchronous aggregation
(fedbuff.py) needs sites that take their time while the others carry on. Here
each site is a worker thread that takes its messages one at a time, in order
(a SuperNode with one task slot): `push_messages` returns at once, a reply is
pulled once the site has finished, and `send_and_receive` waits up to its
timeout, as against a SuperLink. Sites slowed with the bench/test-only sleep
(Site.train_seconds, tests/slow_sites.py) cost no CPU while they wait, so a slow
site does not slow the others down on a small machine.

`close()` (run_federation calls it when the ServerApp returns) ends every site's
thread without handling its queued messages: a site in the middle of a message
finishes it with its padding sleep cut short, nobody pulls its reply, and close
returns once every thread has ended (a thread left inside torch when the
interpreter exits aborts the process).
"""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Iterable, Mapping
from typing import Any

from flwr.app import Message
from flwr.clientapp import ClientApp

from tests.inprocess import RUN_ID, InProcessGrid, Site
from tests.slow_sites import cut_short

_STOP = None  # queue sentinel: the worker ends


class ConcurrentGrid(InProcessGrid):
    """InProcessGrid whose sites answer in their own threads, one message at a time (module docstring)."""

    def __init__(self, client_app: ClientApp, sites: list[Site], run_config: Mapping[str, Any],
                 run_id: int = RUN_ID) -> None:
        super().__init__(client_app, sites, run_config, run_id)
        self._answered = threading.Condition()
        self._closed = False
        self._inboxes: dict[int, queue.SimpleQueue[tuple[str, Message] | None]] = {}
        self._threads: list[threading.Thread] = []
        for node_id in self.sites:
            inbox: queue.SimpleQueue[tuple[str, Message] | None] = queue.SimpleQueue()
            self._inboxes[node_id] = inbox
            thread = threading.Thread(target=self._work, args=(inbox,), name=f"site-{node_id}", daemon=True)
            thread.start()
            self._threads.append(thread)

    def _handle(self, message_id: str, message: Message) -> None:
        self._inboxes[message.metadata.dst_node_id].put((message_id, message))

    def _work(self, inbox: queue.SimpleQueue[tuple[str, Message] | None]) -> None:
        while (item := inbox.get()) is not _STOP and not self._closed:
            super()._handle(*item)  # the site answers (in this thread); the reply is stored as it crossed the wire
            with self._answered:
                self._answered.notify_all()

    def pull_messages(self, message_ids: Iterable[str]) -> Iterable[Message]:
        with self._answered:
            return super().pull_messages(message_ids)

    def send_and_receive(self, messages: Iterable[Message], *, timeout: float | None = None) -> Iterable[Message]:
        ids = list(self.push_messages(messages))
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._answered:
            while not all(i in self._replies for i in ids):
                left = None if deadline is None else deadline - time.monotonic()
                if left is not None and left <= 0:
                    break
                self._answered.wait(left)
            return super().pull_messages(ids)

    def close(self) -> None:
        with self._answered:
            self._closed = True
        for inbox in self._inboxes.values():
            inbox.put(_STOP)  # wakes a waiting worker; one that takes a queued message sees _closed and ends
        with cut_short():
            for thread in self._threads:
                thread.join()
