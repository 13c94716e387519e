"""What the ServerApp hands the training path it chose (message_api.py, secagg.py or fedbuff.py)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from flwr.app import Context
from flwr.serverapp import Grid

from flowerbed_training.common.run_config import RunConfig
from flowerbed_training.server.checkpoints import Checkpoint
from flowerbed_training.server.replies import SiteNames
from flowerbed_training.server.rounds import Rounds
from flowerbed_training.server.survey import FederationData


@dataclass(frozen=True)
class TrainingJob:
    grid: Grid
    context: Context
    config: RunConfig
    federation: FederationData  # the survey's result: data spec, standardization, sites
    rounds: Rounds  # where each round is reported
    start: Checkpoint  # round 0 and the initial model, or the checkpoint a resumed run continues from
    site_names: SiteNames  # learnt at the survey; every reply of the run is named by it

    @property
    def remaining(self) -> int:
        return self.config.num_server_rounds - self.start.round


# A training path runs the job's remaining rounds and returns the final global model.
TrainingPath = Callable[[TrainingJob], dict[str, np.ndarray]]
