"""ServerApp: runs once per run in the server cluster (artifacts volume at `artifacts-dir`).

Thin: parse the run config, survey the sites' data (assigning built-in data's
partitions), build the model, resume from the latest checkpoint if asked, and
hand the rounds to the training path the run config chooses: SecAgg+ (Flower's
legacy workflow, secagg.py) or the Message API (a Flower strategy, message_api.py).
"""

from __future__ import annotations

from logging import INFO
from pathlib import Path

from flwr.app import Context
from flwr.serverapp import Grid, ServerApp
from flwr.supercore import log

from flowerbed_training import message_api, secagg, task
from flowerbed_training.checkpoints import Checkpoint, CheckpointStore, save_final_model
from flowerbed_training.privacy import CentralDpAccountant
from flowerbed_training.recording import CentralEvaluation, Rounds
from flowerbed_training.round_log import read_metrics
from flowerbed_training.run_config import RunConfig
from flowerbed_training.survey import FederationData, survey_sites
from flowerbed_training.training_job import TrainingJob, TrainingPath

app = ServerApp()


class NoRoundAggregated(RuntimeError):
    """No round of the run had enough answers: there is no trained model to keep."""


def training_path(config: RunConfig) -> TrainingPath:
    """SecAgg+ exists only in Flower's legacy workflow API; every other run uses a Message-API strategy."""
    return secagg.run_rounds if config.secagg else message_api.run_rounds


def central_evaluation(config: RunConfig, federation: FederationData) -> CentralEvaluation | None:
    """Accuracy on the global held-out test set (built-in sources only; study data stays at sites)."""
    test_set = task.server_test_set(config)
    if test_set is None:
        return None
    test_loader = task.loader(federation.standardizer.apply(test_set), 256, shuffle=False)
    model = task.model_for(config, federation.spec)
    dev = task.device()

    def evaluate(weights: dict) -> tuple[float, float]:
        task.set_weights(model, weights)
        return task.evaluate(model, test_loader, dev)

    return evaluate


@app.main()
def main(grid: Grid, context: Context) -> None:
    config = RunConfig.parse(context.run_config)
    train = training_path(config)
    directory = Path(config.artifacts_dir)
    federation = survey_sites(grid, config.min_available_sites, config.round_timeout,
                              assign_partitions=config.builtin)
    checkpoints = CheckpointStore(directory, config.checkpoint_keep)
    start = Checkpoint(round=0, model=task.get_weights(task.model_for(config, federation.spec)), strategy_state={})
    if config.resume and (latest := checkpoints.latest()) is not None:
        start = latest
        log(INFO, "Resuming after round %d from %s", start.round, checkpoints.directory)
    if start.round >= config.num_server_rounds:
        log(INFO, "All %d rounds are done already; nothing to resume", config.num_server_rounds)
        return

    earlier = [line for line in read_metrics(directory) if line["round"] <= start.round]
    rounds = Rounds(directory, checkpoints, central_evaluation=central_evaluation(config, federation),
                    round_offset=start.round,
                    central_dp=CentralDpAccountant.of(config, len(federation.examples)),
                    noised_before=sum(1 for line in earlier if line["aggregated"]))
    final = train(TrainingJob(grid, context, config, federation, rounds, start))
    if rounds.aggregated == 0:
        raise NoRoundAggregated(
            f"none of rounds {start.round + 1}-{config.num_server_rounds} had min-train-sites = "
            f"{config.min_train_sites} answers in time (see 'sites' and 'failed' in {directory / 'metrics.jsonl'}); "
            "no final model is saved"
        )
    path = save_final_model(directory, final)
    log(INFO, "Final model saved to %s", path)
