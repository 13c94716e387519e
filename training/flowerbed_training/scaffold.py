"""SCAFFOLD (Karimireddy et al., 2020, "SCAFFOLD: Stochastic Controlled Averaging for
Federated Learning"), Algorithm 1 with option II for the client control variate.

Server state: global model x and control variate c. Each sampled site i keeps
its own c_i (in its Flower context state), takes K local SGD steps with the
corrected gradient g_i(y) - c_i + c, and returns y_i and delta c_i where

    c_i+ = c_i - c + (x - y_i) / (K * lr)          (option II)

The server then updates, with S the sampled sites that answered and N all sites:

    x <- x + server_lr * mean_i(y_i - x)
    c <- c + (|S| / N) * mean_i(c_i+ - c_i)
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass

import numpy as np
import torch
from flwr.app import ArrayRecord, ConfigRecord, Message, MetricRecord, RecordDict
from flwr.serverapp import Grid
from flwr.serverapp.strategy import FedAvg

from flowerbed_training.protocol import ARRAYS, CONTROL, CONTROL_DELTA, from_record, to_record

Arrays = dict[str, np.ndarray]
# Context state key for the site's control variate c_i (it never leaves the site).
CLIENT_CONTROL = "scaffold-client-control"


def client_control_update(
    c_i: Mapping[str, np.ndarray], c: Mapping[str, np.ndarray], x: Mapping[str, np.ndarray],
    y_i: Mapping[str, np.ndarray], steps: int, lr: float,
) -> Arrays:
    """Option II: c_i+ = c_i - c + (x - y_i) / (K * lr)."""
    if steps < 1:
        raise ValueError("SCAFFOLD needs at least one local step to update the control variate")
    return {k: c_i[k] - c[k] + (x[k] - y_i[k]) / (steps * lr) for k in x}


def server_update(
    x: Mapping[str, np.ndarray], c: Mapping[str, np.ndarray], y: list[Arrays], delta_c: list[Arrays],
    num_sites: int, server_lr: float,
) -> tuple[Arrays, Arrays]:
    """(x_new, c_new) from the answering sites' models y_i and control deltas."""
    sampled = len(y)
    x_new = {k: x[k] + server_lr * np.mean([y_i[k] - x[k] for y_i in y], axis=0) for k in x}
    c_new = {k: c[k] + (sampled / num_sites) * np.mean([d[k] for d in delta_c], axis=0) for k in c}
    return x_new, c_new


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


class Scaffold(FedAvg):
    """FedAvg's sampling and messaging plus SCAFFOLD's control variates."""

    def __init__(self, *, server_lr: float = 1.0, **fedavg_options: object) -> None:
        super().__init__(**fedavg_options)  # type: ignore[arg-type]
        self.server_lr = server_lr
        self.control: Arrays | None = None  # c; checkpointed with the model
        self._current: Arrays | None = None
        self._num_sites = 1

    def configure_train(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        self._current = from_record(arrays)
        if self.control is None:
            self.control = {k: np.zeros_like(v) for k, v in self._current.items()}
        # N: every site connected now (Flower forgets sites whose heartbeats stopped).
        self._num_sites = max(len(list(grid.get_node_ids())), 1)
        messages = list(super().configure_train(server_round, arrays, config, grid))
        control = to_record(self.control)
        for message in messages:
            message.content[CONTROL] = control
        return messages

    def aggregate_train(
        self, server_round: int, replies: Iterable[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        valid = [m for m in replies if not m.has_error() and CONTROL_DELTA in m.content.array_records]
        if not valid or self._current is None or self.control is None:
            return None, None
        y = [from_record(m.content.array_records[ARRAYS]) for m in valid]
        delta_c = [from_record(m.content.array_records[CONTROL_DELTA]) for m in valid]
        x_new, self.control = server_update(self._current, self.control, y, delta_c,
                                            max(self._num_sites, len(valid)), self.server_lr)
        metrics = self.train_metrics_aggr_fn([m.content for m in valid], self.weighted_by_key)
        return to_record(x_new), metrics
