"""`python -m federate`: a real Flower federation on loopback, trained end to end."""

from __future__ import annotations

import argparse
import signal
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import Any

from federate.app import FlowerApp
from federate.federation import LocalFederation, Ports
from federate.flwr_cli import FlwrCommandFailed
from federate.job import LineFollower, MetricsFollower, RunFailed, effective_run_config, follow, run_log, submit
from federate.ports import PortInUse, ensure_free, free_port
from federate.processes import ProcessDied, Supervisor
from federate.progress import Progress
from flowerbed_training.common.run_config import RunConfig
from flowerbed_training.server.report import Summary, summarize, write_report
from federate.run_config import DEFAULT_ROUND_TIMEOUT_S, DP_MODES, run_overrides, validate_training_run_config
from federate.sites import Site, site_names_from_stack, sites_from_names

REPO = Path(__file__).resolve().parent.parent
MAX_PORT = 65535
# What the ServerApp leaves in artifacts-dir, plus what we add; cleared so nothing stale mixes in.
OUTPUTS = ("metrics.jsonl", "final_model.npz", "summary.json", "report.png")
OUTPUT_DIRS = ("checkpoints", "logs")


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m federate",
        description="Run the dev stack's federation as real Flower processes on 127.0.0.1 "
        "(TLS, SuperNode authentication, process isolation) and run a Flower App on it "
        "(default: flowerbed's training/ app).",
    )
    job = parser.add_argument_group("the job", "each option sets one run-config key, which the app must declare; "
                                    "--strategy, --dataset, --dp and --secagg are training/'s keys")
    job.add_argument("--strategy", help="aggregation strategy (run config `strategy`; the app's default: fedavg)")
    job.add_argument("--rounds", type=int, help="federated rounds (run config `num-server-rounds`)")
    job.add_argument("--dataset", help="builtin:breast-cancer | builtin:digits | <study>/<dataset> under each site's data dir")
    job.add_argument("--dp", choices=sorted(DP_MODES), default="off",
                     help="differential privacy: per-site DP-SGD (local) or Flower's central DP wrappers")
    job.add_argument("--secagg", action="store_true", help="secure aggregation (SecAgg+)")
    job.add_argument("-c", "--run-config", action="append", default=[], metavar="KEY=VALUE",
                     help="any other run-config key of the app's pyproject.toml (TOML values; repeatable)")
    job.add_argument("--app", type=Path, default=REPO / "training",
                     help="any Flower App directory, Message API or legacy (default: training/)")
    topology = parser.add_argument_group("the federation")
    topology.add_argument("--stack-file", type=Path, default=REPO / "Pulumi.dev.yaml",
                          help="take the site names from this stack file (default: Pulumi.dev.yaml)")
    topology.add_argument("--sites", help="comma-separated site names instead of the stack file's")
    topology.add_argument("--data-dir", type=Path, default=REPO / "data",
                          help="each site's data-root is DATA_DIR/<site> (study data only; built-ins ship with scikit-learn)")
    topology.add_argument("--superlink-port", type=port_number, default=0,
                          help="SuperLink port for Fleet, Control and Runtime APIs (0: pick a free one)")
    topology.add_argument("--supernode-port-base", type=port_number, default=0,
                          help="SuperNode Runtime API ports BASE, BASE+1, ... per site (0: pick free ones)")
    topology.add_argument("--round-timeout", type=float,
                          help="seconds a round waits for the sites (run config `round-timeout`; "
                          f"training/: {DEFAULT_ROUND_TIMEOUT_S:.0f})")
    topology.add_argument("--timeout", type=positive_seconds, default=1800.0,
                          help="give up on the whole run after this many seconds")
    parser.add_argument("--out-dir", type=Path, default=REPO / "out" / "federate", help="where results go")
    return parser.parse_args(argv)


def port_number(text: str) -> int:
    """argparse type: a TCP port, 0 (pick a free one) to 65535."""
    if not text.isdigit() or int(text) > MAX_PORT:
        raise argparse.ArgumentTypeError(f"{text!r} is not a port (0 to {MAX_PORT}; 0 picks a free one)")
    return int(text)


def positive_seconds(text: str) -> float:
    """argparse type: seconds, > 0."""
    try:
        seconds = float(text)
    except ValueError:
        seconds = -1.0
    if not seconds > 0:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of seconds > 0")
    return seconds


def resolve_sites(args: argparse.Namespace) -> list[Site]:
    if args.sites:
        names = [name.strip() for name in args.sites.split(",") if name.strip()]
    else:
        names = site_names_from_stack(args.stack_file)
    if len(set(names)) != len(names) or not names:
        raise ValueError(f"--sites: need one or more distinct site names, got {names}")
    return sites_from_names(names)


def resolve_ports(args: argparse.Namespace, sites: Sequence[Site]) -> Ports:
    """Explicit ports are checked now, so a taken port fails before any process starts."""
    if args.superlink_port:
        ensure_free(args.superlink_port, "SuperLink", "--superlink-port")
    if args.supernode_port_base and args.supernode_port_base + len(sites) - 1 > MAX_PORT:
        raise ValueError(f"--supernode-port-base {args.supernode_port_base}: {len(sites)} sites need ports up to "
                         f"{args.supernode_port_base + len(sites) - 1}, past {MAX_PORT}")
    runtime = {}
    for index, site in enumerate(sites):
        if args.supernode_port_base:
            port = args.supernode_port_base + index
            ensure_free(port, f"SuperNode of {site.name} (Runtime API)", "--supernode-port-base")
        else:
            port = free_port()
        runtime[site.name] = port
    return Ports(args.superlink_port or free_port(), runtime)


def clear_outputs(out_dir: Path) -> None:
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise ValueError(f"--out-dir {out_dir}: cannot be created ({err.strerror})") from None
    for name in OUTPUTS:
        (out_dir / name).unlink(missing_ok=True)
    for name in OUTPUT_DIRS:
        for path in sorted((out_dir / name).glob("*")):
            path.unlink()


@dataclass
class Timer:
    started: float = field(default_factory=time.perf_counter)

    def seconds(self) -> float:
        return time.perf_counter() - self.started


def left_out(app: FlowerApp) -> list[str]:
    """flowerbed's extras this app cannot have, and why (said at start-up, kept in summary.json)."""
    notes = []
    if not app.reports_metrics:
        notes.append(f"no per-round progress lines or report.png: {app.name} does not declare "
                     f"{', '.join(app.missing_metrics_keys())} (the metrics contract in federate/README.md); "
                     "its ServerApp log is shown instead")
    if not app.is_training:
        notes.append("no centralized baseline: only flowerbed's training app provides one")
    return notes


def reporter(app: FlowerApp, results: Path, supervisor: Supervisor, progress: Progress) -> Callable[[], None]:
    """What `follow` calls while the run goes: round lines from metrics.jsonl, else the ServerApp's log."""
    if app.reports_metrics:
        metrics = MetricsFollower(results / "metrics.jsonl")

        def report_rounds() -> None:
            for line in metrics.new_rounds():
                progress.round_done(line)

        return report_rounds
    log = LineFollower(run_log(supervisor))

    def report_log() -> None:
        for line in log.new_lines():
            progress.say(f"  | {line}")

    return report_log


def federate(args: argparse.Namespace) -> Summary:
    total = Timer()
    sites = resolve_sites(args)
    ports = resolve_ports(args, sites)
    app = FlowerApp.load(args.app)
    overrides = run_overrides(args, sites, app)
    run_config = effective_run_config(app, overrides)
    checked = validate_training_run_config(app, run_config) if app.is_training else None
    names = [site.name for site in sites]
    rounds = int(run_config.get("num-server-rounds", 0))
    progress = Progress(rounds, names, sys.stdout)
    notes = left_out(app)
    clear_outputs(args.out_dir)

    with tempfile.TemporaryDirectory(prefix="flowerbed-federate-") as tmp, \
            Supervisor(args.out_dir / "logs") as supervisor:
        # Site state outlives the run (in --out-dir, like the cluster's state volumes): `-c resume=<run id>` continues it.
        federation = LocalFederation(sites, ports, Path(tmp), supervisor, state_root=args.out_dir / "state")
        progress.say(f"Starting SuperLink on 127.0.0.1:{ports.superlink} (TLS, SuperNode auth) "
                     f"and {len(sites)} SuperNodes: {', '.join(names)}")
        cli = federation.start(args.data_dir.resolve())
        startup = total.seconds()
        progress.say(f"All {len(sites)} SuperNodes authenticated and online after {startup:.0f} s; submitting {app.name}/")
        for note in notes:
            progress.say(f"Note: {note}")
        training = Timer()
        run_id = submit(cli, app.directory, overrides, Path(tmp))
        results = app.results_dir(args.out_dir, run_id)
        progress.say(f"Run {run_id}: {describe_job(app, run_config)}; results in {results}")
        status = follow(cli, run_id, supervisor, reporter(app, results, supervisor, progress), args.timeout)
        training_seconds = training.seconds()
    baseline = None
    if app.is_training:
        progress.say("Federation stopped; training the centralized baseline on pooled data ...")
        baseline = centralized_baseline(run_config, len(names), progress)
    rounds_log = MetricsFollower(results / "metrics.jsonl").new_rounds() if app.reports_metrics else []
    summary = summarize(
        run_id=run_id, app_dir=app.directory, sites=names, rounds=rounds_log, baseline=baseline,
        seconds={"startup": startup, "training": training_seconds, "total": total.seconds()}, run_status=status,
        out_dir=results, left_out=notes, logs=args.out_dir / "logs", **report_labels(checked, run_config),
    )
    write_report(summary, rounds_log, results)  # training/: replaces the ServerApp's own, adding the baseline
    written = [name for name in OUTPUTS if (results / name).exists()]
    progress.say(f"Wrote {results}/{', '.join(written)} and {args.out_dir}/logs/")
    progress.say(summary.final_line())
    return summary


def report_labels(checked: RunConfig | None, run_config: dict[str, Any]) -> dict[str, Any]:
    """What the report says the run was: training/'s RunConfig, or another app's own `strategy` and
    `dataset` keys if it has such (shown as they are; no protections)."""
    if checked is not None:
        return {"strategy": checked.strategy, "dataset": checked.dataset, "protections": checked.protections}
    return {"strategy": run_config.get("strategy"), "dataset": run_config.get("dataset")}


def describe_job(app: FlowerApp, run_config: dict[str, Any]) -> str:
    if app.is_training:
        return f"{run_config['strategy']} on {run_config['dataset']}, {run_config['num-server-rounds']} round(s)"
    rounds = f", {run_config['num-server-rounds']} round(s)" if "num-server-rounds" in run_config else ""
    return f"{app.name} ({app.components.get('serverapp')}){rounds}"


def centralized_baseline(run_config: dict[str, Any], sites: int, progress: Progress) -> dict[str, float] | None:
    """The app's own baseline (built-in data only): the same model trained on exactly what the
    `sites` sites train on, pooled (baseline.pooled_training_data), as bench/ compares against."""
    from flowerbed_training.common.baseline import centralized_baseline as train_pooled
    from flowerbed_training.common.data import DataError
    from flowerbed_training.common.run_config import RunConfig

    try:
        return train_pooled(RunConfig.parse(run_config), sites=sites)
    except DataError as err:
        progress.say(f"No centralized baseline: {err}")
        return None


def _interrupt(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt  # SIGTERM takes the same clean-up path as Ctrl-C


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    signal.signal(signal.SIGTERM, _interrupt)
    # Ctrl-C (SIGINT) stops it even when started from a background job, which inherits SIGINT
    # ignored (Python then raises no KeyboardInterrupt).
    signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        federate(args)
    except KeyboardInterrupt:
        print("federate: interrupted; every Flower process has been stopped", file=sys.stderr)
        return 130
    except (PortInUse, ProcessDied, RunFailed, FlwrCommandFailed, TimeoutError, ValueError) as err:
        print(f"federate: error: {err}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
