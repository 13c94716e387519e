"""ServerApp: runs once per run in the server cluster (artifacts volume at `artifacts-root`).

Thin: parse the run config, survey the sites' data (assigning built-in data's
partitions), build the model, resume from the run `resume` names if asked, and
hand the rounds to the training path the run config chooses: SecAgg+ (Flower's
legacy workflow, secagg.py), FedBuff's asynchronous loop (fedbuff.py) or the
Message API (a Flower strategy, message_api.py); each reports its rounds to the
same bookkeeper (rounds.py).
Everything lands in the run's own directory, `<artifacts-root>/<run-id>/`,
ending with summary.json and report.png (report.py).
"""

from __future__ import annotations

import time
from logging import INFO
from pathlib import Path

from flwr.app import Context
from flwr.serverapp import Grid, ServerApp
from flwr.supercore import log

from flowerbed_training.common import models, task
from flowerbed_training.common.builtin_data import server_test_set
from flowerbed_training.common.run_config import RunConfig
from flowerbed_training.common.strategies import STRATEGIES
from flowerbed_training.server import fedbuff, grid_polling, message_api, secagg
from flowerbed_training.server.checkpoints import Checkpoint, CheckpointStore, save_final_model
from flowerbed_training.server.privacy import CentralDpAccountant
from flowerbed_training.server.replies import SiteNames
from flowerbed_training.server.round_log import read_metrics
from flowerbed_training.server.rounds import CentralEvaluation, Rounds
from flowerbed_training.server.run_directory import continue_from, lineage, resumed_run, run_directory
from flowerbed_training.server.survey import FederationData, survey_sites
from flowerbed_training.server.training_job import TrainingJob, TrainingPath

app = ServerApp()
APP_DIR = Path(__file__).resolve().parents[2]  # where the bundle is installed (pyproject.toml)


class NoRoundAggregated(RuntimeError):
    """No round of the run had enough answers: there is no trained model to keep."""


def training_path(config: RunConfig) -> TrainingPath:
    """SecAgg+ exists only in Flower's legacy workflow API; an asynchronous strategy (fedbuff) has its
    own loop; every other run uses a Message-API strategy."""
    if config.secagg:
        return secagg.run_rounds
    return fedbuff.run_rounds if STRATEGIES[config.strategy].asynchronous else message_api.run_rounds


def central_evaluation(config: RunConfig, federation: FederationData) -> CentralEvaluation | None:
    """Accuracy on the global held-out test set (built-in sources only; study data stays at sites)."""
    test_set = server_test_set(config)
    if test_set is None:
        return None
    test_loader = task.loader(federation.standardizer.apply(test_set), 256, shuffle=False)
    model = models.model_for(config, federation.spec)
    dev = task.device()

    def evaluate(weights: dict) -> tuple[float, float]:
        models.set_weights(model, weights)
        return task.evaluate(model, test_loader, dev)

    return evaluate


@app.main()
def main(grid: Grid, context: Context) -> None:
    started = time.perf_counter()
    grid = grid_polling.prompt(grid)  # replies seen within 0.1 s, not on Flower's 3 s poll
    config = RunConfig.parse(context.run_config)
    train = training_path(config)
    directory = run_directory(config, context.run_id)
    previous = resumed_run(config, context.run_id)
    federation = survey_sites(grid, config)
    start = starting_point(config, federation, directory, previous)
    if start.round >= config.num_server_rounds:
        log(INFO, "All %d rounds are done already; nothing to resume", config.num_server_rounds)
        return

    rounds = Rounds(directory, CheckpointStore(directory, config.checkpoint_keep),
                    central_evaluation=central_evaluation(config, federation), round_offset=start.round,
                    central_dp=CentralDpAccountant.of(config, len(federation.examples)),
                    lineage=lineage(directory, previous, context.run_id))
    log(INFO, "Run %s writes %s", context.run_id, directory)
    final = train(TrainingJob(grid, context, config, federation, rounds, start, SiteNames(federation.names)))
    if rounds.aggregated_rounds == 0:
        write_report(directory, context, config, federation, "failed: no round aggregated",
                     time.perf_counter() - started)
        raise NoRoundAggregated(
            f"none of rounds {start.round + 1}-{config.num_server_rounds} had min-train-sites = "
            f"{config.min_train_sites} answers in time (see 'sites' and 'failed' in {directory / 'metrics.jsonl'}); "
            "no final model is saved"
        )
    path = save_final_model(directory, final)
    log(INFO, "Final model saved to %s", path)
    write_report(directory, context, config, federation, "completed", time.perf_counter() - started)


def starting_point(config: RunConfig, federation: FederationData, directory: Path, previous: Path | None) -> Checkpoint:
    """Round 0 with the run's initial model, or the latest checkpoint of the run `resume` names."""
    if previous is None:
        initial = models.get_weights(models.model_for(config, federation.spec))
        return Checkpoint(round=0, model=initial, strategy_state={})
    start = continue_from(previous, directory)
    log(INFO, "Resuming run %s after round %d in %s", previous.name, start.round, directory)
    return start


def write_report(directory: Path, context: Context, config: RunConfig, federation: FederationData, status: str,
                 seconds: float) -> None:
    """summary.json and report.png in the run's directory, from its metrics lines."""
    from flowerbed_training.server import report  # matplotlib: loaded once, at the end of the run

    rounds = read_metrics(directory)
    summary = report.summarize(run_id=str(context.run_id), app_dir=APP_DIR, sites=sorted(federation.examples),
                               rounds=rounds, baseline=None, seconds={"total": seconds},
                               run_status={"status": status}, out_dir=directory, strategy=config.strategy,
                               dataset=config.dataset, protections=config.protections)
    report.write_report(summary, rounds, directory)
