"""Privacy at the site: local DP-SGD with Opacus (`local-dp`), and client-side clipping for central DP.

Local DP budget, per site and per RUN. The target (epsilon, delta) covers the
whole run, not one round: the noise multiplier is computed once, for every
step the site will take in the run (rounds x local epochs x batches), and the
RDP accountant's history is kept in the site's `context.state` between
rounds (a ClientApp is re-created for every message, so nothing else
survives; client/site_state.py keeps it on the state volume). A round that
would push the site past its target is refused.

Opacus is attached with `wrap_model=False`: hooks on the app's own model, so
there is no GradSampleModule and the state_dict keys the server sends still
match. The server's half of DP (Flower's wrappers, the central-DP accountant) is
server/privacy.py.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
from flwr.app import ConfigRecord, Context, Message, RecordDict
from flwr.clientapp.mod import fixedclipping_mod
from flwr.clientapp.typing import ClientAppCallable
from flwr.supercore.differential_privacy import KEY_CLIPPING_NORM
from torch import nn
from torch.utils.data import DataLoader

from flowerbed_training.common import rdp, task
from flowerbed_training.common.protocol import (
    DP_SITES,
    EPSILON,
    HISTORY_NOISE,
    HISTORY_RATE,
    HISTORY_STEPS,
    LOCAL_DP_STATE,
    NOISE_MULTIPLIER,
)
from flowerbed_training.common.run_config import RunConfig

if TYPE_CHECKING:  # Opacus takes seconds to import: only the local-DP path loads it (see make_private)
    from opacus import PrivacyEngine
    from opacus.grad_sample import GradSampleHooks
    from opacus.optimizers import DPOptimizer

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
        history: rdp.History = []
    else:
        noise_multiplier = float(saved[NOISE_MULTIPLIER])  # type: ignore[arg-type]
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
            NOISE_MULTIPLIER: float(private.optimizer.noise_multiplier),
            HISTORY_NOISE: [float(h[0]) for h in history],
            HISTORY_RATE: [float(h[1]) for h in history],
            HISTORY_STEPS: [int(h[2]) for h in history],
        }
    )
    private.hooks.cleanup()
    return rdp.epsilon(history, private.config.local_dp_delta)


def _history_from(saved: ConfigRecord) -> rdp.History:
    return list(
        zip(
            saved[HISTORY_NOISE],  # type: ignore[arg-type]
            saved[HISTORY_RATE],  # type: ignore[arg-type]
            saved[HISTORY_STEPS],  # type: ignore[arg-type]
            strict=True,
        )
    )


def _refuse_if_over_budget(
    history: rdp.History,
    config: RunConfig,
    this_round: tuple[float, float, int],
) -> None:
    epsilon_after = rdp.epsilon([*history, this_round], config.local_dp_delta)
    if epsilon_after > config.local_dp_epsilon:
        spent = rdp.epsilon(history, config.local_dp_delta)
        raise PrivacyBudgetExhausted(
            f"local DP: this site has spent epsilon {spent:.3f} of its {config.local_dp_epsilon} "
            f"for the run; another round would reach {epsilon_after:.3f} "
            "(more rounds than num-server-rounds planned?)"
        )


# --- the privacy step of a training message (client/app.py) --------------------------------------


@dataclass
class LocalSgd:
    """What a round's local SGD runs with: plain SGD on the site's loader, or Opacus' DP-SGD."""

    optimizer: Any  # task.PlainSgd, or Opacus' DPOptimizer
    loader: DataLoader  # the site's loader, or Opacus' Poisson-sampled one
    # task.train's per-step clipping: run config local-max-grad-norm; 0 under local DP, where
    # Opacus clips each example's gradient to local-dp-max-grad-norm instead
    max_grad_norm: float
    private: PrivateTraining | None = None

    def spent(self, state: RecordDict) -> dict[str, float]:
        """After training: {EPSILON: what this site has spent in the run} under local DP (the ledger is
        saved in `state` and Opacus detached), else nothing to report."""
        return {EPSILON: epsilon_spent(self.private, state)} if self.private is not None else {}


def spent_before(site: str, instructions: Mapping[str, object]) -> bool:
    """The server saw `site` spend local-DP budget earlier in this lineage (the train config's DP_SITES)."""
    return site in [str(s) for s in instructions.get(DP_SITES, [])]  # type: ignore[attr-defined]


def local_sgd(model: nn.Module, loader: DataLoader, config: RunConfig, state: RecordDict, *,
              spent_before: bool) -> LocalSgd:
    """Plain SGD (task.sgd), or under `local-dp` Opacus attached for this round (make_private: may raise
    PrivacyBudgetExhausted or PrivacyLedgerMissing)."""
    if not config.local_dp:
        return LocalSgd(task.sgd(model, config.lr), loader, config.local_max_grad_norm)
    # Opacus hooks this same model and wraps a torch Optimizer (task.PlainSgd is not one).
    private = make_private(model, torch.optim.SGD(model.parameters(), lr=config.lr), loader, config, state,
                           spent_before=spent_before)
    return LocalSgd(private.optimizer, private.loader, 0.0, private)


# --- central DP: the site's half ---------------------------------------------------------------------


def central_dp_clipping_mod(msg: Message, ctxt: Context, call_next: ClientAppCallable) -> Message:
    """ClientApp mod: Flower's `fixedclipping_mod` when the server asked for client-side clipping.

    Safe to install always: messages without a clipping norm (every other
    mode) pass straight through.
    """
    asks_for_clipping = any(KEY_CLIPPING_NORM in record for record in msg.content.config_records.values())
    if asks_for_clipping:
        return fixedclipping_mod(msg, ctxt, call_next)
    return call_next(msg, ctxt)
