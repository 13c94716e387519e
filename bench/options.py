"""What every benchmark is run with (command-line options of `python -m bench`)."""

from __future__ import annotations

import tomllib
from dataclasses import dataclass


@dataclass(frozen=True)
class Options:
    # Digits (8x8 images, 10 classes, CNN) separates the strategies under label
    # skew; breast cancer is too easy (every setup reaches ~0.96 in a few rounds).
    dataset: str = "builtin:digits"  # comma-separated for benchmarks that take several
    sites: int = 5
    rounds: int = 8
    target_accuracy: float = 0.9  # for time-to-accuracy and rounds-to-accuracy
    seeds: int = 1  # run-config seeds 0 .. seeds-1 (benchmarks that report mean +- std)
    overrides: tuple[tuple[str, object], ...] = ()  # `--set KEY=VALUE` run-config values

    def base(self) -> dict[str, object]:
        """Run config shared by every run of a benchmark."""
        return {"dataset": self.dataset, "num-server-rounds": self.rounds, **dict(self.overrides)}

    def datasets(self) -> list[str]:
        return self.dataset.split(",")


def run_config_value(assignment: str) -> tuple[str, object]:
    """`KEY=VALUE` with VALUE read as a TOML value (as `flwr run --run-config` does); bare words are strings."""
    key, sep, value = assignment.partition("=")
    if not sep or not key:
        raise ValueError(f"--set {assignment!r}: expected KEY=VALUE")
    try:
        return key, tomllib.loads(f"v = {value}")["v"]
    except tomllib.TOMLDecodeError:
        return key, value
