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

import numpy as np
from flwr.app import ArrayRecord, ConfigRecord, Message, MetricRecord
from flwr.serverapp import Grid
from flwr.serverapp.strategy import FedAvg

from flowerbed_training.protocol import ARRAYS, CONTROL, CONTROL_DELTA, from_record, to_record

Arrays = dict[str, np.ndarray]


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
