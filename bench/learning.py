"""Learning under label skew, in the shape of NIID-Bench (Li et al., ICDE 2022; Flower's
baselines/niid_bench): 10 sites, partitions IID, Dirichlet(0.5), Dirichlet(0.1) and
#C labels per site, 50 rounds, 3 seeds, mean +- std of the final global test accuracy.

Every strategy is reported as a ratio to pooled training: the same model, learning rate,
batch size and number of epochs (rounds x local epochs) on exactly the rows the sites train
on in that partition (the union of their shares less their validation hold-outs, which are
stratified per site, so each partition pools slightly different rows), trained in the same
run for the same seeds. Rounds to target: the first round whose accuracy reaches
TARGET_SHARE x pooled accuracy (same seed), averaged over the seeds that reach it.

Only the full grid (DEFAULTS, no --set) rewrites bench/README.md's table and
bench/learning.png; smaller runs (sweeps, tries) print their table only.
"""

from __future__ import annotations

import multiprocessing
import os
import sys
import time
from concurrent.futures import Future, ProcessPoolExecutor
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from flowerbed_training.common.baseline import centralized_baseline
from flowerbed_training.common.run_config import RunConfig
from tests.inprocess import run_config_with

from . import report
from .options import Options
from .runs import federated, quiet_flower
from .table import print_table

STRATEGIES = ("fedavg", "fedprox", "scaffold", "fedadam", "fedyogi")
TARGET_SHARE = 0.97
# Accuracy on the server's held-out test set only (no federated evaluation), and the MLP on
# both datasets: the digits CNN costs ~3x the CPU per round, past 15 minutes on 2 cores.
RUN_CONFIG = {"model": "mlp", "fraction-evaluate": 0.0}
DEFAULTS = Options(dataset="builtin:digits,builtin:breast-cancer", sites=10, rounds=50, seeds=3)


def partitions(dataset: str) -> dict[str, dict[str, object]]:
    """NIID-Bench's partitions. On two-class breast cancer, #C=1 as NIID-Bench does for
    two-class data (2 of 2 classes is IID), and no Dirichlet(0.1): its 455 training examples
    leave some site below the app's 10-example minimum in every draw (0 of 1,000 tried)."""
    two_classes = dataset == "builtin:breast-cancer"
    shapes = {
        "iid": {"partitioning": "iid"},
        "dir(0.5)": {"partitioning": "dirichlet", "dirichlet-alpha": 0.5},
        "dir(0.1)": {"partitioning": "dirichlet", "dirichlet-alpha": 0.1},
        f"#C={1 if two_classes else 2}": {"partitioning": "labels", "labels-per-site": 1 if two_classes else 2},
    }
    if two_classes:
        del shapes["dir(0.1)"]
    return shapes


@dataclass(frozen=True)
class Cell:
    """One dataset x partition x strategy over the seeds, with pooled training's accuracy."""

    curves: np.ndarray  # (seeds, rounds): global test accuracy after each round
    pooled: np.ndarray  # (seeds,): pooled training's test accuracy, same partition and seeds

    @property
    def final(self) -> np.ndarray:
        return self.curves[:, -1]

    def ratio(self) -> float:
        """Mean final accuracy / mean pooled accuracy."""
        return float(self.final.mean() / self.pooled.mean())

    def rounds_to_target(self) -> list[int | None]:
        """Per seed: the first round at TARGET_SHARE x that seed's pooled accuracy (None: never)."""
        reached = self.curves >= TARGET_SHARE * self.pooled[:, None]
        return [int(np.argmax(row)) + 1 if row.any() else None for row in reached]


Cells = dict[tuple[str, str, str], Cell]  # (dataset, partition, strategy) -> Cell
Pooled = dict[tuple[str, str], np.ndarray]  # (dataset, partition) -> accuracy per seed


def mean_std(values: np.ndarray) -> str:
    """`mean +- sample standard deviation` (ddof 1; 0 for a single seed)."""
    std = float(np.std(values, ddof=1)) if len(values) > 1 else 0.0
    return f"{values.mean():.4f} +- {std:.4f}"


def rounds_text(rounds: list[int | None]) -> str:
    hits = [r for r in rounds if r is not None]
    return f"{np.mean(hits):.1f} ({len(hits)}/{len(rounds)})" if hits else f"never (0/{len(rounds)})"


def _progress(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def _worker() -> None:
    # As in the parent (bench/__main__.py): one torch thread per process, Flower quiet.
    torch.set_num_threads(1)
    quiet_flower()


def _accuracies(sites: int, run_config: dict[str, Any]) -> list[float]:
    return federated(sites, run_config).accuracies


def _pooled_accuracy(run_config: dict[str, Any], sites: int) -> float:
    return centralized_baseline(RunConfig.parse(run_config), sites=sites)["accuracy"]


def measure(options: Options) -> tuple[Pooled, Cells]:
    """Pooled accuracy per dataset and partition (one per seed) and every federated run of the grid.

    The runs are independent and single-threaded, so they go to one process per CPU this
    process may use; each run's numbers are those of a sequential run (same seeds, one thread).
    """
    seeds = range(options.seeds)
    pooled_jobs: dict[tuple[str, str], list[Future[float]]] = {}
    cell_jobs: dict[tuple[str, str, str], list[Future[list[float]]]] = {}
    # spawn: torch and Flower's threads do not survive a fork.
    with ProcessPoolExecutor(len(os.sched_getaffinity(0)), multiprocessing.get_context("spawn"),
                             initializer=_worker) as pool:
        for dataset in options.datasets():
            # Fused as `flwr run` fuses it, so pooled training gets the same model, lr, batch and epochs.
            base = run_config_with({**RUN_CONFIG, **options.base(), "dataset": dataset})
            for label, partition in partitions(dataset).items():
                pooled_jobs[dataset, label] = [pool.submit(_pooled_accuracy, {**base, **partition, "seed": s},
                                                           options.sites) for s in seeds]
                for strategy in STRATEGIES:
                    cell_jobs[dataset, label, strategy] = [
                        pool.submit(_accuracies, options.sites, {**base, **partition, "strategy": strategy, "seed": s})
                        for s in seeds]
        pooled = {key: np.array([job.result() for job in jobs]) for key, jobs in pooled_jobs.items()}
        cells: Cells = {}
        for (dataset, label, strategy), jobs in cell_jobs.items():
            cell = cells[dataset, label, strategy] = Cell(np.array([job.result() for job in jobs]),
                                                          pooled[dataset, label])
            _progress(f"{dataset} {label} {strategy}: {mean_std(cell.final)}")
    return pooled, cells


def rows(pooled: Pooled, cells: Cells) -> list[list[object]]:
    """Per dataset and partition: its pooled row, then one row per strategy."""
    table: list[list[object]] = []
    for (dataset, label), accuracies in pooled.items():
        name = dataset.removeprefix("builtin:")
        table.append([name, label, "pooled", mean_std(accuracies), 1.0, "-"])
        table += [[name, label, strategy, mean_std(cell.final), cell.ratio(), rounds_text(cell.rounds_to_target())]
                  for (d, p, strategy), cell in cells.items() if (d, p) == (dataset, label)]
    return table


def run(options: Options) -> None:
    started = time.perf_counter()
    pooled, cells = measure(options)
    seconds = time.perf_counter() - started
    base = run_config_with({**RUN_CONFIG, **options.base()})
    title = (f"{options.sites} sites, {options.rounds} rounds x {base['local-epochs']} local epochs, "
             f"lr {base['lr']}, batch {base['batch-size']}, {base['model']}, seeds 0-{options.seeds - 1}; "
             f"final accuracy mean +- std; rounds to {TARGET_SHARE} x pooled ({seconds:.0f} s)")
    header = ["dataset", "partition", "strategy", "accuracy", "x pooled", f"rounds to {TARGET_SHARE}x pooled"]
    table = rows(pooled, cells)
    print_table(f"Learning under label skew: {title}", header, table)
    if options == DEFAULTS:
        report.write(title, header, table, {k: (c.curves, c.pooled) for k, c in cells.items()})
