"""FedAvg rounds of the do-nothing ClientApp; one metrics.jsonl line per round with its seconds.

A round's `seconds` is the wall time between two calls of FedAvg's `evaluate_fn`, which
Flower makes before round 1 and after each round's aggregation: the round trip
(push, every site's reply, pull) plus aggregation, as training/'s rounds measure it.
"""

import json
import time
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
    last = time.perf_counter()

    def timed(server_round: int, arrays: ArrayRecord) -> MetricRecord:
        nonlocal last
        now = time.perf_counter()
        if server_round > 0:  # round 0 is the call before the first round
            with metrics_file.open("a") as out:
                out.write(json.dumps({"round": server_round, "seconds": round(now - last, 4)}) + "\n")
        last = now
        return MetricRecord({})

    sites = int(config["min-available-sites"])
    FedAvg(fraction_evaluate=0.0, min_train_nodes=sites, min_available_nodes=sites).start(
        grid=grid, initial_arrays=ArrayRecord([np.zeros(4, dtype=np.float32)]),
        num_rounds=int(config["num-server-rounds"]), timeout=float(config["round-timeout"]), evaluate_fn=timed)
