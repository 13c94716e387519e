"""ServerApp: runs once per run in the server cluster (artifacts volume at `artifacts-dir`).

Thin: survey the sites' data (assigning built-in data's partitions), build
the model and the strategy chosen by run config, resume from the latest
checkpoint if asked, and let Flower's strategy loop run the rounds through the
RoundRecorder.
"""

from __future__ import annotations

from logging import INFO

from flwr.app import ConfigRecord, Context
from flwr.serverapp import Grid, ServerApp
from flwr.supercore import log

from flowerbed_training import fedbuff, privacy, secagg, task
from flowerbed_training.checkpoints import CheckpointStore, save_final_model
from flowerbed_training.protocol import SiteNames, from_record, to_record
from flowerbed_training.recording import CentralEvaluation, RoundRecorder
from flowerbed_training.settings import ClientSettings, ServerSettings
from flowerbed_training.strategies import build_strategy, restore_strategy_state, strategy_state
from flowerbed_training.survey import FederationData, survey_sites

app = ServerApp()


def central_evaluation(context: Context, federation: FederationData) -> CentralEvaluation | None:
    """Accuracy on the global held-out test set (built-in sources only; study data stays at sites)."""
    test_set = task.server_test_set(context.run_config)
    if test_set is None:
        return None
    test_loader = task.loader(federation.standardizer.apply(test_set), 256, shuffle=False)
    model = task.model_for(context.run_config, federation.spec)
    dev = task.device()

    def evaluate(weights: dict) -> tuple[float, float]:
        task.set_weights(model, weights)
        return task.evaluate(model, test_loader, dev)

    return evaluate


@app.main()
def main(grid: Grid, context: Context) -> None:
    settings = ServerSettings.from_run_config(context.run_config)
    local_lr = ClientSettings.from_run_config(context.run_config).lr
    builtin = task.builtin_name(str(context.run_config.get("dataset", ""))) is not None
    # Asynchronous (its own loop instead of Flower's rounds); its settings are checked before the survey.
    buffered = fedbuff.AsyncSettings.from_run_config(context.run_config) if settings.strategy == "fedbuff" else None
    federation = survey_sites(grid, settings.min_available_sites, settings.round_timeout,
                              assign_partitions=builtin)
    if buffered is not None:
        _save_final(settings, fedbuff.run(grid, context, settings, buffered, federation,
                                          central_evaluation(context, federation)))
        return

    base = build_strategy(settings, local_lr)
    sampled = max(int(len(federation.examples) * settings.fraction_train), settings.min_train_sites)
    strategy = privacy.wrap_central_dp(base, context.run_config, sampled)
    checkpoints = CheckpointStore(settings.artifacts_dir, settings.checkpoint_keep)
    weights = task.get_weights(task.model_for(context.run_config, federation.spec))
    done = 0
    if settings.resume and (latest := checkpoints.latest()) is not None:
        weights, done = latest.model, latest.round
        restore_strategy_state(base, latest.strategy_state)
        log(INFO, "Resuming after round %d from %s", done, checkpoints.directory)
    remaining = settings.num_rounds - done
    if remaining <= 0:
        log(INFO, "All %d rounds are done already; nothing to resume", settings.num_rounds)
        return

    recorder = RoundRecorder(
        strategy, settings.artifacts_dir, min_train_sites=settings.min_train_sites,
        checkpoints=checkpoints, central_evaluation=central_evaluation(context, federation),
        round_offset=done, state_of=lambda: strategy_state(base), site_names=SiteNames(federation.names),
    )
    if secagg.secagg_enabled(context.run_config):
        # SecAgg+ exists only in Flower's legacy workflow API; secagg.py runs it with the same recorder.
        final = secagg.run_secagg_plus(grid, context, recorder, initial_arrays=weights, num_rounds=remaining,
                                       train_config=federation.config())
    else:
        result = recorder.start(
            grid=grid,
            initial_arrays=to_record(weights),
            num_rounds=remaining,
            timeout=settings.round_timeout,
            train_config=ConfigRecord(federation.config()),
            evaluate_config=ConfigRecord(federation.config()),
            evaluate_fn=recorder.end_round,
        )
        final = from_record(result.arrays)
    _save_final(settings, final)


def _save_final(settings: ServerSettings, final: dict) -> None:
    path = save_final_model(settings.artifacts_dir, final)
    log(INFO, "Final model saved to %s", path)
