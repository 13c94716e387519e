"""The strategy registry (run config `strategy`), and the strategies' checkpointable state.

`STRATEGIES` is the one list of strategy names: run-config validation takes the
allowed names and the cross-key rules from it, and training/README.md's strategy
table is checked against it (tests/training/test_run_config.py). A new strategy
is one more entry here.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

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

if TYPE_CHECKING:
    from flowerbed_training.run_config import RunConfig


@dataclass(frozen=True)
class Registered:
    """One strategy: how to build it from the run config and what it combines with."""

    # (config, common Flower options) -> strategy; None: not a Flower strategy but its own training path
    build: Callable[[RunConfig, dict[str, Any]], Strategy] | None
    summary: str  # the README's strategy table says the same
    secagg: bool = False  # SecAgg+ computes a weighted sum of models, i.e. FedAvg only
    central_dp: bool = True  # Flower's DP wrappers clip every ArrayRecord of a reply
    central_dp_conflict: str = ""  # why not, when central_dp is False

    @property
    def asynchronous(self) -> bool:
        """No synchronous rounds: the strategy is its own loop, not a Flower strategy (fedbuff.py;
        server_app.training_path)."""
        return self.build is None


def _server_optimizer(c: RunConfig) -> dict[str, float]:
    """FedOpt's keywords (Reddi et al. 2021, Algorithm 2; flwr.serverapp.strategy.fedopt):
    server step eta, client lr eta_l, adaptivity tau, first- and second-moment decays."""
    return {"eta": c.server_lr, "eta_l": c.lr, "tau": c.server_tau,
            "beta_1": c.server_beta_1, "beta_2": c.server_beta_2}


STRATEGIES: dict[str, Registered] = {
    "fedavg": Registered(lambda c, common: FedAvg(**common),
                         "Flower's FedAvg: the example-weighted mean of the sites' models", secagg=True),
    "fedprox": Registered(lambda c, common: FedProx(**common, proximal_mu=c.proximal_mu),
                          "Flower's FedProx: FedAvg plus a proximal term `proximal-mu` at the sites"),
    "scaffold": Registered(
        lambda c, common: Scaffold(**common, server_lr=c.scaffold_global_lr),
        "SCAFFOLD (scaffold.py): control variates correct each site's drift",
        central_dp=False, central_dp_conflict="the wrappers would clip its control-variate record"),
    "fedadam": Registered(
        lambda c, common: FedAdam(**common, **_server_optimizer(c)),
        "Flower's FedAdam: Adam on the server, step `server-lr`, adaptivity `server-tau`, moments `server-beta-1/2`"),
    "fedyogi": Registered(
        lambda c, common: FedYogi(**common, **_server_optimizer(c)),
        "Flower's FedYogi: Yogi on the server, step `server-lr`, adaptivity `server-tau`, moments `server-beta-1/2`"),
    "fedmedian": Registered(lambda c, common: FedMedian(**common),
                            "Flower's FedMedian: the coordinate-wise median (robust to outliers)"),
    "fedtrimmedavg": Registered(lambda c, common: FedTrimmedAvg(**common, beta=c.trimmed_beta),
                                "Flower's FedTrimmedAvg: the mean without a `trimmed-beta` share at each end"),
    "krum": Registered(lambda c, common: Krum(**common, num_malicious_nodes=c.krum_malicious),
                       "Flower's Krum: the model closest to its neighbours, tolerating `krum-malicious` sites"),
    "fedbuff": Registered(
        None, "FedBuff (fedbuff.py): asynchronous; every site always busy, a server step every "
        "`async-buffer-size` replies, stale replies down-weighted (`async-*`)",
        central_dp=False, central_dp_conflict="its server steps are not one synchronous round's aggregate"),
}


def build_strategy(config: RunConfig) -> Strategy:
    """The Flower Message-API strategy (or SCAFFOLD, which Flower lacks) that `config` names."""
    common = dict(
        fraction_train=config.fraction_train,
        fraction_evaluate=config.fraction_evaluate,
        min_train_nodes=config.min_train_sites,
        min_evaluate_nodes=config.min_train_sites if config.fraction_evaluate > 0 else 0,
        min_available_nodes=config.min_available_sites,
    )
    build = STRATEGIES[config.strategy].build
    if build is None:
        raise ValueError(f"strategy {config.strategy!r} is not a Flower strategy; it has its own training path")
    return build(config, common)


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
