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
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from components import naming
from components.config import FederationConfig
from federate.app import PER_RUN_ROOT_KEY, SHARED_DIR_KEY, FlowerApp
from federate.flwr_cli import FlwrCli, FlwrCommandFailed
from federate.job import COMPLETED, run_status, submit
from federate.processes import without_colours
from federate.progress import Progress
from tools.engine.offline import REPO
from tools.ops.deployment import Deployment, Kubectl, OpsError, live_platform_image, require_real_nodes, volume_pod

ARTIFACTS_CLAIM = "serverapp-artifacts"  # components/server.py's claim, mounted at naming.ARTIFACTS_DIR
TRAINING_APP = REPO / "training"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class PortForward:
    """`kubectl port-forward svc/superlink-control <port>:9093` on a fixed free local port, started again
    whenever it has died: a port-forward ends with the pod it chose, e.g. when SuperLink restarts."""

    def __init__(self, kubectl: Kubectl, namespace: str, log: Path) -> None:
        self.kubectl, self.namespace, self.log = kubectl, namespace, log
        self.port = free_port()
        self.process: subprocess.Popen | None = None

    def ensure(self, timeout: float = 60) -> None:
        """The forward is listening (started, or started again); OpsError if it cannot be within `timeout`."""
        if self.process is not None and self.process.poll() is None:
            return
        deadline = time.monotonic() + timeout
        while True:
            with open(self.log, "wb") as out:
                self.process = subprocess.Popen(
                    self.kubectl.argv("-n", self.namespace, "port-forward", f"svc/{naming.CONTROL_SERVICE}",
                                      f"{self.port}:{naming.CONTROL_PORT}", "--address", "127.0.0.1"),
                    stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
            while self.process.poll() is None and b"Forwarding from" not in self.log.read_bytes():
                time.sleep(0.1)
            if self.process.poll() is None:
                return
            if time.monotonic() > deadline:  # e.g. no SuperLink pod running for a minute
                raise OpsError(f"kubectl port-forward to {self.namespace}/{naming.CONTROL_SERVICE} failed: "
                               f"{self.log.read_text(errors='replace').strip()[-300:]}")
            time.sleep(2)

    def close(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            self.process.wait(10)


@contextmanager
def port_forward(kubectl: Kubectl, namespace: str, log: Path) -> Iterator[PortForward]:
    forward = PortForward(kubectl, namespace, log)
    forward.ensure()
    try:
        yield forward
    finally:
        forward.close()


@contextmanager
def control_api(deployment: Deployment, config: FederationConfig, kubectl: Kubectl,
                directory: Path) -> Iterator[tuple[FlwrCli, PortForward]]:
    """`flwr` against the stack's Control API as administrators reach it: the port-forward, TLS verified
    with the stack's CA (its `caCertificate` output), Flower's files in `directory`."""
    with port_forward(kubectl, config.server.namespace, directory / "port-forward.log") as forward:
        ca = directory / "ca.crt"
        ca.write_text(deployment.outputs()["caCertificate"])
        yield FlwrCli.configure(directory / "flwr-home", config.federation, f"localhost:{forward.port}", ca), forward


class ArtifactsReader:
    """The run's directory on the artifacts volume, read through a pod that mounts it read-only."""

    def __init__(self, kubectl: Kubectl, namespace: str, pod: str) -> None:
        self.kubectl, self.namespace, self.pod = kubectl, namespace, pod

    def _exec(self, *argv: str, check: bool = True) -> subprocess.CompletedProcess:
        return self.kubectl.run("exec", self.pod, "-n", self.namespace, "--", *argv, check=check)

    def make_directory(self, relative: str) -> None:
        self._exec("mkdir", "-p", f"/volume/{relative}")

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
    # A run needs no image from the config (the executors name the job image): a stack mid-upgrade, or
    # one still on an older release's images, takes runs from this checkout too.
    config = deployment.live_config()
    kubectl = deployment.kubectl(config.clusters[config.server.cluster])
    require_real_nodes(kubectl, config.server.cluster, "no ServerApp or ClientApp pod can run there")
    app = FlowerApp.load(app_dir)
    if app.artifacts_key == SHARED_DIR_KEY and SHARED_DIR_KEY not in overrides:
        # An app writing to one `artifacts-dir`: a directory of its own on the ServerApp pod's artifacts volume.
        overrides = {**overrides, SHARED_DIR_KEY: f"{naming.ARTIFACTS_DIR}/{app.name}-{time.strftime('%Y%m%d-%H%M%S')}"}
    # Such an app expects its directory to exist (as `make federate` makes it): made here, by the reader pod.
    shared_dir = _under_artifacts(overrides.get(SHARED_DIR_KEY)) if app.artifacts_key == SHARED_DIR_KEY else None
    rounds = int({**app.run_config, **overrides}.get("num-server-rounds", 0))
    progress = Progress(rounds, [s.name for s in config.sites], sys.stdout)
    namespace = config.server.namespace
    with tempfile.TemporaryDirectory(prefix="flowerbed-run-") as tmp, \
            control_api(deployment, config, kubectl, Path(tmp)) as (cli, forward), \
            volume_pod(kubectl, namespace, ARTIFACTS_CLAIM, live_platform_image(kubectl, namespace),
                       config.images.pull_secrets, read_only=shared_dir is None, role="artifacts-reader") as pod:
        progress.say(f"Control API of stack {stack} through kubectl port-forward on localhost:{forward.port}; "
                     f"submitting {app.name}/ to {len(config.sites)} sites: {', '.join(s.name for s in config.sites)}")
        reader = ArtifactsReader(kubectl, namespace, pod)
        if shared_dir is not None:
            reader.make_directory(shared_dir)
        run_id = submit(cli, app.directory, overrides, Path(tmp))
        results = out_root / stack / "runs" / run_id
        results.mkdir(parents=True, exist_ok=True)
        relative = run_id if app.artifacts_key == PER_RUN_ROOT_KEY else shared_dir
        progress.say(f"Run {run_id} submitted; results will be copied to {results}")
        report = _round_reporter(reader, relative, progress, rounds)
        try:
            status = follow(cli, forward, run_id, report, timeout)
        except OpsError as err:
            _fetch(reader, relative, results, progress)
            if (results / "checkpoints" / "latest.json").exists() and "resume" in app.run_config:
                raise OpsError(f"{err}\nIts checkpoints are in {results / 'checkpoints'}; continue it with "
                               f"make run STACK={stack} ARGS='-c resume={run_id}'") from None
            raise
        copied = _fetch(reader, relative, results, progress)
    summary = results / "summary.json"
    final = json.loads(summary.read_text()) if summary.exists() else {}
    progress.say(f"Run {run_id}: {status['status']}; {', '.join(copied) or 'no artifacts'} in {results}"
                 + (f"; final accuracy {final['final_accuracy']:.4f}" if final.get("final_accuracy") is not None else ""))
    return run_id, results


def follow(cli: FlwrCli, forward: PortForward, run_id: str, report: Callable[[], None],
           timeout: float) -> dict[str, Any]:
    """Waits until the run has finished, calling `report` as it goes; returns its status.

    Asks the Control API for the run's status every few seconds rather than following a log stream:
    a SuperLink restart ends every stream and port-forward (both are made again here), and the
    run itself goes on (Flower 1.42: the ServerApp reconnects, the run's state is on the SuperLink's
    volume). OpsError when the run ends other than completed, with the ServerApp's last log lines.
    """
    deadline = time.monotonic() + timeout
    while True:
        report()
        try:
            forward.ensure()
            status = run_status(cli, run_id)
        except FlwrCommandFailed:
            status = {"status": "unknown"}  # SuperLink restarting: ask again
        if status["status"].startswith("finished"):
            break
        if time.monotonic() > deadline:
            raise OpsError(f"run {run_id} did not finish within {timeout:.0f} s (its status: {status['status']})")
        time.sleep(3)
    report()
    if status["status"] != COMPLETED:
        logs = subprocess.run(cli.argv("log", run_id, cli.connection), env=cli.env(), capture_output=True, text=True,
                              timeout=60).stdout
        tail = "\n".join("    " + line for line in without_colours(logs).splitlines()[-30:])
        raise OpsError(f"run {run_id} ended as {status['status']} ({status.get('status-details') or 'no details'}); "
                       f"last ServerApp log lines:\n{tail}")
    return status


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


def _under_artifacts(directory: Any) -> str | None:
    """`directory` relative to the artifacts volume, if it is on it."""
    prefix = f"{naming.ARTIFACTS_DIR}/"
    return directory[len(prefix):] if isinstance(directory, str) and directory.startswith(prefix) else None


def _fetch(reader: ArtifactsReader, relative: str | None, results: Path, progress: Progress) -> list[str]:
    if relative is None:
        progress.say(f"The app keeps no artifacts on the volume at {naming.ARTIFACTS_DIR} (neither `artifacts-root` "
                     "nor `artifacts-dir` in its run config): nothing to copy")
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
