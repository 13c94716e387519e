"""The ServerApp's strategies: each synchronous strategy of the registry (common/strategies.py) built from
the run config, and their checkpointable state. FedBuff, the asynchronous one, is its own training
path (fedbuff.py), so it has no builder here; a test checks that the builders cover exactly the
registry's synchronous strategies.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

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

from flowerbed_training.common.run_config import RunConfig
from flowerbed_training.common.strategies import STRATEGIES
from flowerbed_training.server.scaffold import Scaffold


def _server_optimizer(c: RunConfig) -> dict[str, float]:
    """FedOpt's keywords (Reddi et al. 2021, Algorithm 2; flwr.serverapp.strategy.fedopt):
    server step eta, client lr eta_l, adaptivity tau, first- and second-moment decays."""
    return {"eta": c.server_lr, "eta_l": c.lr, "tau": c.server_tau,
            "beta_1": c.server_beta_1, "beta_2": c.server_beta_2}


# (config, common Flower options) -> strategy, for every synchronous strategy of STRATEGIES
BUILDERS: dict[str, Callable[[RunConfig, dict[str, Any]], Strategy]] = {
    "fedavg": lambda c, common: FedAvg(**common),
    "fedprox": lambda c, common: FedProx(**common, proximal_mu=c.proximal_mu),
    "scaffold": lambda c, common: Scaffold(**common, server_lr=c.scaffold_global_lr),
    "fedadam": lambda c, common: FedAdam(**common, **_server_optimizer(c)),
    "fedyogi": lambda c, common: FedYogi(**common, **_server_optimizer(c)),
    "fedmedian": lambda c, common: FedMedian(**common),
    "fedtrimmedavg": lambda c, common: FedTrimmedAvg(**common, beta=c.trimmed_beta),
    "krum": lambda c, common: Krum(**common, num_malicious_nodes=c.krum_malicious),
}


def build_strategy(config: RunConfig) -> Strategy:
    """The Flower Message-API strategy (or SCAFFOLD, which Flower lacks) that `config` names."""
    if STRATEGIES[config.strategy].asynchronous:
        raise ValueError(f"strategy {config.strategy!r} is not a Flower strategy; it has its own training path")
    common = dict(
        fraction_train=config.fraction_train,
        fraction_evaluate=config.fraction_evaluate,
        min_train_nodes=config.min_train_sites,
        min_evaluate_nodes=config.min_train_sites if config.fraction_evaluate > 0 else 0,
        min_available_nodes=config.min_available_sites,
    )
    return BUILDERS[config.strategy](config, common)


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
