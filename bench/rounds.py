"""`python -m bench.rounds` (`make bench-rounds`): seconds per round of the local federation against
Flower's simulation runtime and against Flower's polling floor, measured in the same run.

Three setups, the same number of rounds and sites (the dev stack's, 3), one after another:

- local federation: `python -m federate` on training/ with its default run config (real SuperLink,
  SuperNodes and SuperExecs, TLS, a ClientApp process per message);
- simulation: the same app and the same run config (federate's own overrides: every site sampled,
  120 s round timeout, no site evaluation on built-in data) under Flower's simulation runtime
  (bench/simulation.py, in .venv-bench-simulation: Ray);
- polling floor: `python -m federate --app bench/floor_app`, FedAvg rounds whose ClientApp imports
  torch and replies at once, so every second of its rounds is Flower's own.

Per setup: start-up (federate: until every SuperNode is online, summary.json `seconds.startup`;
simulation: the runner's imports), `outside rounds` (the run's wall time minus its rounds: the
ServerApp's start, training/'s survey, the final report), the first round and the later rounds
(metrics.jsonl `seconds`, timed by each ServerApp from the start of a round to the end of its
aggregation and evaluation), total = start-up + run. Ratios: local federation / simulation and
local federation / floor of each figure. The floor is also computed from Flower's poll intervals
(POLLS), printed with where each is set.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from components.naming import SUPEREXEC_ENV, TASK_POLL_INTERVAL_ENV
from federate.__main__ import parse_args, resolve_sites
from federate.app import FlowerApp
from federate.flwr_cli import flower_env
from federate.run_config import run_overrides
from flowerbed_training.server import round_log  # importable once federate has put training/ on the path

from .table import fmt, print_table, ratio

REPO = Path(__file__).resolve().parents[1]
SIMULATION_PYTHON = REPO / ".venv-bench-simulation" / "bin" / "python"  # tools/ensure-venv bench-simulation
FLOOR_APP = REPO / "bench" / "floor_app"
LOCAL, SIMULATION, FLOOR = "local federation", "simulation", "polling floor"


@dataclass(frozen=True)
class Poll:
    what: str
    seconds: float
    source: str


# Flower 1.42's waits on a message's way (tests/bench/test_rounds.py checks them against the installed flwr).
POLLS = (
    Poll("SuperNode pulls the SuperLink for a message", 3.0,
         "flwr/supernode/start_client_internal.py, start_client_internal: time.sleep(3) (hard-coded)"),
    Poll("SuperExec polls its SuperNode for a ClientApp task", float(SUPEREXEC_ENV[TASK_POLL_INTERVAL_ENV]),
         "components/naming.py SUPEREXEC_ENV (FLWR_SUPEREXEC_TASK_POLL_INTERVAL; Flower's default 1.0 s)"),
    Poll("SuperNode polls for the ClientApp's reply", 0.5,
         "flwr/supernode/start_client_internal.py, _push_messages: time.sleep(0.5)"),
    Poll("ServerApp pulls the SuperLink for the replies", 3.0,
         "flwr/superlink/grid/http_grid.py, HttpGrid.send_and_receive: time.sleep(3)"),
)


@dataclass(frozen=True)
class Timing:
    """One setup's seconds (and final accuracy, when the app has one)."""

    setup: str
    startup: float
    run: float  # wall time of the run itself (submit or runtime call to its end)
    rounds: tuple[float, ...]  # metrics.jsonl `seconds`, in round order
    accuracy: float | None

    def __post_init__(self) -> None:
        if not self.rounds:
            raise ValueError(f"{self.setup}: no rounds in metrics.jsonl; the run recorded nothing to compare")

    @property
    def total(self) -> float:
        return self.startup + self.run

    @property
    def outside_rounds(self) -> float:
        return self.run - sum(self.rounds)

    @property
    def later(self) -> tuple[float, ...]:
        return self.rounds[1:]

    def later_mean(self) -> float | None:
        return statistics.fmean(self.later) if self.later else None

    def later_median(self) -> float | None:
        return statistics.median(self.later) if self.later else None


def read_metrics(path: Path) -> list[dict[str, Any]]:
    """metrics.jsonl's lines (`path`), in round order."""
    return sorted(round_log.read_metrics(path.parent), key=lambda line: int(line["round"]))


def round_seconds(lines: Sequence[dict[str, Any]], path: Path) -> tuple[float, ...]:
    missing = [line.get("round") for line in lines if "seconds" not in line]
    if missing:
        raise ValueError(f"{path}: rounds {missing} have no `seconds`")
    return tuple(float(line["seconds"]) for line in lines)


def federate_timing(setup: str, out_dir: Path) -> Timing:
    """A `python -m federate --out-dir OUT_DIR` run's timing, from its summary.json and metrics.jsonl."""
    summaries = sorted(out_dir.glob("**/summary.json"))
    if len(summaries) != 1:
        raise ValueError(f"{out_dir}: expected one run's summary.json, found {len(summaries)}")
    summary = json.loads(summaries[0].read_text())
    if summary["status"] != "finished:completed":
        raise ValueError(f"{summaries[0]}: the run ended {summary['status']}, not finished:completed")
    metrics = summaries[0].with_name("metrics.jsonl")
    seconds = summary["seconds"]
    return Timing(setup, float(seconds["startup"]), float(seconds["training"]),
                  round_seconds(read_metrics(metrics), metrics), summary.get("final_accuracy"))


def simulation_timing(result: Path, metrics: Path) -> Timing:
    """bench/simulation.py's result JSON and the app's metrics.jsonl."""
    seconds = json.loads(result.read_text())
    lines = read_metrics(metrics)
    return Timing(SIMULATION, float(seconds["startup"]), float(seconds["run"]), round_seconds(lines, metrics),
                  lines[-1].get("accuracy") if lines else None)


def computed_floor(sites: int, clientapp_start: float) -> tuple[float, float]:
    """(expected, worst) seconds of a synchronous round whose ClientApps do nothing but start.

    A message waits for its SuperNode's pull (uniform over the 3 s interval; the round waits for
    the last of `sites`, expected 3 n/(n+1)), the SuperExec's poll and the SuperNode's reply poll
    (half an interval each on average), and a ClientApp process start. The ServerApp pulls once
    right after it pushes, then every 3 s, so the round lasts whole multiples of that interval.
    """
    supernode, superexec, reply, serverapp = (poll.seconds for poll in POLLS)
    expected_wait = supernode * sites / (sites + 1) + superexec / 2 + reply / 2
    worst_wait = supernode + superexec + reply
    quantized = [serverapp * max(1, math.ceil((wait + clientapp_start) / serverapp))
                 for wait in (expected_wait, worst_wait)]
    return quantized[0], quantized[1]


SUMMARY_HEADER = ("setup", "start-up s", "outside rounds s", "round 1 s", "later rounds mean s", "later median s",
                  "total s", "final accuracy")


def summary_rows(timings: Sequence[Timing]) -> list[list[object]]:
    return [[t.setup, t.startup, t.outside_rounds, t.rounds[0], t.later_mean(), t.later_median(), t.total, t.accuracy]
            for t in timings]


RATIO_HEADER = ("figure", "local / simulation", "local / floor")
FIGURES = (("later rounds, mean", Timing.later_mean), ("later rounds, median", Timing.later_median),
           ("round 1", lambda t: t.rounds[0]), ("start-up", lambda t: t.startup), ("total", lambda t: t.total))


def ratio_rows(local: Timing, simulation: Timing | None, floor: Timing | None) -> list[list[object]]:
    def of(timing: Timing | None, figure: Any) -> float | None:
        return figure(timing) if timing is not None else None

    return [[name, ratio(of(local, figure), of(simulation, figure)), ratio(of(local, figure), of(floor, figure))]
            for name, figure in FIGURES]


def timed_clientapp_start(sites: int) -> float:
    """Wall seconds for `sites` processes at once to import what a ClientApp process imports (torch, flwr)."""
    command = [sys.executable, "-c", "import torch, flwr.clientapp"]
    started = time.perf_counter()
    processes = [subprocess.Popen(command) for _ in range(sites)]
    if any(process.wait() for process in processes):
        raise RuntimeError(f"{' '.join(command)} failed")
    return time.perf_counter() - started


def run_federate(arguments: list[str]) -> None:
    subprocess.run([sys.executable, "-m", "federate", *arguments], check=True, cwd=REPO)


def run_simulation(rounds: int, out_dir: Path) -> Timing:
    """training/ under bench/simulation.py with the run config federate would submit."""
    if not SIMULATION_PYTHON.exists():
        raise FileNotFoundError(f"{SIMULATION_PYTHON}: missing; `tools/ensure-venv bench-simulation` builds it "
                                "(make bench-rounds does)")
    args = parse_args(["--rounds", str(rounds), "--out-dir", str(out_dir)])
    sites = resolve_sites(args)
    overrides = run_overrides(args, sites, FlowerApp.load(args.app))  # artifacts-root: out_dir
    out_dir.mkdir(parents=True, exist_ok=True)
    result = out_dir / "simulation.json"
    environment = {**flower_env(out_dir / "flwr-home"), "RAY_USAGE_STATS_ENABLED": "0"}  # offline: no phoning home
    log = out_dir / "simulation.log"  # Flower's and Ray's chatter; its tail is shown if the run fails
    with log.open("w") as output:
        code = subprocess.run([str(SIMULATION_PYTHON), "-m", "bench.simulation", "--app", str(args.app),
                               "--sites", str(len(sites)), "--run-config", json.dumps(overrides), "--out", str(result)],
                              cwd=REPO, env=environment, stdout=output, stderr=subprocess.STDOUT).returncode
    if code:
        tail = "\n".join(log.read_text().splitlines()[-20:])
        raise RuntimeError(f"bench.simulation exited {code}; the end of {log}:\n{tail}")
    run_id = json.loads(result.read_text())["run_id"]
    return simulation_timing(result, out_dir / str(run_id) / "metrics.jsonl")


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.rounds", description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=10, help="rounds of every setup (default: 10, as make federate)")
    parser.add_argument("--out-dir", type=Path, help="keep every run's output here (default: a temp dir, removed)")
    args = parser.parse_args()
    if args.rounds < 2:
        parser.error(f"--rounds: {args.rounds}; need at least 2 (the first round is reported apart from the later ones)")
    try:
        sites = len(resolve_sites(parse_args([])))  # make federate's: the dev stack's sites
    except ValueError as err:
        parser.error(str(err))
    started, load = time.perf_counter(), os.getloadavg()[0]
    with tempfile.TemporaryDirectory(prefix="bench-rounds-") as tmp:
        out = args.out_dir.resolve() if args.out_dir else Path(tmp)
        print(f"bench-rounds: 1/3 {LOCAL} (python -m federate)", flush=True)
        run_federate(["--rounds", str(args.rounds), "--out-dir", str(out / "local")])
        local = federate_timing(LOCAL, out / "local")
        print(f"bench-rounds: 2/3 {SIMULATION} (bench.simulation, Ray; its log: {out / 'simulation' / 'simulation.log'})",
              flush=True)
        simulation = run_simulation(args.rounds, out / "simulation")
        print(f"bench-rounds: 3/3 {FLOOR} (python -m federate --app {FLOOR_APP.relative_to(REPO)})", flush=True)
        run_federate(["--app", str(FLOOR_APP), "--rounds", str(args.rounds), "-c", f"min-available-sites={sites}",
                      "--out-dir", str(out / "floor")])
        floor = federate_timing(FLOOR, out / "floor")
        clientapp_start = timed_clientapp_start(sites)
    print_table(f"Rounds: training/ ({args.rounds} rounds, {sites} sites) as a local federation and under Flower's "
                f"simulation runtime, and the polling floor app; seconds", SUMMARY_HEADER,
                summary_rows([local, simulation, floor]))
    print_table("Ratios (baselines measured in the same run)", RATIO_HEADER, ratio_rows(local, simulation, floor))
    polls_only, with_start = computed_floor(sites, 0.0), computed_floor(sites, clientapp_start)
    print(f"\nComputed floor ({sites} sites), expected / worst seconds per round: polls alone {fmt(polls_only[0])} / "
          f"{fmt(polls_only[1])}; with a ClientApp process start per message ({sites} at once, importing torch and "
          f"flwr: {fmt(clientapp_start)} s, measured now) {fmt(with_start[0])} / {fmt(with_start[1])}. "
          "Flower's poll intervals:")
    for poll in POLLS:
        print(f"  {poll.seconds:>4} s  {poll.what}: {poll.source}")
    print(f"\nbench-rounds: {time.perf_counter() - started:.0f} s; load average {load:.1f} at the start, "
          f"{os.getloadavg()[0]:.1f} at the end; {os.cpu_count()} CPUs, {platform.machine()}, "
          f"Python {platform.python_version()}")


if __name__ == "__main__":
    main()
