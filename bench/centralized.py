"""Federated FedAvg vs centralized training of the same model on the pooled data, same run."""

from __future__ import annotations

from flowerbed_training import task

from .options import Options
from .runs import federated
from .table import print_table, ratio


def run(options: Options) -> None:
    fed = federated(options.sites, {**options.base(), "strategy": "fedavg"})
    # Same run config: same model, data split, epochs in total (rounds x local epochs), lr, batch size.
    central = task.centralized_baseline(fed.run_config)
    target = options.target_accuracy
    rows = [
        ["centralized (pooled data)", central["accuracy"], 1.0, central["seconds"], 1.0, None, None],
        [f"federated fedavg, {options.sites} sites", fed.final_accuracy, ratio(fed.final_accuracy, central["accuracy"]),
         fed.seconds, ratio(fed.seconds, central["seconds"]), fed.seconds_to(target), fed.rounds_to(target)],
    ]
    print_table(
        f"Federated vs centralized: {options.dataset}, {options.rounds} rounds x {fed.run_config['local-epochs']} "
        f"local epochs (centralized: {int(central['epochs'])} epochs)",
        ["setup", "accuracy", "x central", "seconds", "x central", f"s to {target}", f"rounds to {target}"],
        rows,
    )
