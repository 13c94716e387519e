"""Federated FedAvg vs centralized training of the same model on the pooled data, same run."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from flowerbed_training.common.baseline import centralized_baseline
from flowerbed_training.common.run_config import RunConfig

from .options import Options
from .runs import federated
from .table import print_table, ratio


def centralized_time_to(run_config: Mapping[str, Any], sites: int, accuracy: float) -> tuple[float | None, int | None]:
    """Seconds and epochs of the shortest centralized training (in steps of one round's
    epochs) on what `sites` sites train on that reaches `accuracy`; each length is trained
    from scratch, as it would be."""
    local_epochs = int(run_config["local-epochs"])
    for rounds in range(1, int(run_config["num-server-rounds"]) + 1):
        result = centralized_baseline(RunConfig.parse({**run_config, "num-server-rounds": rounds}), sites)
        if result["accuracy"] >= accuracy:
            return result["seconds"], rounds * local_epochs
    return None, None


def run(options: Options) -> None:
    fed = federated(options.sites, {**options.base(), "strategy": "fedavg"})
    # Same run config: same model, epochs in total (rounds x local epochs), lr, batch size, and
    # exactly the rows the sites trained on (their shares less their validation hold-outs).
    central = centralized_baseline(RunConfig.parse(fed.run_config), options.sites)
    target = options.target_accuracy
    central_to, central_epochs = centralized_time_to(fed.run_config, options.sites, target)
    fed_rounds = fed.rounds_to(target)
    fed_epochs = fed_rounds * int(fed.run_config["local-epochs"]) if fed_rounds else None
    rows = [
        ["centralized (pooled data)", central["accuracy"], 1.0, central["seconds"], 1.0,
         central_to, 1.0 if central_to else None, central_epochs],
        [f"federated fedavg, {options.sites} sites", fed.final_accuracy, ratio(fed.final_accuracy, central["accuracy"]),
         fed.seconds, ratio(fed.seconds, central["seconds"]), fed.seconds_to(target),
         ratio(fed.seconds_to(target), central_to), fed_epochs],
    ]
    print_table(
        f"Federated vs centralized: {options.dataset}, {options.rounds} rounds x {fed.run_config['local-epochs']} "
        f"local epochs = {int(central['epochs'])} centralized epochs (federated seconds: whole in-process run)",
        ["setup", "accuracy", "x central", "seconds", "x central", f"s to {target}", "x central", "epochs to it"],
        rows,
    )
