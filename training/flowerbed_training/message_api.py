"""The Message-API training path: a Flower strategy's own loop (`Strategy.start`) through the RoundRecorder.

Every run without SecAgg+ takes this path (secagg.py is the other one).
"""

from __future__ import annotations

import numpy as np
from flwr.app import ConfigRecord

from flowerbed_training import privacy
from flowerbed_training.protocol import SiteNames, from_record, to_record
from flowerbed_training.quorum import Quorum
from flowerbed_training.recording import RoundRecorder
from flowerbed_training.strategies import build_strategy, restore_strategy_state, strategy_state
from flowerbed_training.training_job import TrainingJob


def run_rounds(job: TrainingJob) -> dict[str, np.ndarray]:
    """Train the job's remaining rounds from its start; return the final global model."""
    config, federation = job.config, job.federation
    base = build_strategy(config)
    restore_strategy_state(base, job.start.strategy_state)
    sampled = privacy.sites_per_round(config, len(federation.examples))
    recorder = RoundRecorder(privacy.wrap_central_dp(base, config, sampled), job.rounds,
                             Quorum(config.min_train_sites), state_of=lambda: strategy_state(base),
                             site_names=SiteNames(federation.names))
    result = recorder.start(
        grid=job.grid,
        initial_arrays=to_record(job.start.model),
        num_rounds=job.remaining,
        timeout=config.round_timeout,
        train_config=ConfigRecord(federation.config()),
        evaluate_config=ConfigRecord(federation.config()),
        evaluate_fn=recorder.end_round,
    )
    return from_record(result.arrays)
