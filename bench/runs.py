"""Run the real app in process (tests/inprocess.py) and read what it recorded."""

from __future__ import annotations

import logging
import tempfile
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from tests.inprocess import InProcessGrid, builtin_sites, run_config_with, run_dir, run_federation
from flowerbed_training.server.round_log import read_metrics


@dataclass(frozen=True)
class FederatedRun:
    run_config: dict[str, Any]
    lines: list[dict[str, Any]]  # metrics.jsonl, one per round
    seconds: float  # wall time of the whole run, survey included
    parameters: int  # entries of the final model

    @property
    def final_accuracy(self) -> float:
        return float(self.lines[-1]["accuracy"])

    @property
    def accuracies(self) -> list[float]:
        """The global model's accuracy after each round."""
        return [float(line["accuracy"]) for line in self.lines]

    def seconds_to(self, accuracy: float) -> float | None:
        """Seconds of round time until the global model first reached `accuracy` (None: never)."""
        elapsed = 0.0
        for line in self.lines:
            elapsed += float(line["seconds"])
            if line["accuracy"] is not None and line["accuracy"] >= accuracy:
                return elapsed
        return None

    def rounds_to(self, accuracy: float) -> int | None:
        return next((int(l["round"]) for l in self.lines if l["accuracy"] is not None and l["accuracy"] >= accuracy), None)

    def mean(self, field: str) -> float:
        return sum(float(line[field]) for line in self.lines) / len(self.lines)


def federated(sites: int, overrides: Mapping[str, Any], grid_type: type[InProcessGrid] = InProcessGrid,
              train_seconds: Mapping[int, float] | None = None) -> FederatedRun:
    """One in-process run; every site trains every round unless `overrides` lower `min-train-sites`.
    `grid_type` ConcurrentGrid: sites in threads, so a slow site can lag behind the others;
    `train_seconds`: site index -> seconds its training is padded to (tests/slow_sites.py)."""
    with tempfile.TemporaryDirectory(prefix="flowerbed-bench-") as artifacts:
        run_config = run_config_with({"min-train-sites": sites, **overrides, "artifacts-root": artifacts,
                                      "min-available-sites": sites})
        started = time.perf_counter()
        run_federation(builtin_sites(sites, train_seconds=train_seconds), run_config, grid_type=grid_type)
        seconds = time.perf_counter() - started
        directory = run_dir(Path(artifacts))
        with np.load(directory / "final_model.npz") as model:
            parameters = sum(model[name].size for name in model.files)
        return FederatedRun(run_config, read_metrics(directory), seconds, int(parameters))


def warm_up() -> None:
    """One tiny unreported run: the first run in a process pays imports and lazy initialisation."""
    federated(2, {"dataset": "builtin:breast-cancer", "num-server-rounds": 1})


def quiet_flower() -> None:
    # Flower logs every round at INFO; the bench prints its own tables.
    logging.getLogger("flwr").setLevel(logging.WARNING)
