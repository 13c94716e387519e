"""From federate's options to the run config the submitted app gets."""

from __future__ import annotations

import argparse
import shlex
import sys
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from flwr.common.config import parse_config_args

from federate.app import FlowerApp
from federate.job import RunFailed
from federate.sites import Site

if TYPE_CHECKING:
    from flowerbed_training.common.run_config import RunConfig

# --dp: the training app's privacy keys (training/README.md).
DP_MODES = {
    "off": {},
    "local": {"local-dp": True},
    "central-server": {"central-dp": "server"},
    "central-client": {"central-dp": "client"},
}
DEFAULT_ROUND_TIMEOUT_S = 120.0  # the training app's own default (600 s) is for pods; every site here is idle


def chosen_options(args: argparse.Namespace) -> list[tuple[str, str, Any]]:
    """(flag, run-config key, value) for every option given on the command line."""
    chosen = [(flag, key, value) for flag, key, value in (
        ("--rounds", "num-server-rounds", args.rounds),
        ("--strategy", "strategy", args.strategy),
        ("--dataset", "dataset", args.dataset),
        ("--round-timeout", "round-timeout", args.round_timeout),
    ) if value is not None]
    chosen += [("--dp", key, value) for key, value in DP_MODES[args.dp].items()]
    if args.secagg:
        chosen.append(("--secagg", "secagg", True))
    return chosen


def run_overrides(args: argparse.Namespace, sites: Sequence[Site], app: FlowerApp) -> dict[str, Any]:
    """What federate changes in the app's run config; everything else is the app's own default."""
    options = chosen_options(args)
    for flag, key, _ in options:
        if key not in app.run_config:
            raise RunFailed(f"{flag} sets run config `{key}`, which {app.pyproject} does not declare; "
                            f"use -c KEY=VALUE with the app's own keys ({', '.join(sorted(app.run_config)) or 'none'})")
    overrides: dict[str, Any] = {}
    if app.reports_metrics:
        overrides[str(app.artifacts_key)] = str(args.out_dir.resolve())  # where federate reads metrics.jsonl
    if app.is_training:
        # Every local site is up before the run starts, so sample all of them every round.
        overrides["min-available-sites"] = len(sites)
        overrides["round-timeout"] = DEFAULT_ROUND_TIMEOUT_S
    overrides.update({key: value for _, key, value in options})
    overrides.update(config_arguments(args.run_config))
    dataset = str(overrides.get("dataset", app.run_config.get("dataset", "")))
    if app.is_training and dataset.startswith("builtin:") and "fraction-evaluate" not in overrides:
        # Built-in data: the ServerApp scores every round on the global held-out test set
        # already. Flower starts a ClientApp process per message, so skipping the sites'
        # own evaluation halves each round's start-ups (-c fraction-evaluate=1.0 restores it).
        overrides["fraction-evaluate"] = 0.0
    return overrides


def config_arguments(entries: Sequence[str]) -> dict[str, Any]:
    """The `-c` values, read as `flwr run --run-config` reads them (Flower's parse_config_args): KEY=VALUE
    pairs of TOML values, or a .toml file. ValueError naming the entry where Flower would fail with its
    own exception (a value that is not TOML, such as an unquoted string) or silently drop a pair (no `=`,
    no value)."""
    overrides: dict[str, Any] = {}
    for entry in entries:
        hint = f"-c {entry}: expected KEY=VALUE pairs of TOML values (a string needs quotes: -c 'strategy=\"fedprox\"')"
        if entry.endswith(".toml"):  # a file of values, as flwr takes it
            try:
                overrides.update(parse_config_args([entry]))
            except (OSError, ValueError) as err:
                raise ValueError(f"-c {entry}: cannot be read as a TOML file ({err})") from None
            continue
        try:
            pairs = shlex.split(entry)
            parsed = parse_config_args([entry])
        # shlex: unbalanced quotes (ValueError); Flower: a value that is not TOML (click's ClickException,
        # not caught by name: click is Flower's dependency, not this project's)
        except Exception:  # noqa: BLE001
            raise ValueError(hint) from None
        if len(parsed) != len(pairs):
            raise ValueError(hint)
        overrides.update(parsed)
    return overrides


def validate_training_run_config(app: FlowerApp, run_config: dict[str, Any]) -> RunConfig:
    """The training app's own validation, before any process starts (errors name the key)."""
    if str(app.directory) not in sys.path:
        sys.path.insert(0, str(app.directory))  # the app's own modules, as its ServerApp imports them
    from flowerbed_training.common.run_config import RunConfig

    # Otherwise a bad value would only surface as the ServerApp's failure or error replies from the sites.
    return RunConfig.parse(run_config)
