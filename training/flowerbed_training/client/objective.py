"""The strategy's local objective: what the server's strategy adds to a site's data loss.

- FedProx (Li et al. 2020): the proximal term (mu/2) ||w - w_global||^2; Flower's FedProx
  puts mu in the train config (`proximal-mu`).
- SCAFFOLD (Karimireddy et al. 2020, Algorithm 1, option II; server/scaffold.py has the
  server's half and the weighting): the site keeps its control variate c_i in its state,
  steps with the corrected gradient g_i(y) - c_i + c, and answers with
  delta c_i = c_i+ - c_i where

      c_i+ = c_i - c + (x - y_i) / (K * lr)          (option II)

  with K the local plain-SGD steps taken. The server's train messages carry c.

Both are data-independent drift terms that common/task.py's `train` applies as extra SGD
steps, so they combine with Opacus' DP optimizer and cost no privacy budget.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from flwr.app import ArrayRecord, RecordDict

from flowerbed_training.common.protocol import (
    CLIENT_CONTROL,
    CONFIG,
    CONTROL,
    CONTROL_DELTA,
    PROXIMAL_MU,
    from_record,
    to_record,
)

Arrays = dict[str, np.ndarray]


def client_control_update(
    c_i: Mapping[str, np.ndarray], c: Mapping[str, np.ndarray], x: Mapping[str, np.ndarray],
    y_i: Mapping[str, np.ndarray], steps: int, lr: float,
) -> Arrays:
    """Option II: c_i+ = c_i - c + (x - y_i) / (K * lr)."""
    if steps < 1:
        raise ValueError("SCAFFOLD needs at least one local step to update the control variate")
    return {k: c_i[k] - c[k] + (x[k] - y_i[k]) / (steps * lr) for k in x}


@dataclass
class SiteControl:
    """A site's side of SCAFFOLD for one round: the server's c and its own c_i (kept in the
    site's Flower context state between rounds)."""

    c: Arrays
    c_i: Arrays

    @staticmethod
    def received(content: RecordDict, state: RecordDict) -> SiteControl | None:
        """None unless the server runs SCAFFOLD (its train messages carry c)."""
        if CONTROL not in content.array_records:
            return None
        c = from_record(content.array_records[CONTROL])
        stored = state.array_records.get(CLIENT_CONTROL)
        c_i = from_record(stored) if stored is not None else {k: np.zeros_like(v) for k, v in c.items()}
        return SiteControl(c, c_i)

    def correction(self, device: torch.device) -> dict[str, torch.Tensor]:
        """c - c_i, added to every local gradient step."""
        return {k: torch.from_numpy(self.c[k] - self.c_i[k]).to(device) for k in self.c}

    def finish(self, x: Arrays, y_i: Arrays, steps: int, lr: float, state: RecordDict) -> ArrayRecord:
        """Store c_i+ in the site's state; return delta c_i for the server."""
        c_i_new = client_control_update(self.c_i, self.c, x, y_i, steps, lr)
        state[CLIENT_CONTROL] = to_record(c_i_new)
        return to_record({k: c_i_new[k] - self.c_i[k] for k in c_i_new})


@dataclass
class LocalObjective:
    """The drift terms of one training message: FedProx's and SCAFFOLD's, each absent unless the
    server's strategy asked for it."""

    proximal_mu: float
    global_params: dict[str, torch.Tensor] | None  # w_global, for the proximal term
    control: SiteControl | None
    device: torch.device

    @staticmethod
    def received(content: RecordDict, state: RecordDict, start: Arrays, device: torch.device) -> LocalObjective:
        """From the train message's content, the site's state and the model it received (`start`)."""
        proximal_mu = float(content.config_records[CONFIG].get(PROXIMAL_MU, 0.0))  # type: ignore[arg-type]
        global_params = {k: torch.from_numpy(v).to(device) for k, v in start.items()} if proximal_mu else None
        return LocalObjective(proximal_mu, global_params, SiteControl.received(content, state), device)

    def terms(self) -> dict[str, Any]:
        """task.train's keyword arguments for the drift terms."""
        return {"proximal_mu": self.proximal_mu, "global_params": self.global_params,
                "gradient_correction": self.control.correction(self.device) if self.control else None}

    def reply(self, start: Arrays, trained: Arrays, steps: int, lr: float, state: RecordDict) -> dict[str, ArrayRecord]:
        """The records the reply adds (SCAFFOLD: delta c_i, c_i+ kept in `state`)."""
        if self.control is None:
            return {}
        return {CONTROL_DELTA: self.control.finish(start, trained, steps, lr, state)}
