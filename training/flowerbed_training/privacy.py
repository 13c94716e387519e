"""Differential privacy: local DP at each site (Opacus) and central DP (Flower's wrappers).

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

from collections.abc import Mapping
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

from .settings import SettingsError, _get

if TYPE_CHECKING:  # Opacus takes seconds to import: only the local-DP path loads it (see make_private)
    from opacus import PrivacyEngine
    from opacus.grad_sample import GradSampleHooks
    from opacus.optimizers import DPOptimizer

LOCAL_DP_STATE = "local-dp"  # ConfigRecord in context.state: noise multiplier + accountant history
CENTRAL_DP_MODES = ("off", "server", "client")
_ACCOUNTANT = "rdp"  # Opacus' RDP accountant: its history composes across rounds by concatenation


class PrivacyBudgetExhausted(RuntimeError):
    """Training this round would spend more than the site's epsilon target for the run."""


@dataclass(frozen=True)
class LocalDpSettings:
    """Run config `local-dp*`; the run's length comes from `num-server-rounds` x `local-epochs`."""

    target_epsilon: float
    target_delta: float
    max_grad_norm: float
    rounds: int
    local_epochs: int

    @staticmethod
    def from_run_config(run_config: Mapping[str, Any]) -> LocalDpSettings:
        settings = LocalDpSettings(
            target_epsilon=_get(run_config, "local-dp-epsilon", float, 8.0),
            target_delta=_get(run_config, "local-dp-delta", float, 1e-5),
            max_grad_norm=_get(run_config, "local-dp-max-grad-norm", float, 1.0),
            rounds=_get(run_config, "num-server-rounds", int, 10),
            local_epochs=_get(run_config, "local-epochs", int, 1),
        )
        for key, value, ok, rule in (
            ("local-dp-epsilon", settings.target_epsilon, settings.target_epsilon > 0, "must be > 0"),
            ("local-dp-delta", settings.target_delta, 0 < settings.target_delta < 1, "must be in (0, 1)"),
            ("local-dp-max-grad-norm", settings.max_grad_norm, settings.max_grad_norm > 0, "must be > 0"),
        ):
            if not ok:
                raise SettingsError(f"run config {key}: {value!r} {rule}")
        if _get(run_config, "amp", bool, False):
            # The loss scaler would scale the per-sample gradients that Opacus clips.
            raise SettingsError("run config amp: must be false with local-dp")
        return settings


def local_dp_enabled(run_config: Mapping[str, Any]) -> bool:
    return bool(_get(run_config, "local-dp", bool, False))


@dataclass
class PrivateTraining:
    """What to train with this round: the same model, a DP optimizer, a Poisson-sampled loader."""

    model: nn.Module
    optimizer: DPOptimizer
    loader: DataLoader
    engine: PrivacyEngine
    hooks: GradSampleHooks
    settings: LocalDpSettings


def make_private(
    model: nn.Module,
    optimizer: Any,
    loader: DataLoader,
    run_config: Mapping[str, Any],
    state: RecordDict,
) -> PrivateTraining:
    """Attach Opacus for one round, continuing this site's accountant from `state`."""
    from opacus import PrivacyEngine  # noqa: PLC0415  (slow import, DP runs only)
    from opacus.accountants.utils import get_noise_multiplier  # noqa: PLC0415

    settings = LocalDpSettings.from_run_config(run_config)
    saved = state.config_records.get(LOCAL_DP_STATE)
    steps_per_round = settings.local_epochs * len(loader)
    if saved is None:
        # What make_private_with_epsilon does, but with the exact step count:
        # it derives steps as int(epochs / (1 / len(loader))), which float
        # rounding sometimes makes one short of the steps really taken.
        noise_multiplier = get_noise_multiplier(
            target_epsilon=settings.target_epsilon,
            target_delta=settings.target_delta,
            sample_rate=1 / len(loader),
            steps=settings.rounds * steps_per_round,
            accountant=_ACCOUNTANT,
        )
        history: list[tuple[float, float, int]] = []
    else:
        noise_multiplier = float(saved["noise-multiplier"])  # type: ignore[arg-type]
        history = _history_from(saved)

    _refuse_if_over_budget(history, settings, (noise_multiplier, 1 / len(loader), steps_per_round))
    engine = PrivacyEngine(accountant=_ACCOUNTANT)
    engine.accountant.history = history
    hooks, dp_optimizer, dp_loader = engine.make_private(
        module=model,
        optimizer=optimizer,
        data_loader=loader,
        noise_multiplier=noise_multiplier,
        max_grad_norm=settings.max_grad_norm,
        wrap_model=False,
    )
    return PrivateTraining(model, dp_optimizer, dp_loader, engine, hooks, settings)


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
    return _epsilon(history, private.settings.target_delta)


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
    settings: LocalDpSettings,
    this_round: tuple[float, float, int],
) -> None:
    epsilon_after = _epsilon([*history, this_round], settings.target_delta)
    if epsilon_after > settings.target_epsilon:
        spent = _epsilon(history, settings.target_delta)
        raise PrivacyBudgetExhausted(
            f"local DP: this site has spent epsilon {spent:.3f} of its {settings.target_epsilon} "
            f"for the run; another round would reach {epsilon_after:.3f} "
            "(more rounds than num-server-rounds planned?)"
        )


# --- central DP: Flower's strategy wrappers, noise added once to the aggregate ---


@dataclass(frozen=True)
class CentralDpSettings:
    """Run config `central-dp` ("off" | "server" | "client" clipping) and its noise/clip knobs."""

    mode: str
    noise_multiplier: float
    clipping_norm: float

    @staticmethod
    def from_run_config(run_config: Mapping[str, Any]) -> CentralDpSettings:
        settings = CentralDpSettings(
            mode=_get(run_config, "central-dp", str, "off"),
            noise_multiplier=_get(run_config, "central-dp-noise-multiplier", float, 0.5),
            clipping_norm=_get(run_config, "central-dp-clipping-norm", float, 5.0),
        )
        for key, value, ok, rule in (
            ("central-dp", settings.mode, settings.mode in CENTRAL_DP_MODES,
             f"must be one of {', '.join(CENTRAL_DP_MODES)}"),
            ("central-dp-noise-multiplier", settings.noise_multiplier, settings.noise_multiplier >= 0,
             "must be >= 0"),
            ("central-dp-clipping-norm", settings.clipping_norm, settings.clipping_norm > 0, "must be > 0"),
        ):
            if not ok:
                raise SettingsError(f"run config {key}: {value!r} {rule}")
        if settings.mode != "off" and _get(run_config, "strategy", str, "fedavg") == "scaffold":
            # Flower's wrappers clip every ArrayRecord of a reply against the
            # model, so SCAFFOLD's control-variate record would be mangled.
            raise SettingsError("run config central-dp: must be 'off' with strategy 'scaffold'")
        if settings.mode == "client" and _get(run_config, "compression", str, "none") != "none":
            raise SettingsError(
                "run config central-dp: 'client' clipping needs the plain weights in the reply; "
                "use 'server' or compression 'none'"
            )
        return settings


def wrap_central_dp(strategy: Strategy, run_config: Mapping[str, Any], num_sampled_clients: int) -> Strategy:
    """Wrap `strategy` in Flower's fixed-clipping DP wrapper, or return it as is when `central-dp` is off.

    Flower's wrappers skip a round's aggregation when any site answered with
    an error, and scale the noise by `num_sampled_clients`: pass the number of
    sites sampled per round.
    """
    settings = CentralDpSettings.from_run_config(run_config)
    if settings.mode == "off":
        return strategy
    wrapper = (
        DifferentialPrivacyServerSideFixedClipping
        if settings.mode == "server"
        else DifferentialPrivacyClientSideFixedClipping
    )
    return wrapper(strategy, settings.noise_multiplier, settings.clipping_norm, num_sampled_clients)


def central_dp_clipping_mod(msg: Message, ctxt: Context, call_next: ClientAppCallable) -> Message:
    """ClientApp mod: Flower's `fixedclipping_mod` when the server asked for client-side clipping.

    Safe to install always: messages without a clipping norm (every other
    mode) pass straight through.
    """
    asks_for_clipping = any(KEY_CLIPPING_NORM in record for record in msg.content.config_records.values())
    if asks_for_clipping:
        return fixedclipping_mod(msg, ctxt, call_next)
    return call_next(msg, ctxt)
