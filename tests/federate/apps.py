"""Small Flower Apps that are not flowerbed's, written into a test's directory.

Each has numpy and flwr only (so it runs in this environment, where runtime
dependency installation is off), and a model that is one vector pulled towards
a target, so a run takes seconds per round and its outcome is known.
"""

from __future__ import annotations

from pathlib import Path
from textwrap import dedent

from components.flower_release import FLOWER_RELEASE

PYPROJECT = """\
[build-system]
requires = ["hatchling"]
build-backend = "hatchling.build"

[project]
name = "{name}"
version = "1.0.0"
description = "a test app"
license = "Apache-2.0"
dependencies = ["flwr=={flwr}", "numpy"]

[tool.hatch.build.targets.wheel]
packages = ["{package}"]

[tool.flwr.app]
publisher = "tests"

[tool.flwr.app.components]
serverapp = "{package}.server_app:app"
clientapp = "{package}.client_app:app"

[tool.flwr.app.config]
{config}
"""

# --- Message API: ClientApp with @app.train/@app.evaluate, ServerApp with FedAvg.start ----
# It follows federate's metrics contract (artifacts-dir, num-server-rounds, metrics.jsonl).
MESSAGE_CLIENT = '''
import numpy as np
from flwr.app import ArrayRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp

app = ClientApp()


@app.train()
def train(msg: Message, context: Context) -> Message:
    weights = msg.content["arrays"].to_numpy_ndarrays()[0]
    target = float(context.run_config["target"])
    updated = weights + 0.5 * (target - weights)  # one step half-way to the target
    # node_config is the SuperNode's --node-config: flowerbed gives every site its name.
    examples = 10 + len(str(context.node_config["site-name"]))
    return Message(RecordDict({"arrays": ArrayRecord([updated]),
                               "metrics": MetricRecord({"num-examples": examples})}), reply_to=msg)


@app.evaluate()
def evaluate(msg: Message, context: Context) -> Message:
    raise RuntimeError("the server evaluates; fraction-evaluate is 0")
'''

MESSAGE_SERVER = '''
import json
from pathlib import Path

import numpy as np
from flwr.app import ArrayRecord, Context, MetricRecord
from flwr.serverapp import Grid, ServerApp
from flwr.serverapp.strategy import FedAvg

app = ServerApp()


@app.main()
def main(grid: Grid, context: Context) -> None:
    config = context.run_config
    metrics_file = Path(str(config["artifacts-dir"])) / "metrics.jsonl"

    def central(server_round: int, arrays: ArrayRecord) -> MetricRecord:
        distance = float(np.abs(arrays.to_numpy_ndarrays()[0] - float(config["target"])).mean())
        if server_round > 0:  # round 0 scores the initial model
            with metrics_file.open("a") as out:
                out.write(json.dumps({"round": server_round, "loss": distance, "accuracy": 1 / (1 + distance)}) + "\\n")
        return MetricRecord({"distance": distance})

    FedAvg(fraction_evaluate=0.0).start(
        grid=grid, initial_arrays=ArrayRecord([np.zeros(4)]), num_rounds=int(config["num-server-rounds"]),
        timeout=60, evaluate_fn=central)
'''

# --- legacy: NumPyClient + client_fn, ServerApp with LegacyContext + DefaultWorkflow -------
LEGACY_CLIENT = '''
import numpy as np
from flwr.app import Context
from flwr.client import ClientApp, NumPyClient


class TargetClient(NumPyClient):
    def __init__(self, target: float) -> None:
        self.target = target

    def fit(self, parameters, config):
        weights = parameters[0]
        return [weights + 0.5 * (self.target - weights)], 10, {}

    def evaluate(self, parameters, config):
        return float(np.abs(parameters[0] - self.target).mean()), 10, {}


def client_fn(context: Context):
    return TargetClient(float(context.run_config["target"])).to_client()


app = ClientApp(client_fn=client_fn)
'''

LEGACY_SERVER = '''
import numpy as np
from flwr.app import Context
from flwr.common import ndarrays_to_parameters
from flwr.server import LegacyContext, ServerConfig
from flwr.server.strategy import FedAvg
from flwr.server.workflow import DefaultWorkflow
from flwr.serverapp import Grid, ServerApp

app = ServerApp()


@app.main()
def main(grid: Grid, context: Context) -> None:
    strategy = FedAvg(initial_parameters=ndarrays_to_parameters([np.zeros(4)]))
    legacy = LegacyContext(context=context, config=ServerConfig(num_rounds=int(context.run_config["num-server-rounds"])),
                           strategy=strategy)
    DefaultWorkflow()(grid, legacy)
'''

RAISING_SERVER = '''
from flwr.app import Context
from flwr.serverapp import Grid, ServerApp

app = ServerApp()


@app.main()
def main(grid: Grid, context: Context) -> None:
    raise RuntimeError(f"raising-app refuses to train: target {context.run_config['target']} is out of range")
'''


def write_app(directory: Path, package: str, config: str, server: str, client: str,
              flwr: str = FLOWER_RELEASE) -> Path:
    (directory / package).mkdir(parents=True)
    (directory / "pyproject.toml").write_text(PYPROJECT.format(name=package.replace("_", "-"), package=package,
                                                               config=dedent(config).strip(), flwr=flwr))
    (directory / package / "__init__.py").write_text("")
    (directory / package / "server_app.py").write_text(server.lstrip())
    (directory / package / "client_app.py").write_text(client.lstrip())
    return directory


def message_api_app(directory: Path, flwr: str = FLOWER_RELEASE) -> Path:
    """`flwr`: the Flower release the app asks for (its job image must run the same)."""
    return write_app(directory, "message_app", """
        num-server-rounds = 3
        target = 2.0
        artifacts-dir = "artifacts"
    """, MESSAGE_SERVER, MESSAGE_CLIENT, flwr)


def legacy_app(directory: Path) -> Path:
    return write_app(directory, "legacy_app", """
        num-server-rounds = 3
        target = 2.0
    """, LEGACY_SERVER, LEGACY_CLIENT)


def raising_app(directory: Path) -> Path:
    return write_app(directory, "raising_app", "target = 99.0", RAISING_SERVER, LEGACY_CLIENT)
