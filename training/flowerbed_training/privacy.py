"""Differential privacy: local DP at each site (Opacus) and central DP (Flower's wrappers,
with an RDP accountant for the epsilon they spend).

Local DP budget, per site and per RUN. The target (epsilon, delta) covers the
whole run, not one round: the noise multiplier is computed once, for every
step the site will take in the run (rounds x local epochs x batches), and the
RDP accountant's history is kept in the site's `context.state` between
rounds (a ClientApp is re-created for every message, so nothing else
survives). A round that would push the site past its target is refused.

Opacus is attached with `wrap_model=False`: hooks on the app's own model, so
there is no GradSampleModule and the state_dict keys the server sends still
match.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from flwr.app import ConfigRecord, Context, Message, RecordDict
from flwr.clientapp.mod import fixedclipping_mod
from flwr.clientapp.typing import ClientAppCallable
from flwr.serverapp.strategy import (
    DifferentialPrivacyClientSideFixedClipping,
    DifferentialPrivacyServerSideFixedClipping,
    Strategy,
)
from flwr.supercore.differential_privacy import KEY_CLIPPING_NORM
from torch import nn
from torch.utils.data import DataLoader

from flowerbed_training.run_config import RunConfig

if TYPE_CHECKING:  # Opacus takes seconds to import: only the local-DP path loads it (see make_private)
    from opacus import PrivacyEngine
    from opacus.grad_sample import GradSampleHooks
    from opacus.optimizers import DPOptimizer

LOCAL_DP_STATE = "local-dp"  # ConfigRecord in context.state: noise multiplier + accountant history
_ACCOUNTANT = "rdp"  # Opacus' RDP accountant: its history composes across rounds by concatenation


class PrivacyBudgetExhausted(RuntimeError):
    """Training this round would spend more than the site's epsilon target for the run."""


class PrivacyLedgerMissing(RuntimeError):
    """The site has spent budget in this run before but holds no ledger: it must not start a new one."""


@dataclass
class PrivateTraining:
    """What to train with this round: the same model, a DP optimizer, a Poisson-sampled loader."""

    model: nn.Module
    optimizer: DPOptimizer
    loader: DataLoader
    engine: PrivacyEngine
    hooks: GradSampleHooks
    config: RunConfig


def make_private(
    model: nn.Module,
    optimizer: Any,
    loader: DataLoader,
    config: RunConfig,
    state: RecordDict,
    *,
    spent_before: bool = False,
) -> PrivateTraining:
    """Attach Opacus for one round, continuing this site's accountant from `state`.

    The run is `num-server-rounds` x `local-epochs` x batches steps long; the noise
    multiplier is fitted to `local-dp-epsilon`/`local-dp-delta` for all of them.
    `spent_before`: the server saw this site spend budget earlier in the run (its
    `dp-sites`). Raises PrivacyBudgetExhausted when this round would pass the
    target, PrivacyLedgerMissing when `spent_before` but `state` holds no ledger."""
    from opacus import PrivacyEngine  # noqa: PLC0415  (slow import, DP runs only)
    from opacus.accountants.utils import get_noise_multiplier  # noqa: PLC0415

    saved = state.config_records.get(LOCAL_DP_STATE)
    steps_per_round = config.local_epochs * len(loader)
    if saved is None and spent_before:
        raise PrivacyLedgerMissing(
            "local DP: this site spent privacy budget earlier in this run, but its ledger is gone "
            "(a restarted SuperNode without a state volume, or a lost state-dir); refusing to train "
            "rather than start a new budget. Restore the site's state volume (node config state-dir).")
    if saved is None:
        # What make_private_with_epsilon does, but with the exact step count:
        # it derives steps as int(epochs / (1 / len(loader))), which float
        # rounding sometimes makes one short of the steps really taken.
        noise_multiplier = get_noise_multiplier(
            target_epsilon=config.local_dp_epsilon,
            target_delta=config.local_dp_delta,
            sample_rate=1 / len(loader),
            steps=config.num_server_rounds * steps_per_round,
            accountant=_ACCOUNTANT,
        )
        history: list[tuple[float, float, int]] = []
    else:
        noise_multiplier = float(saved["noise-multiplier"])  # type: ignore[arg-type]
        history = _history_from(saved)

    _refuse_if_over_budget(history, config, (noise_multiplier, 1 / len(loader), steps_per_round))
    engine = PrivacyEngine(accountant=_ACCOUNTANT)
    engine.accountant.history = history
    hooks, dp_optimizer, dp_loader = engine.make_private(
        module=model,
        optimizer=optimizer,
        data_loader=loader,
        noise_multiplier=noise_multiplier,
        max_grad_norm=config.local_dp_max_grad_norm,
        wrap_model=False,
    )
    return PrivateTraining(model, dp_optimizer, dp_loader, engine, hooks, config)


def epsilon_spent(private: PrivateTraining, state: RecordDict) -> float:
    """Save the accountant in `state`, detach Opacus, return the site's epsilon so far this run."""
    history = private.engine.accountant.history
    state.config_records[LOCAL_DP_STATE] = ConfigRecord(
        {
            "noise-multiplier": float(private.optimizer.noise_multiplier),
            "history-noise": [float(h[0]) for h in history],
            "history-rate": [float(h[1]) for h in history],
            "history-steps": [int(h[2]) for h in history],
        }
    )
    private.hooks.cleanup()
    return _epsilon(history, private.config.local_dp_delta)


def _epsilon(history: list[tuple[float, float, int]], delta: float) -> float:
    if not history:
        return 0.0
    from opacus.accountants import RDPAccountant  # noqa: PLC0415  (slow import, DP runs only)

    accountant = RDPAccountant()
    accountant.history = history
    return float(accountant.get_epsilon(delta))


def _history_from(saved: ConfigRecord) -> list[tuple[float, float, int]]:
    return list(
        zip(
            saved["history-noise"],  # type: ignore[arg-type]
            saved["history-rate"],  # type: ignore[arg-type]
            saved["history-steps"],  # type: ignore[arg-type]
            strict=True,
        )
    )


def _refuse_if_over_budget(
    history: list[tuple[float, float, int]],
    config: RunConfig,
    this_round: tuple[float, float, int],
) -> None:
    epsilon_after = _epsilon([*history, this_round], config.local_dp_delta)
    if epsilon_after > config.local_dp_epsilon:
        spent = _epsilon(history, config.local_dp_delta)
        raise PrivacyBudgetExhausted(
            f"local DP: this site has spent epsilon {spent:.3f} of its {config.local_dp_epsilon} "
            f"for the run; another round would reach {epsilon_after:.3f} "
            "(more rounds than num-server-rounds planned?)"
        )


# --- central DP: Flower's strategy wrappers, noise added once to the aggregate ---


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
        return _epsilon([(self.noise_multiplier, self.sample_rate, rounds)] if rounds else [], self.delta)


def central_dp_clipping_mod(msg: Message, ctxt: Context, call_next: ClientAppCallable) -> Message:
    """ClientApp mod: Flower's `fixedclipping_mod` when the server asked for client-side clipping.

    Safe to install always: messages without a clipping norm (every other
    mode) pass straight through.
    """
    asks_for_clipping = any(KEY_CLIPPING_NORM in record for record in msg.content.config_records.values())
    if asks_for_clipping:
        return fixedclipping_mod(msg, ctxt, call_next)
    return call_next(msg, ctxt)
