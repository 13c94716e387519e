"""RunConfig: every key typed and validated in one place, defaults only in pyproject.toml,
and the README's tables agree with the code (strategy registry) and pyproject (defaults)."""

from __future__ import annotations

import dataclasses
import re
import tomllib

import pytest

from flowerbed_training.common.run_config import RunConfig, RunConfigError
from flowerbed_training.common.strategies import STRATEGIES
from tests.inprocess import TRAINING_APP_DIR, config_with, run_config_with

README = (TRAINING_APP_DIR / "README.md").read_text()


def pyproject_defaults() -> dict[str, object]:
    document = tomllib.loads((TRAINING_APP_DIR / "pyproject.toml").read_text())
    return document["tool"]["flwr"]["app"]["config"]


def test_every_pyproject_key_is_a_field_and_every_field_a_pyproject_key():
    fields = {f.name.replace("_", "-") for f in dataclasses.fields(RunConfig)}
    assert fields == set(pyproject_defaults())


def test_the_defaults_parse_and_code_carries_none_of_its_own():
    config = config_with({})
    assert config.local_epochs == pyproject_defaults()["local-epochs"]
    assert config.lr == pyproject_defaults()["lr"]
    assert all(f.default is dataclasses.MISSING for f in dataclasses.fields(RunConfig))


def test_a_missing_key_is_an_error_not_a_silent_default():
    run_config = run_config_with({})
    del run_config["lr"]
    with pytest.raises(RunConfigError, match="run config lr: missing; training/pyproject.toml declares every key"):
        RunConfig.parse(run_config)


def test_an_unknown_key_is_named_with_the_allowed_ones():
    with pytest.raises(RunConfigError, match="run config learning-rate: not a key of this app; allowed: .*lr"):
        RunConfig.parse({**run_config_with({}), "learning-rate": 0.1})


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"strategy": "fedsgd"}, "run config strategy: 'fedsgd' must be one of fedavg, fedprox, scaffold"),
        ({"num-server-rounds": "ten"}, "run config num-server-rounds: 'ten' must be a int"),
        ({"num-server-rounds": True}, "run config num-server-rounds: True must be a int"),
        ({"round-timeout": 0.0}, "run config round-timeout: 0.0 must be > 0 seconds"),
        ({"trimmed-beta": 0.5}, r"run config trimmed-beta: 0.5 must be in \[0, 0.5\)"),
        ({"server-beta-1": 1.0}, r"run config server-beta-1: 1.0 must be in \[0, 1\)"),
        ({"server-beta-2": -0.1}, r"run config server-beta-2: -0.1 must be in \[0, 1\)"),
        ({"resume": "yes"}, "run config resume: 'yes' must be \"\" \\(a fresh run\\), \"latest\" or a run id"),
        ({"resume": True}, "run config resume: True must be a str"),
        ({"lr": 0}, "run config lr: 0.0 must be > 0"),
        ({"local-max-grad-norm": -1.0}, r"run config local-max-grad-norm: -1.0 must be >= 0 \(0: no clipping\)"),
        ({"local-epochs": 0}, "run config local-epochs: 0 must be >= 1"),
        ({"model": "resnet"}, "run config model: 'resnet' must be one of auto, mlp, cnn"),
        ({"partitioning": "skewed"}, "run config partitioning: 'skewed' must be one of iid, dirichlet, labels"),
        ({"local-dp-epsilon": 0.0}, "run config local-dp-epsilon: 0.0 must be > 0"),
        ({"local-dp-delta": 1.5}, r"run config local-dp-delta: 1.5 must be in \(0, 1\)"),
        ({"local-dp-max-grad-norm": "big"}, "run config local-dp-max-grad-norm: 'big' must be a float"),
        ({"central-dp": "both"}, "run config central-dp: 'both' must be one of off, server, client"),
        ({"central-dp-delta": 0.0}, r"run config central-dp-delta: 0.0 must be in \(0, 1\)"),
        ({"compression": "zip"}, "run config compression: 'zip' must be one of none, int8, topk"),
        ({"compression-topk-fraction": 0.0}, r"run config compression-topk-fraction: 0.0 must be in \(0, 1\]"),
        ({"secagg-num-shares": 2}, "run config secagg-num-shares: 2 must be >= 3"),
        ({"artifacts-root": ""}, "run config artifacts-root: '' must not be empty"),
    ],
)
def test_a_bad_value_names_the_key_and_what_is_allowed(overrides, message):
    with pytest.raises(RunConfigError, match=message):
        config_with(overrides)


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"min-available-sites": 1, "min-train-sites": 2}, "run config min-available-sites: 1 must be >= min-train-sites"),
        ({"local-dp": True, "amp": True}, "run config amp: True must be false with local-dp"),
        ({"central-dp": "server", "strategy": "scaffold"},
         "run config central-dp: 'server' must be 'off' with strategy 'scaffold'"),
        ({"central-dp": "client", "compression": "int8"}, "'client' clipping needs the plain weights"),
        ({"secagg-reconstruction-threshold": 3}, "run config secagg-reconstruction-threshold: 3 must be < secagg-num-shares"),
        ({"secagg": True, "strategy": "scaffold"}, "run config strategy: 'scaffold' must be one of fedavg when secagg is true"),
        ({"secagg": True, "compression": "int8"}, "run config compression: 'int8' must be 'none' when secagg is true"),
        ({"secagg": True, "central-dp": "server"}, "run config central-dp: 'server' must be 'off' when secagg is true"),
        ({"strategy": "krum", "krum-malicious": 1, "min-train-sites": 3, "min-available-sites": 3},
         r"run config krum-malicious: 1 needs min-train-sites > 2\*krum-malicious \+ 2 = 4"),
    ],
)
def test_rules_across_keys_name_the_key_to_change(overrides, message):
    with pytest.raises(RunConfigError, match=message):
        config_with(overrides)


def _table_after(heading: str) -> list[list[str]]:
    """The first Markdown table after `heading`, as rows of cells (header and rule left out)."""
    lines = README.split(heading, 1)[1].splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("|"))
    end = next((i for i in range(start, len(lines)) if not lines[i].startswith("|")), len(lines))
    return [[cell.strip() for cell in line.strip("|").split(" | ")] for line in lines[start + 2:end]]


def test_the_readme_strategy_table_is_the_registry():
    rows = _table_after("## Strategies")
    assert [(row[0].strip("`"), row[1]) for row in rows] == [(name, s.summary) for name, s in STRATEGIES.items()]


def _readme_default(text: str) -> object:
    return text.strip("`") if text.startswith("`") else tomllib.loads(f"v = {text}")["v"]


def test_the_readme_run_config_table_has_every_key_with_pyprojects_default():
    documented: dict[str, object] = {}
    for keys, defaults, _ in _table_after("## Run config"):
        names = re.findall(r"`([a-z0-9-]+)`", keys)
        values = [_readme_default(v.strip()) for v in defaults.split(", ")]
        assert len(names) == len(values), keys
        documented |= dict(zip(names, values, strict=True))
    assert documented == pyproject_defaults()
