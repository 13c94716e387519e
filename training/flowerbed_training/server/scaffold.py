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

The site's half (its c_i, the corrected gradient and option II) is client/objective.py.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

import numpy as np
from flwr.app import ArrayRecord, ConfigRecord, Message, MetricRecord
from flwr.serverapp import Grid
from flwr.serverapp.strategy import FedAvg

from flowerbed_training.common.protocol import (
    ARRAYS,
    CONTROL,
    CONTROL_DELTA,
    METRICS,
    NUM_EXAMPLES,
    from_record,
    to_record,
)

Arrays = dict[str, np.ndarray]


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
