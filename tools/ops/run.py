"""make run: submit a Flower App to a deployed federation, follow it, and fetch its results.

    make run STACK=<stack> [APP=DIR] [ARGS='-c key=value --timeout S']

The Control API is reached as administrators reach it: `kubectl port-forward` to the
`superlink-control` Service (the stack's `controlPortForward`, on a free local port), TLS verified
with the stack's CA and `flwrConnection` (never a public port). The run is submitted with
`flwr run`, a line is printed per round (from the run's metrics.jsonl on the artifacts volume,
read through a short-lived restricted pod), and when it ends its results (summary.json,
metrics.jsonl, report.png, the final model, checkpoints) are copied from the artifacts volume to
`out/<stack>/runs/<run-id>/`. On a stack whose clusters have only kwok's fake nodes it stops at
once, saying why.
"""

from __future__ import annotations

import argparse
import io
import json
import re
import socket
import subprocess
import sys
import tarfile
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from components import naming
from federate.app import PER_RUN_ROOT_KEY, FlowerApp
from federate.flwr_cli import FlwrCli
from federate.job import RunFailed, follow, submit
from federate.processes import Supervisor
from federate.progress import Progress
from tools.engine.offline import REPO
from tools.ops.deployment import Deployment, Kubectl, OpsError, require_real_nodes, volume_pod

ARTIFACTS_CLAIM = "serverapp-artifacts"  # components/server.py's claim, mounted at naming.ARTIFACTS_DIR
TRAINING_APP = REPO / "training"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def port_forward(kubectl: Kubectl, namespace: str, log: Path) -> Iterator[int]:
    """`kubectl port-forward svc/superlink-control <free port>:9093`; yields the local port."""
    port = free_port()
    with open(log, "wb") as out:
        process = subprocess.Popen(kubectl.argv("-n", namespace, "port-forward", f"svc/{naming.CONTROL_SERVICE}",
                                                f"{port}:{naming.CONTROL_PORT}", "--address", "127.0.0.1"),
                                   stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 30
        while b"Forwarding from" not in log.read_bytes():
            if process.poll() is not None or time.monotonic() > deadline:
                raise OpsError(f"kubectl port-forward to {namespace}/{naming.CONTROL_SERVICE} failed: "
                               f"{log.read_text(errors='replace').strip()[-300:]}")
            time.sleep(0.1)
        yield port
    finally:
        process.terminate()
        process.wait(10)


class ArtifactsReader:
    """The run's directory on the artifacts volume, read through a pod that mounts it read-only."""

    def __init__(self, kubectl: Kubectl, namespace: str, pod: str) -> None:
        self.kubectl, self.namespace, self.pod = kubectl, namespace, pod

    def _exec(self, *argv: str, check: bool = True) -> subprocess.CompletedProcess:
        return self.kubectl.run("exec", self.pod, "-n", self.namespace, "--", *argv, check=check)

    def read(self, relative: str) -> str:
        result = self._exec("cat", f"/volume/{relative}", check=False)
        return result.stdout if result.returncode == 0 else ""

    def copy(self, relative: str, destination: Path) -> list[str]:
        """Copies /volume/<relative>/ to `destination`; returns the names copied."""
        result = subprocess.run(self.kubectl.argv("exec", self.pod, "-n", self.namespace, "--", "tar", "-c", "-f", "-",
                                                  "-C", f"/volume/{relative}", "."), capture_output=True, timeout=600)
        if result.returncode != 0:
            raise OpsError(f"copying {naming.ARTIFACTS_DIR}/{relative}: {result.stderr.decode(errors='replace').strip()}")
        destination.mkdir(parents=True, exist_ok=True)
        with tarfile.open(fileobj=io.BytesIO(result.stdout)) as tar:
            members = [m for m in tar.getmembers() if m.isfile() or m.isdir()]
            tar.extractall(destination, members=members, filter="data")
        return sorted(m.name.removeprefix("./") for m in members if m.isfile())


def run(deployment: Deployment, app_dir: Path, overrides: dict[str, Any], timeout: float,
        out_root: Path) -> tuple[str, Path]:
    """Submits `app_dir`, prints its rounds, fetches its results to `out_root/<stack>/runs/<run id>/`;
    returns (run id, results directory)."""
    stack = deployment.stack
    config = deployment.config()
    kubectl = deployment.kubectl(config.clusters[config.server.cluster])
    require_real_nodes(kubectl, config.server.cluster, "no ServerApp or ClientApp pod can run there")
    outputs = deployment.outputs()
    app = FlowerApp.load(app_dir)
    rounds = int({**app.run_config, **overrides}.get("num-server-rounds", 0))
    progress = Progress(rounds, [s.name for s in config.sites], sys.stdout)
    namespace = config.server.namespace
    with tempfile.TemporaryDirectory(prefix="flowerbed-run-") as tmp, \
            Supervisor(Path(tmp) / "logs") as supervisor, \
            port_forward(kubectl, namespace, Path(tmp) / "port-forward.log") as port, \
            volume_pod(kubectl, namespace, ARTIFACTS_CLAIM, config.images.platform, config.images.pull_secrets,
                       read_only=True, role="artifacts-reader") as pod:
        ca = Path(tmp) / "ca.crt"
        ca.write_text(outputs["caCertificate"])
        cli = FlwrCli.configure(Path(tmp) / "flwr-home", config.federation, f"localhost:{port}", ca)
        progress.say(f"Control API of stack {stack} through kubectl port-forward on localhost:{port}; "
                     f"submitting {app.name}/ to {len(config.sites)} sites: {', '.join(s.name for s in config.sites)}")
        run_id = submit(cli, app.directory, overrides, Path(tmp))
        results = out_root / stack / "runs" / run_id
        results.mkdir(parents=True, exist_ok=True)
        reader = ArtifactsReader(kubectl, namespace, pod)
        relative = run_id if app.artifacts_key == PER_RUN_ROOT_KEY else None
        progress.say(f"Run {run_id} submitted; results will be copied to {results}")
        report = _round_reporter(reader, relative, progress, rounds)
        try:
            status = follow(cli, run_id, supervisor, report, timeout)
        except RunFailed as err:
            _fetch(reader, relative, results, progress)
            raise OpsError(str(err)) from None
        copied = _fetch(reader, relative, results, progress)
    summary = results / "summary.json"
    final = json.loads(summary.read_text()) if summary.exists() else {}
    progress.say(f"Run {run_id}: {status['status']}; {', '.join(copied) or 'no artifacts'} in {results}"
                 + (f"; final accuracy {final['final_accuracy']:.4f}" if final.get("final_accuracy") is not None else ""))
    return run_id, results


def _round_reporter(reader: ArtifactsReader, relative: str | None, progress: Progress, rounds: int):
    """Prints a line per round as metrics.jsonl on the volume grows (every few seconds: each read is an exec)."""
    seen = 0
    last = 0.0

    def report() -> None:
        nonlocal seen, last
        if relative is None or time.monotonic() - last < 3:
            return
        last = time.monotonic()
        lines = [line for line in reader.read(f"{relative}/metrics.jsonl").splitlines() if line.strip()]
        for line in lines[seen:]:
            progress.round_done(json.loads(line))
        seen = len(lines)

    return report


def _fetch(reader: ArtifactsReader, relative: str | None, results: Path, progress: Progress) -> list[str]:
    if relative is None:
        progress.say("The app keeps no per-run artifacts directory (no `artifacts-root` in its run config): "
                     "nothing to copy")
        return []
    return reader.copy(relative, results)


def parse_overrides(values: list[str]) -> dict[str, Any]:
    """`key=value` pairs, values in TOML (as `flwr run --run-config` reads them)."""
    import tomllib

    overrides: dict[str, Any] = {}
    for value in values:
        if not re.match(r"^[A-Za-z0-9_.-]+=", value):
            raise OpsError(f"-c {value!r}: expected key=value (a run-config key and a TOML value)")
        key, _, raw = value.partition("=")
        try:
            overrides[key] = tomllib.loads(f"v = {raw}")["v"]
        except tomllib.TOMLDecodeError:
            overrides[key] = raw  # a bare word: a string
    return overrides


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="make run", description=__doc__.split("\n\n")[0])
    parser.add_argument("stack")
    parser.add_argument("--app", type=Path, default=TRAINING_APP, help="a Flower App directory (default training/)")
    parser.add_argument("-c", "--run-config", action="append", default=[], help="key=value, repeatable")
    parser.add_argument("--timeout", type=float, default=3600, help="seconds the run may take (default 3600)")
    args = parser.parse_args(argv)
    try:
        run(Deployment(REPO, args.stack), args.app, parse_overrides(args.run_config), args.timeout, REPO / "out")
    except (OpsError, ValueError) as err:
        print(f"make run: {err}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
