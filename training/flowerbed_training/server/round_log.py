"""What one round did, and `metrics.jsonl`: one JSON line per round in the run's directory."""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

METRICS_FILE = "metrics.jsonl"


@dataclass
class RoundLog:
    """One round, filled in by the parts that see it (README.md, metrics.jsonl, says what each field means)."""

    round: int
    started: float = field(default_factory=time.perf_counter)
    sites: list[str] = field(default_factory=list)
    failed: dict[str, str] = field(default_factory=dict)
    bytes_down: int = 0
    bytes_up: int = 0
    eval_bytes_down: int = 0
    aggregated: bool = False
    contribution: dict[str, float | None] = field(default_factory=dict)
    epsilon: dict[str, float | None] = field(default_factory=dict)
    central_epsilon: float | None = None
    train_loss: float | None = None
    federated_loss: float | None = None
    federated_accuracy: float | None = None
    # fedbuff.py's own fields (version, replies, dropped, elapsed); None on the synchronous paths
    asynchronous: dict[str, Any] | None = None

    def line(self, central: tuple[float, float] | None) -> dict[str, Any]:
        """The metrics.jsonl line; `central` is (loss, accuracy) on the server's test set, if it has one."""
        loss, accuracy = central if central else (self.federated_loss, self.federated_accuracy)
        return {**(self.asynchronous or {}),
            "round": self.round,
            "loss": loss,
            "accuracy": accuracy,
            "evaluated_on": "server-test-set" if central else "sites" if accuracy is not None else None,
            "sites": self.sites,
            "failed": self.failed,
            "aggregated": self.aggregated,
            "bytes_up": self.bytes_up,
            "bytes_down": self.bytes_down,
            "eval_bytes_down": self.eval_bytes_down,
            "seconds": round(time.perf_counter() - self.started, 4),
            "contribution": dict(sorted(self.contribution.items())),
            "epsilon": dict(sorted(self.epsilon.items())),
            "central_epsilon": self.central_epsilon,
            "train_loss": self.train_loss,
            "federated_loss": self.federated_loss,
            "federated_accuracy": self.federated_accuracy,
        }


def append_metrics(directory: Path, line: dict[str, Any]) -> None:
    """One JSON object per round in `<directory>/metrics.jsonl` (the metrics contract, federate/README.md)."""
    with (directory / METRICS_FILE).open("a") as metrics_file:
        metrics_file.write(json.dumps(line) + "\n")


def read_metrics(directory: Path) -> list[dict[str, Any]]:
    path = directory / METRICS_FILE
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []
