"""`python -m bench.pods` (`make bench-pods`): the federation in real pods against `make federate`, the
same app and run config, measured in the same run.

1. `make cluster STACK=pods` in a throwaway project copy (tools/live: two planes, a real node each), timed
   twice: with fresh nodes (every node pulls the images; the images themselves built or reused, and the
   registry's storage kept from earlier runs), then again with the clusters running (it finds them);
   `make up`.
2. `make run` of training/ with the run config `make federate` submits (its own overrides: every site
   sampled, built-in data), while watching every task pod Flower's executor launches (created ->
   container started -> finished) and the memory of the whole stack (RSS of the planes' and nodes'
   processes and of everything in the nodes' mount namespaces: shims and containers; sampled every 2 s).
3. `python -m federate` (local processes) with the same run config.
4. `make cluster-down`, and the disk the image store, the registry and the nodes took.

Prints seconds per round (later rounds: round 2 on) of both and their ratio (target: pods <= 1.5x), the
share of a round that task pods spend starting, peak memory and disk.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from datetime import datetime
from pathlib import Path

from bench.rounds import LOCAL, Timing, federate_timing, read_metrics, round_seconds, run_federate
from bench.table import fmt, print_table, ratio
from federate.__main__ import parse_args, resolve_sites
from federate.app import FlowerApp
from federate.run_config import run_overrides
from tools.engine.offline import REPO, Pulumi, copy_program
from tools.images.buildah import CACHE as IMAGE_CACHE
from tools.live import cluster
from tools.live.node import RealNode
from tools.live.registry import STORAGE as REGISTRY_STORAGE
from tools.ops.deployment import Deployment
from tools.ops.run import run

STACK = "pods"
PODS = "federation in pods"
TASK_LABEL = "flower.ai/superexec-task-id"


def stamp(text: str) -> float:
    return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()


class Watcher:
    """Samples the stack every 2 s while a run goes: its task pods and its memory."""

    def __init__(self, local: cluster.LocalStack, planes: dict) -> None:
        self.local, self.planes = local, planes
        self.pods: dict[str, dict] = {}
        self.peak_rss = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._watch, daemon=True)

    def __enter__(self) -> Watcher:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join(30)

    def _watch(self) -> None:
        while not self._stop.is_set():
            for plane in self.planes.values():
                listed = subprocess.run(["kubectl", "--kubeconfig", str(plane.kubeconfig), "get", "pods", "-A", "-l",
                                         TASK_LABEL, "-o", "json"], capture_output=True, text=True)
                if listed.returncode == 0:
                    for pod in json.loads(listed.stdout)["items"]:
                        self.pods[pod["metadata"]["uid"]] = pod
            self.peak_rss = max(self.peak_rss, self.rss())
            self._stop.wait(2)

    def rss(self) -> int:
        """Bytes resident in every process of the stack (planes, nodes, their containers, the registry)."""
        network = self.local.network()
        namespaces, roots = set(), [str(self.local.out)]
        for plane in self.planes.values():
            node = RealNode(plane, network)
            holder = node.pids().get("holder")
            if holder:
                namespaces.add(os.readlink(f"/proc/{holder}/ns/mnt"))
        total = 0
        for proc in Path("/proc").iterdir():
            if not proc.name.isdigit():
                continue
            try:
                ours = os.readlink(proc / "ns" / "mnt") in namespaces or any(
                    root in (proc / "cmdline").read_bytes().decode(errors="replace") for root in roots)
                if ours:
                    status = (proc / "status").read_text()
                    total += int(next(line.split()[1] for line in status.splitlines() if line.startswith("VmRSS"))) * 1024
            except (OSError, StopIteration):
                continue
        return total

    def start_seconds(self) -> list[float]:
        """Per task pod: creation -> its container started (scheduling, sandbox, container start)."""
        seconds = []
        for pod in self.pods.values():
            for container in pod.get("status", {}).get("containerStatuses") or []:
                state = container.get("state", {})
                started = (state.get("running") or state.get("terminated") or {}).get("startedAt")
                if started:
                    seconds.append(stamp(started) - stamp(pod["metadata"]["creationTimestamp"]))
        return seconds


def disk(path: Path) -> int:
    if not path.exists():
        return 0
    result = subprocess.run(["du", "-sb", str(path)], capture_output=True, text=True)
    return int(result.stdout.split()[0]) if result.returncode == 0 else 0


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.pods", description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5, help="rounds of both runs (default 5)")
    args = parser.parse_args()
    if args.rounds < 2:
        parser.error(f"--rounds: {args.rounds}; need at least 2 (later rounds are round 2 on)")
    started, load = time.perf_counter(), os.getloadavg()[0]
    federate_args = parse_args(["--rounds", str(args.rounds)])
    overrides = {key: value for key, value in run_overrides(federate_args, resolve_sites(federate_args),
                                                          FlowerApp.load(REPO / "training")).items()
                 if key != "artifacts-root"}  # the pods' own: /artifacts on the ServerApp's volume
    with tempfile.TemporaryDirectory(prefix="bench-pods-") as tmp:
        project = copy_program(Path(tmp) / "project", [REPO / f"Pulumi.{STACK}.yaml"])
        Pulumi(project, STACK).select_or_init()
        local = cluster.LocalStack(project, STACK)
        try:
            print("bench-pods: 1/4 make cluster STACK=pods (fresh nodes), twice", flush=True)
            t = time.perf_counter()
            planes = cluster.up(local)
            cluster_fresh = time.perf_counter() - t
            t = time.perf_counter()
            cluster.up(local)
            cluster_running = time.perf_counter() - t
            t = time.perf_counter()
            subprocess.run([str(REPO / ".toolchain" / "bin" / "pulumi"), "up", "--yes", "--skip-preview", "--stack",
                            STACK, "--non-interactive"], cwd=project, env=Pulumi(project, STACK).env, check=True,
                           capture_output=True)
            up_seconds = time.perf_counter() - t
            print(f"bench-pods: 2/4 make run ({args.rounds} rounds, {overrides})", flush=True)
            with Watcher(local, planes) as watcher:
                t = time.perf_counter()
                _, results = run(Deployment(project, STACK), REPO / "training", overrides, 3600, Path(tmp) / "runs")
                pods_run = time.perf_counter() - t
            metrics = results / "metrics.jsonl"
            summary = json.loads((results / "summary.json").read_text())
            pods = Timing(PODS, cluster_fresh + up_seconds, pods_run, round_seconds(read_metrics(metrics), metrics),
                          summary.get("final_accuracy"))
        finally:
            print("bench-pods: 4/4 make cluster-down", flush=True)
            sizes = {"image store": disk(IMAGE_CACHE), "registry": disk(REGISTRY_STORAGE),
                     "nodes (containerd, volumes)": disk(local.out / "live")}
            cluster.down(local)
        print("bench-pods: 3/4 make federate, the same run config", flush=True)
        run_federate(["--rounds", str(args.rounds), "--out-dir", str(Path(tmp) / "local")])
        localrun = federate_timing(LOCAL, Path(tmp) / "local")
    starts = watcher.start_seconds()
    print_table(f"training/, {args.rounds} rounds, 3 sites, the same run config; seconds",
                ("setup", "round 1", "later rounds mean", "later median", "final accuracy"),
                [[t.setup, t.rounds[0], t.later_mean(), t.later_median(), t.accuracy] for t in (pods, localrun)])
    print(f"\nlater rounds, pods / make federate: {fmt(ratio(pods.later_mean(), localrun.later_mean()))} "
          f"(mean), {fmt(ratio(pods.later_median(), localrun.later_median()))} (median); target <= 1.5")
    if starts:
        per_round = len(starts) / args.rounds
        print(f"task pods: {len(starts)} ({per_round:.1f} per round); created -> container started: mean "
              f"{fmt(statistics.fmean(starts))} s, median {fmt(statistics.median(starts))} s, max {fmt(max(starts))} s; "
              f"summed over a round's pods {fmt(statistics.fmean(starts) * per_round)} s of "
              f"{fmt(pods.later_mean())} s (pods of a site run one after another, sites side by side)")
    print(f"make cluster STACK=pods: fresh nodes {cluster_fresh:.0f} s, again with the clusters running "
          f"{cluster_running:.1f} s; make up {up_seconds:.0f} s")
    print(f"memory of the whole stack (planes, nodes, containers, registry), peak during the run: "
          f"{watcher.peak_rss / 2**30:.2f} GiB")
    print("disk: " + ", ".join(f"{name} {size / 2**30:.1f} GiB" for name, size in sizes.items()))
    print(f"\nbench-pods: {time.perf_counter() - started:.0f} s; load average {load:.1f} at the start, "
          f"{os.getloadavg()[0]:.1f} at the end; {os.cpu_count()} CPUs, {platform.machine()}")


if __name__ == "__main__":
    main()
