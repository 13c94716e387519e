"""Central differential privacy on the server: Flower's fixed-clipping wrappers, and the epsilon they spend.

Flower's wrappers (`central-dp` = `server` or `client`) clip each site's update to
`central-dp-clipping-norm` and add Gaussian noise to the aggregate; `CentralDpAccountant`
composes that mechanism over the aggregated rounds. The site's half (client-side
clipping, local DP-SGD) is client/privacy.py.
"""

from __future__ import annotations

from dataclasses import dataclass

from flwr.serverapp.strategy import (
    DifferentialPrivacyClientSideFixedClipping,
    DifferentialPrivacyServerSideFixedClipping,
    Strategy,
)

from flowerbed_training.common import rdp
from flowerbed_training.common.run_config import RunConfig


def sites_per_round(config: RunConfig, connected: int) -> int:
    """Sites sampled per round: Flower's `fraction-train` share of the connected sites, at least `min-train-sites`."""
    return max(int(connected * config.fraction_train), config.min_train_sites)


def wrap_central_dp(strategy: Strategy, config: RunConfig, num_sampled_clients: int) -> Strategy:
    """Wrap `strategy` in Flower's fixed-clipping DP wrapper, or return it as is when `central-dp` is off.

    Flower's wrappers skip a round's aggregation when any site answered with
    an error, and scale the noise by `num_sampled_clients`: pass the number of
    sites sampled per round.
    """
    if config.central_dp == "off":
        return strategy
    wrapper = (
        DifferentialPrivacyServerSideFixedClipping
        if config.central_dp == "server"
        else DifferentialPrivacyClientSideFixedClipping
    )
    return wrapper(strategy, config.central_dp_noise_multiplier, config.central_dp_clipping_norm,
                   num_sampled_clients)


@dataclass(frozen=True)
class CentralDpAccountant:
    """Epsilon of the central-DP Gaussian mechanism after some aggregated rounds (site-level DP).

    Flower's fixed-clipping wrappers bound every site's update by the clipping
    norm C and add N(0, (z C / m)^2) to the mean of m sampled updates, i.e.
    N(0, (z C)^2) to their sum, whose sensitivity to one site is C: a Gaussian
    mechanism with noise multiplier z per round, applied to a q = m / N share
    of the sites. Opacus' RDP accountant composes it over the rounds (Mironov
    2017, "Renyi Differential Privacy"; Mironov, Talwar, Zhang 2019 for the
    subsampled Gaussian). The subsampled bound assumes Poisson sampling, which
    Flower's fixed-size sampling approximates; with q = 1 (every site each
    round, the default) it is exact.
    """

    noise_multiplier: float  # z, run config central-dp-noise-multiplier
    sample_rate: float  # q = sites sampled per round / sites connected, in (0, 1]
    delta: float  # run config central-dp-delta

    @staticmethod
    def of(config: RunConfig, connected: int) -> CentralDpAccountant | None:
        """None when central DP is off."""
        if config.central_dp == "off":
            return None
        rate = min(1.0, sites_per_round(config, connected) / max(connected, 1))
        return CentralDpAccountant(config.central_dp_noise_multiplier, rate, config.central_dp_delta)

    def epsilon(self, rounds: int) -> float | None:
        """Epsilon spent after `rounds` noised aggregates; None when there is no noise (no guarantee)."""
        if self.noise_multiplier == 0:
            return None
        return rdp.epsilon([(self.noise_multiplier, self.sample_rate, rounds)] if rounds else [], self.delta)

