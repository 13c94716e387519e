"""PollingGrid: send_and_receive on push/pull with a 0.1 s poll, under a fake clock (no real waiting)."""

from __future__ import annotations

from collections.abc import Iterable
from types import SimpleNamespace

import pytest
from flwr.superlink.grid.http_grid import HttpGrid

from flowerbed_training.server import grid_polling
from flowerbed_training.server.grid_polling import POLL_SECONDS, PollingGrid
from tests.inprocess import InProcessGrid


class Clock:
    """time.monotonic and time.sleep for grid_polling: sleeping moves the clock, nothing waits."""

    def __init__(self) -> None:
        self.now = 0.0
        self.sleeps: list[float] = []

    def monotonic(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds


class ScriptedGrid(InProcessGrid):
    """Replies to message i become pullable at `ready_at[i]` seconds on the fake clock; records every pull."""

    def __init__(self, clock: Clock, ready_at: list[float | None]) -> None:
        self.clock, self.ready_at, self.pulls = clock, ready_at, []

    def push_messages(self, messages: Iterable[object]) -> Iterable[str]:
        return [f"m{i}" for i, _ in enumerate(messages)]

    def pull_messages(self, message_ids: Iterable[str]) -> Iterable[SimpleNamespace]:
        asked = sorted(message_ids)
        self.pulls.append((self.clock.now, asked))
        ready = [i for i in asked if (at := self.ready_at[int(i[1:])]) is not None and at <= self.clock.now]
        return [SimpleNamespace(metadata=SimpleNamespace(reply_to_message_id=i)) for i in ready]


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> Clock:
    fake = Clock()
    monkeypatch.setattr(grid_polling.time, "monotonic", fake.monotonic)
    monkeypatch.setattr(grid_polling.time, "sleep", fake.sleep)
    return fake


def replied_to(replies: Iterable[SimpleNamespace]) -> list[str]:
    return [reply.metadata.reply_to_message_id for reply in replies]


def test_replies_are_seen_on_the_first_poll_after_they_arrive(clock: Clock) -> None:
    grid = ScriptedGrid(clock, ready_at=[0.25, 0.0, 0.31])
    replies = PollingGrid(grid).send_and_receive(["a", "b", "c"], timeout=120)
    assert replied_to(replies) == ["m1", "m0", "m2"]  # in arrival order
    # Polls at 0, 0.1, 0.2, 0.3, 0.4: m2 (in at 0.31 s) is seen at 0.4 s, where HttpGrid would see it at 3 s.
    assert clock.sleeps == [POLL_SECONDS] * 4 and clock.now == pytest.approx(0.4)
    # Only what is still outstanding is asked for again.
    assert [asked for _, asked in grid.pulls] == [["m0", "m1", "m2"], ["m0", "m2"], ["m0", "m2"], ["m0", "m2"], ["m2"]]


def test_the_timeout_returns_what_arrived_and_stops_polling(clock: Clock) -> None:
    grid = ScriptedGrid(clock, ready_at=[0.05, None])  # the second site never answers
    replies = PollingGrid(grid).send_and_receive(["a", "b"], timeout=0.35)
    assert replied_to(replies) == ["m0"]
    assert [round(at, 3) for at, _ in grid.pulls] == [0.0, 0.1, 0.2, 0.3]  # none at or after the deadline


def test_without_a_timeout_it_waits_for_every_reply(clock: Clock) -> None:
    grid = ScriptedGrid(clock, ready_at=[6.95])
    assert replied_to(PollingGrid(grid).send_and_receive(["a"], timeout=None)) == ["m0"]
    assert clock.now == pytest.approx(7.0)


def test_only_a_deployed_serverapps_grid_is_wrapped(clock: Clock) -> None:
    in_process = ScriptedGrid(clock, ready_at=[])
    assert grid_polling.prompt(in_process) is in_process
    http = HttpGrid.__new__(HttpGrid)  # no connection needed to be wrapped
    wrapped = grid_polling.prompt(http)
    assert isinstance(wrapped, PollingGrid) and wrapped.grid is http
