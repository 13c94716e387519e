"""The server's view of the run config: typed, validated, one clear error per bad key."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

STRATEGIES = ("fedavg", "fedprox", "scaffold", "fedadam", "fedyogi", "fedmedian", "fedtrimmedavg", "krum")
ASYNC_STRATEGIES = ("fedbuff",)  # not Flower's round loop: fedbuff.py, with the async-* settings


class SettingsError(ValueError):
    """A run-config value cannot work; the message names the key and what is allowed."""


def _get(run_config: Mapping[str, Any], key: str, kind: type, default: Any) -> Any:
    value = run_config.get(key, default)
    if kind is float and isinstance(value, int) and not isinstance(value, bool):
        value = float(value)
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        raise SettingsError(f"run config {key}: {value!r} must be a {kind.__name__}")
    return value


@dataclass(frozen=True)
class ServerSettings:
    num_rounds: int
    strategy: str
    proximal_mu: float
    server_lr: float
    scaffold_global_lr: float
    server_tau: float
    trimmed_beta: float
    krum_malicious: int
    fraction_train: float
    fraction_evaluate: float
    min_train_sites: int
    min_available_sites: int
    round_timeout: float
    artifacts_dir: Path
    resume: bool
    checkpoint_keep: int

    @staticmethod
    def from_run_config(run_config: Mapping[str, Any]) -> ServerSettings:
        settings = ServerSettings(
            num_rounds=_get(run_config, "num-server-rounds", int, 10),
            strategy=_get(run_config, "strategy", str, "fedavg"),
            proximal_mu=_get(run_config, "proximal-mu", float, 0.01),
            server_lr=_get(run_config, "server-lr", float, 0.01),
            scaffold_global_lr=_get(run_config, "scaffold-global-lr", float, 1.0),
            server_tau=_get(run_config, "server-tau", float, 1e-3),
            trimmed_beta=_get(run_config, "trimmed-beta", float, 0.2),
            krum_malicious=_get(run_config, "krum-malicious", int, 0),
            fraction_train=_get(run_config, "fraction-train", float, 1.0),
            fraction_evaluate=_get(run_config, "fraction-evaluate", float, 1.0),
            min_train_sites=_get(run_config, "min-train-sites", int, 2),
            min_available_sites=_get(run_config, "min-available-sites", int, 2),
            round_timeout=_get(run_config, "round-timeout", float, 600.0),
            artifacts_dir=Path(_get(run_config, "artifacts-dir", str, "artifacts")),
            resume=_get(run_config, "resume", bool, False),
            checkpoint_keep=_get(run_config, "checkpoint-keep", int, 3),
        )
        settings.validate()
        return settings

    def validate(self) -> None:
        checks = [
            ("num-server-rounds", self.num_rounds, self.num_rounds >= 1, "must be >= 1"),
            ("strategy", self.strategy, self.strategy in STRATEGIES + ASYNC_STRATEGIES,
             f"must be one of {', '.join(STRATEGIES + ASYNC_STRATEGIES)}"),
            ("proximal-mu", self.proximal_mu, self.proximal_mu >= 0, "must be >= 0"),
            ("server-lr", self.server_lr, self.server_lr > 0, "must be > 0"),
            ("scaffold-global-lr", self.scaffold_global_lr, self.scaffold_global_lr > 0, "must be > 0"),
            ("server-tau", self.server_tau, self.server_tau > 0, "must be > 0"),
            ("trimmed-beta", self.trimmed_beta, 0 <= self.trimmed_beta < 0.5, "must be in [0, 0.5)"),
            ("krum-malicious", self.krum_malicious, self.krum_malicious >= 0, "must be >= 0"),
            ("fraction-train", self.fraction_train, 0 < self.fraction_train <= 1, "must be in (0, 1]"),
            ("fraction-evaluate", self.fraction_evaluate, 0 <= self.fraction_evaluate <= 1, "must be in [0, 1]"),
            ("min-train-sites", self.min_train_sites, self.min_train_sites >= 1, "must be >= 1"),
            ("min-available-sites", self.min_available_sites, self.min_available_sites >= self.min_train_sites,
             "must be >= min-train-sites"),
            ("round-timeout", self.round_timeout, self.round_timeout > 0, "must be > 0 seconds"),
            ("checkpoint-keep", self.checkpoint_keep, self.checkpoint_keep >= 1, "must be >= 1"),
        ]
        for key, value, ok, rule in checks:
            if not ok:
                raise SettingsError(f"run config {key}: {value!r} {rule}")


@dataclass(frozen=True)
class ClientSettings:
    local_epochs: int
    batch_size: int
    lr: float
    amp: bool
    seed: int

    @staticmethod
    def from_run_config(run_config: Mapping[str, Any]) -> ClientSettings:
        settings = ClientSettings(
            local_epochs=_get(run_config, "local-epochs", int, 1),
            batch_size=_get(run_config, "batch-size", int, 32),
            lr=_get(run_config, "lr", float, 0.05),
            amp=_get(run_config, "amp", bool, False),
            seed=_get(run_config, "seed", int, 42),
        )
        for key, ok in (("local-epochs", settings.local_epochs >= 1),
                        ("batch-size", settings.batch_size >= 1), ("lr", settings.lr > 0)):
            if not ok:
                raise SettingsError(f"run config {key}: {getattr(settings, key.replace('-', '_'))!r} must be > 0")
        return settings
