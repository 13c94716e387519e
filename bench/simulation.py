"""`python -m bench.simulation`: a Flower App under Flower's simulation runtime (Ray), for bench/rounds.py.

Runs in .venv-bench-simulation (requirements/bench-simulation.in: flwr[simulation], i.e. Ray), never
in .venv. It does what `flwr-simulation` does for `flwr run` against a local-simulation federation
(flwr/simulation/app.py, flwr 1.42): `_run_simulation` with the app directory, the run's override
config fused with the app's pyproject defaults (the ServerApp's context and every virtual SuperNode's),
Flower's default backend config (Ray, 2 CPUs per ClientApp actor); only the SuperLink that
`flwr run` would start around it is left out, so the seconds are the runtime's own. The public
`run_simulation` cannot carry a run config (its contexts start empty), hence the private call.

Virtual SuperNodes get node config `partition-id` and `num-partitions`, no `site-name` or
`data-root`: training/'s ClientApp then names itself `node-<id>` and takes the share of
built-in data that the server's survey assigns it, as in a federation.

Output: `--out FILE`, JSON {"run_id": int, "startup": s (imports until the runtime is called),
"run": s (the runtime's wall time: Ray's start, the survey, every round, the app's own report)}.
The app's results (training/: metrics.jsonl) are wherever its run config puts them.
"""

from __future__ import annotations

import time

STARTED = time.perf_counter()  # before the imports below: they are part of the start-up

import argparse  # noqa: E402
import json  # noqa: E402
from pathlib import Path  # noqa: E402

from flwr.app import Context, RecordDict  # noqa: E402
from flwr.common.config import get_fused_config_from_dir, get_project_config  # noqa: E402
from flwr.common.constant import SUPERLINK_NODE_ID  # noqa: E402
from flwr.simulation.run_simulation import _run_simulation  # noqa: E402
from flwr.supercore.constant import NOOP_FEDERATION_ID  # noqa: E402
from flwr.supercore.run import Run  # noqa: E402
from flwr.supercore.task_identity import TaskIdentity  # noqa: E402
from flwr.supercore.telemetry import EventType  # noqa: E402

RUN_ID = 1  # one run per process; the app's results go to <artifacts-root>/1/ (training/)


def simulate(app_dir: Path, sites: int, overrides: dict) -> dict:
    """Run the app on `sites` virtual SuperNodes with `overrides` on top of its run-config defaults."""
    components = get_project_config(app_dir)["tool"]["flwr"]["app"]["components"]
    run = Run.create_empty(run_id=RUN_ID)
    run.override_config = overrides
    run.primary_task_id = 1
    run.federation_id = NOOP_FEDERATION_ID
    # What _run_simulation sets itself when it makes the Run (we pass ours, to carry the run config).
    TaskIdentity.task_id, TaskIdentity.run_id, TaskIdentity.node_id = 1, RUN_ID, SUPERLINK_NODE_ID
    server_context = Context(run_id=RUN_ID, node_id=0, node_config={}, state=RecordDict(),
                             run_config=get_fused_config_from_dir(app_dir, overrides))
    startup = time.perf_counter() - STARTED
    begun = time.perf_counter()
    _run_simulation(num_supernodes=sites, exit_event=EventType.FLWR_SIMULATION_RUN_LEAVE,
                    server_app_attr=components["serverapp"], client_app_attr=components["clientapp"],
                    backend_name="ray", app_dir=str(app_dir), run=run, server_app_context=server_context,
                    is_app=True)
    return {"run_id": RUN_ID, "startup": round(startup, 4), "run": round(time.perf_counter() - begun, 4)}


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.simulation", description=__doc__.splitlines()[0])
    parser.add_argument("--app", type=Path, required=True, help="Flower App directory")
    parser.add_argument("--sites", type=int, required=True, help="virtual SuperNodes")
    parser.add_argument("--run-config", required=True, help="JSON object: run-config overrides")
    parser.add_argument("--out", type=Path, required=True, help="where the JSON result goes")
    args = parser.parse_args()
    result = simulate(args.app.resolve(), args.sites, json.loads(args.run_config))
    args.out.write_text(json.dumps(result) + "\n")


if __name__ == "__main__":
    main()
