"""Run the real app in process and keep what crossed the grid on the server's side."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import pytest
from flwr.app import Message
from flwr.common.serde import message_from_proto, message_to_proto

from tests.inprocess import InProcessGrid, builtin_sites, run_config_with, run_dir, run_federation


@dataclass
class InterceptedRun:
    artifacts: Path  # the run's directory
    sent: list[Message] = field(default_factory=list)  # every message the server pushed
    received: list[Message] = field(default_factory=list)  # every reply the server pulled

    def sent_in_round(self, message_type: str, server_round: int) -> list[Message]:
        return [m for m in self.sent if m.metadata.message_type == message_type and _round(m) == server_round]


def _round(message: Message) -> int | None:
    config = message.content.config_records.get("config")
    return int(config["server-round"]) if config is not None and "server-round" in config else None  # type: ignore[arg-type]


def _copy(message: Message) -> Message:
    return message_from_proto(message_to_proto(message))


def run_intercepted(artifacts_root: Path, sites: int, **overrides: object) -> InterceptedRun:
    """Run the app's ServerApp and ClientApp on `sites` built-in sites with run config `overrides`."""
    run = InterceptedRun(run_dir(artifacts_root))
    push, pull = InProcessGrid.push_messages, InProcessGrid.pull_messages

    def recording_push(grid: InProcessGrid, messages):  # type: ignore[no-untyped-def]
        messages = list(messages)
        message_ids = push(grid, messages)
        # Copies as they went on the wire: Flower reuses one ConfigRecord across rounds.
        run.sent.extend(_copy(m) for m in messages)
        return message_ids

    def recording_pull(grid: InProcessGrid, message_ids):  # type: ignore[no-untyped-def]
        replies = list(pull(grid, message_ids))
        # Copies: strategies (e.g. Flower's DP wrappers) modify replies in place.
        run.received.extend(_copy(r) for r in replies)
        return replies

    run_config = run_config_with({"artifacts-root": str(artifacts_root), "min-train-sites": sites,
                                  "min-available-sites": sites, **overrides})
    with pytest.MonkeyPatch.context() as monkeypatch:
        monkeypatch.setattr(InProcessGrid, "push_messages", recording_push)
        monkeypatch.setattr(InProcessGrid, "pull_messages", recording_pull)
        run_federation(builtin_sites(sites), run_config)
    return run
