"""`python -m bench` refuses options its runs could not start with, before any run (bench/options.py: check)."""

import dataclasses

import pytest

from bench.options import Options, check
from bench.stragglers import DEFAULTS as STRAGGLERS


@pytest.mark.parametrize(("change", "message"), [
    ({"sites": 0}, "--sites 0: must be >= 1"),
    ({"seeds": 0}, "--seeds 0: must be >= 1"),
    ({"target_accuracy": 1.5}, r"--target-accuracy 1.5: must be in \(0, 1\]"),
    ({"dataset": "builtin:nope"}, "run config dataset: 'builtin:nope' must be builtin:breast-cancer or builtin:digits"),
    ({"dataset": "oncology/biopsies"}, r"--dataset oncology/biopsies: the benchmarks run on built-in data"),
    ({"overrides": (("no-such-key", 1),)}, "--set: Key 'no-such-key' is not present .*training/pyproject.toml's"),
    ({"overrides": (("lr", -1.0),)}, "run config lr: -1.0 must be > 0"),
    ({"sites": 100, "dataset": "builtin:breast-cancer"}, "num-partitions: 100 sites need at least 1000 examples"),
])
def test_an_option_no_run_could_start_with_is_named(change: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        check(dataclasses.replace(Options(), **change))


def test_the_benchmarks_own_defaults_pass() -> None:
    check(Options())
    check(STRAGGLERS)
