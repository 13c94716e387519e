"""FedAvg vs FedProx vs SCAFFOLD on label-skewed sites (Dirichlet alpha 0.1 and 1.0)."""

from __future__ import annotations

from .options import Options
from .runs import federated
from .table import print_table, ratio

STRATEGIES = ("fedavg", "fedprox", "scaffold")
ALPHAS = (0.1, 1.0)


def run(options: Options) -> None:
    rows = []
    target = options.target_accuracy
    for alpha in ALPHAS:
        baseline = None
        for strategy in STRATEGIES:
            result = federated(options.sites, {**options.base(), "strategy": strategy,
                                               "partitioning": "dirichlet", "dirichlet-alpha": alpha})
            accuracies = [line["accuracy"] for line in result.lines]
            baseline = baseline or result.final_accuracy
            rows.append([alpha, strategy, result.final_accuracy, ratio(result.final_accuracy, baseline),
                         max(accuracies), result.rounds_to(target), result.seconds])
    print_table(
        f"Strategies on label-skewed sites: {options.dataset}, {options.sites} sites, {options.rounds} rounds",
        ["alpha", "strategy", "final acc", "x fedavg", "best acc", f"rounds to {target}", "seconds"],
        rows,
    )
