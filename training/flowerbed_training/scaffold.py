"""SCAFFOLD (Karimireddy et al., 2020, "SCAFFOLD: Stochastic Controlled Averaging for
Federated Learning"), Algorithm 1 with option II for the client control variate.

Server state: global model x and control variate c (zero at the start: the first round
is FedAvg). Each sampled site i keeps its own c_i (zero at first, in its Flower context
state), takes K local plain-SGD steps (K counts optimizer steps: local epochs x batches;
no momentum or weight decay, as in the paper's analysis) with the corrected gradient
g_i(y) - c_i + c, and returns y_i and delta c_i where

    c_i+ = c_i - c + (x - y_i) / (K * lr)          (option II)

The server then updates, with S the sites that answered, N all connected sites and
p_i = n_i / sum_{j in S} n_j the share of the answering sites' training examples:

    x <- x + server_lr * sum_i p_i (y_i - x)
    c <- c + (|S| / N) * sum_i p_i (c_i+ - c_i)

The paper averages uniformly (p_i = 1/|S|) because its objective is the uniform mean of
the sites' losses, (1/N) sum_i f_i. Weighting by examples, as FedAvg and Flower's
baselines/niid_bench SCAFFOLD do, makes c the gradient of the pooled data's loss
sum_i (n_i/n) f_i instead: the objective that FedAvg, pooled training and a global test
set drawn like the pool measure. Under label skew, sites' sizes differ by 10x or more;
uniform averaging then steers to a model that over-weights the small sites' classes and
shrinks the aggregate step (small sites take few steps). With |S| = N the two coincide
only when every site holds as many examples.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass

import numpy as np
import torch
from flwr.app import ArrayRecord, ConfigRecord, Message, MetricRecord, RecordDict
from flwr.serverapp import Grid
from flwr.serverapp.strategy import FedAvg

from flowerbed_training.protocol import ARRAYS, CONTROL, CONTROL_DELTA, METRICS, NUM_EXAMPLES, from_record, to_record

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
    examples: list[int], num_sites: int, server_lr: float,
) -> tuple[Arrays, Arrays]:
    """(x_new, c_new) from the answering sites' models y_i, control deltas and training
    example counts n_i (the weights p_i = n_i / sum n_j; see the module docstring)."""
    p = np.asarray(examples, dtype=np.float64) / float(sum(examples))
    x_new = {k: x[k] + server_lr * _weighted_sum(p, [y_i[k] - x[k] for y_i in y]) for k in x}
    c_new = {k: c[k] + (len(y) / num_sites) * _weighted_sum(p, [d[k] for d in delta_c]) for k in c}
    return x_new, c_new


def _weighted_sum(p: np.ndarray, arrays: list[np.ndarray]) -> np.ndarray:
    return np.tensordot(p, np.stack(arrays), axes=1).astype(arrays[0].dtype, copy=False)


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
        examples = [int(m.content.metric_records[METRICS][NUM_EXAMPLES]) for m in valid]  # type: ignore[arg-type]
        x_new, self.control = server_update(self._current, self.control, y, delta_c, examples,
                                            max(self._num_sites, len(valid)), self.server_lr)
        metrics = self.train_metrics_aggr_fn([m.content for m in valid], self.weighted_by_key)
        return to_record(x_new), metrics
