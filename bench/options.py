"""What every benchmark is run with (command-line options of `python -m bench`)."""

from __future__ import annotations

import tomllib
from dataclasses import dataclass

from flowerbed_training.common.builtin_data import builtin_site_train_sets
from flowerbed_training.common.run_config import RunConfig
from tests.inprocess import run_config_with


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


def check(options: Options) -> None:
    """ValueError naming the option or run-config key when a benchmark's runs could not start: the counts,
    the target, and for each dataset the run config its runs share (the app's own rules) and its sites'
    shares of the data (the survey's, common/builtin_data.py)."""
    for name, value in (("--sites", options.sites), ("--rounds", options.rounds), ("--seeds", options.seeds)):
        if value < 1:
            raise ValueError(f"{name} {value}: must be >= 1")
    if not 0 < options.target_accuracy <= 1:
        raise ValueError(f"--target-accuracy {options.target_accuracy}: must be in (0, 1]")
    for dataset in options.datasets():
        try:
            run_config = run_config_with({**options.base(), "dataset": dataset, "min-train-sites": options.sites,
                                          "min-available-sites": options.sites})
        except ValueError as err:  # Flower's fuse: a key training/pyproject.toml does not declare
            raise ValueError(f"--set: {err}; the keys are training/pyproject.toml's") from None
        config = RunConfig.parse(run_config)
        if not config.builtin:
            raise ValueError(f"--dataset {dataset}: the benchmarks run on built-in data (builtin:...) only")
        builtin_site_train_sets(config, options.sites)


def run_config_value(assignment: str) -> tuple[str, object]:
    """`KEY=VALUE` with VALUE read as a TOML value (as `flwr run --run-config` does); bare words are strings."""
    key, sep, value = assignment.partition("=")
    if not sep or not key:
        raise ValueError(f"--set {assignment!r}: expected KEY=VALUE")
    try:
        return key, tomllib.loads(f"v = {value}")["v"]
    except tomllib.TOMLDecodeError:
        return key, value
