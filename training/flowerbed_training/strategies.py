"""The aggregation strategy chosen by run config `strategy`, and its checkpointable state."""

from __future__ import annotations

import numpy as np
from flwr.serverapp.strategy import (
    FedAdam,
    FedAvg,
    FedMedian,
    FedProx,
    FedTrimmedAvg,
    FedYogi,
    Krum,
    Strategy,
)

from flwr.serverapp.strategy.fedopt import FedOpt  # not re-exported: FedAdam's and FedYogi's base

from flowerbed_training.scaffold import Scaffold
from flowerbed_training.settings import ServerSettings, SettingsError


def build_strategy(settings: ServerSettings, local_lr: float) -> Strategy:
    """A Flower Message-API strategy (or SCAFFOLD, which Flower lacks) for these settings."""
    common = dict(
        fraction_train=settings.fraction_train,
        fraction_evaluate=settings.fraction_evaluate,
        min_train_nodes=settings.min_train_sites,
        min_evaluate_nodes=settings.min_train_sites if settings.fraction_evaluate > 0 else 0,
        min_available_nodes=settings.min_available_sites,
    )
    name = settings.strategy
    if name == "fedavg":
        return FedAvg(**common)
    if name == "fedprox":
        return FedProx(**common, proximal_mu=settings.proximal_mu)
    if name == "scaffold":
        return Scaffold(**common, server_lr=settings.scaffold_global_lr)
    if name in ("fedadam", "fedyogi"):
        adaptive = FedAdam if name == "fedadam" else FedYogi
        return adaptive(**common, eta=settings.server_lr, eta_l=local_lr, tau=settings.server_tau)
    if name == "fedmedian":
        return FedMedian(**common)
    if name == "fedtrimmedavg":
        return FedTrimmedAvg(**common, beta=settings.trimmed_beta)
    if name == "krum":
        if settings.min_train_sites <= 2 * settings.krum_malicious + 2:
            raise SettingsError(
                f"run config krum-malicious: {settings.krum_malicious} needs min-train-sites > "
                f"2*krum-malicious + 2 = {2 * settings.krum_malicious + 2} (Krum's guarantee)"
            )
        return Krum(**common, num_malicious_nodes=settings.krum_malicious)
    raise SettingsError(f"run config strategy: {name!r} is unknown")


def strategy_state(strategy: Strategy) -> dict[str, np.ndarray]:
    """Server-side optimizer state that a resumed run needs (flat `group/key` names)."""
    groups: dict[str, dict[str, np.ndarray] | None] = {}
    if isinstance(strategy, Scaffold):
        groups["control"] = strategy.control
    if isinstance(strategy, FedOpt):
        groups["m_t"], groups["v_t"] = strategy.m_t, strategy.v_t
    return {f"{group}/{key}": value for group, arrays in groups.items() if arrays
            for key, value in arrays.items()}


def restore_strategy_state(strategy: Strategy, state: dict[str, np.ndarray]) -> None:
    def group(name: str) -> dict[str, np.ndarray] | None:
        found = {k.split("/", 1)[1]: v for k, v in state.items() if k.startswith(name + "/")}
        return found or None

    if isinstance(strategy, Scaffold):
        strategy.control = group("control")
    if isinstance(strategy, FedOpt):
        strategy.m_t, strategy.v_t = group("m_t"), group("v_t")
