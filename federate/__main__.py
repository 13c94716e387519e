"""`python -m federate`: a real Flower federation on loopback, trained end to end."""

from __future__ import annotations

import argparse
import signal
import sys
import tempfile
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import Any

from flwr.common.config import parse_config_args

from federate.federation import LocalFederation, Ports
from federate.flwr_cli import FlwrCommandFailed
from federate.job import MetricsFollower, RunFailed, app_run_config, effective_run_config, follow, submit
from federate.ports import PortInUse, ensure_free, free_port
from federate.processes import ProcessDied, Supervisor
from federate.progress import Progress
from federate.report import Summary, plot_report, summarize, write_summary
from federate.sites import Site, site_names_from_stack, sites_from_names

REPO = Path(__file__).resolve().parent.parent
# What the ServerApp leaves in artifacts-dir, plus what we add; cleared so nothing stale mixes in.
OUTPUTS = ("metrics.jsonl", "final_model.npz", "summary.json", "report.png")
OUTPUT_DIRS = ("checkpoints", "logs")
DP_MODES = {
    "off": {},
    "local": {"local-dp": True},
    "central-server": {"central-dp": "server"},
    "central-client": {"central-dp": "client"},
}


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m federate",
        description="Run the dev stack's federation as real Flower processes on 127.0.0.1 "
        "(TLS, SuperNode authentication, process isolation) and train the training/ app.",
    )
    job = parser.add_argument_group("the job")
    job.add_argument("--strategy", help="aggregation strategy (run config `strategy`; the app's default: fedavg)")
    job.add_argument("--rounds", type=int, help="federated rounds (run config `num-server-rounds`)")
    job.add_argument("--dataset", help="builtin:breast-cancer | builtin:digits | <study>/<dataset> under each site's data dir")
    job.add_argument("--dp", choices=sorted(DP_MODES), default="off",
                     help="differential privacy: per-site DP-SGD (local) or Flower's central DP wrappers")
    job.add_argument("--secagg", action="store_true", help="secure aggregation (SecAgg+)")
    job.add_argument("-c", "--run-config", action="append", default=[], metavar="KEY=VALUE",
                     help="any other run-config key of training/pyproject.toml (TOML values; repeatable)")
    job.add_argument("--app", type=Path, default=REPO / "training", help="Flower App directory (default: training/)")
    topology = parser.add_argument_group("the federation")
    topology.add_argument("--stack-file", type=Path, default=REPO / "Pulumi.dev.yaml",
                          help="take the site names from this stack file (default: Pulumi.dev.yaml)")
    topology.add_argument("--sites", help="comma-separated site names instead of the stack file's")
    topology.add_argument("--data-dir", type=Path, default=REPO / "data",
                          help="each site's data-root is DATA_DIR/<site> (study data only; built-ins ship with scikit-learn)")
    topology.add_argument("--superlink-port", type=int, default=0,
                          help="SuperLink port for Fleet, Control and Runtime APIs (0: pick a free one)")
    topology.add_argument("--supernode-port-base", type=int, default=0,
                          help="SuperNode Runtime API ports BASE, BASE+1, ... per site (0: pick free ones)")
    topology.add_argument("--round-timeout", type=float, default=120.0,
                          help="seconds a round waits for the sites (run config `round-timeout`)")
    topology.add_argument("--timeout", type=float, default=1800.0, help="give up on the whole run after this many seconds")
    parser.add_argument("--out-dir", type=Path, default=REPO / "out" / "federate", help="where results go")
    return parser.parse_args(argv)


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
    runtime = {}
    for index, site in enumerate(sites):
        if args.supernode_port_base:
            port = args.supernode_port_base + index
            ensure_free(port, f"SuperNode of {site.name} (Runtime API)", "--supernode-port-base")
        else:
            port = free_port()
        runtime[site.name] = port
    return Ports(args.superlink_port or free_port(), runtime)


def run_overrides(args: argparse.Namespace, sites: Sequence[Site], app_defaults: Mapping[str, Any]) -> dict[str, Any]:
    overrides: dict[str, Any] = {
        "artifacts-dir": str(args.out_dir.resolve()),
        # Every local site is up before the run starts, so sample all of them every round.
        "min-available-sites": len(sites),
        "round-timeout": args.round_timeout,
        **DP_MODES[args.dp],
    }
    for key, value in (("strategy", args.strategy), ("num-server-rounds", args.rounds), ("dataset", args.dataset)):
        if value is not None:
            overrides[key] = value
    if args.secagg:
        overrides["secagg"] = True
    overrides.update(parse_config_args(args.run_config) if args.run_config else {})
    dataset = str(overrides.get("dataset", app_defaults.get("dataset", "")))
    if dataset.startswith("builtin:") and "fraction-evaluate" not in overrides:
        # Built-in data: the ServerApp scores every round on the global held-out test set
        # already. Flower starts a ClientApp process per message, so skipping the sites'
        # own evaluation halves each round's start-ups (-c fraction-evaluate=1.0 restores it).
        overrides["fraction-evaluate"] = 0.0
    return overrides


def validate_run_config(app_dir: Path, run_config: dict[str, Any]) -> None:
    """The app's own validation, before any process starts (errors name the key)."""
    if str(app_dir) not in sys.path:
        sys.path.insert(0, str(app_dir))  # the app's own modules, as its ServerApp imports them
    from flowerbed_training import compression, privacy, secagg
    from flowerbed_training.settings import ClientSettings, ServerSettings

    ServerSettings.from_run_config(run_config)
    ClientSettings.from_run_config(run_config)
    # Otherwise a bad privacy or SecAgg+ setting would only surface as error replies from the sites.
    if privacy.local_dp_enabled(run_config):
        privacy.LocalDpSettings.from_run_config(run_config)
    privacy.CentralDpSettings.from_run_config(run_config)
    if secagg.secagg_enabled(run_config):
        secagg.SecAggSettings.from_run_config(run_config)
    compression.CompressionSettings.from_run_config(run_config)


def clear_outputs(out_dir: Path) -> None:
    out_dir.mkdir(parents=True, exist_ok=True)
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


def federate(args: argparse.Namespace) -> Summary:
    total = Timer()
    sites = resolve_sites(args)
    ports = resolve_ports(args, sites)
    app_dir = args.app.resolve()
    overrides = run_overrides(args, sites, app_run_config(app_dir))
    run_config = effective_run_config(app_dir, overrides)
    validate_run_config(app_dir, run_config)
    names = [site.name for site in sites]
    rounds = int(run_config["num-server-rounds"])
    progress = Progress(rounds, names, sys.stdout)
    clear_outputs(args.out_dir)

    with tempfile.TemporaryDirectory(prefix="flowerbed-federate-") as tmp, \
            Supervisor(args.out_dir / "logs") as supervisor:
        federation = LocalFederation(sites, ports, Path(tmp), supervisor)
        progress.say(f"Starting SuperLink on 127.0.0.1:{ports.superlink} (TLS, SuperNode auth) "
                     f"and {len(sites)} SuperNodes: {', '.join(names)}")
        cli = federation.start(args.data_dir.resolve())
        startup = total.seconds()
        progress.say(f"All {len(sites)} SuperNodes authenticated and online after {startup:.0f} s; submitting {app_dir.name}/")
        training = Timer()
        run_id = submit(cli, app_dir, overrides, Path(tmp))
        progress.say(f"Run {run_id}: {run_config['strategy']} on {run_config['dataset']}, {rounds} round(s)")
        metrics = MetricsFollower(args.out_dir / "metrics.jsonl")
        status = follow(cli, run_id, supervisor, metrics, progress.round_done, args.timeout)
        training_seconds = training.seconds()
    progress.say("Federation stopped; training the centralized baseline on pooled data ...")
    baseline = centralized_baseline(run_config, progress)
    rounds_log = MetricsFollower(args.out_dir / "metrics.jsonl").new_rounds()
    summary = summarize(
        run_id=run_id, app_dir=app_dir, run_config=run_config, sites=names, rounds=rounds_log, baseline=baseline,
        seconds={"startup": startup, "training": training_seconds, "total": total.seconds()}, run_status=status,
    )
    write_summary(summary, args.out_dir / "summary.json")
    plot_report(summary, rounds_log, args.out_dir / "report.png")
    progress.say(f"Wrote {args.out_dir}/summary.json, report.png, metrics.jsonl, final_model.npz")
    progress.say(summary.final_line())
    return summary


def centralized_baseline(run_config: dict[str, Any], progress: Progress) -> dict[str, float] | None:
    """The app's own baseline: the same model on the pooled data (built-in data only)."""
    from flowerbed_training.data import DataError
    from flowerbed_training.task import centralized_baseline as train_pooled

    try:
        return train_pooled(run_config)
    except DataError as err:
        progress.say(f"No centralized baseline: {err}")
        return None


def _interrupt(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt  # SIGTERM takes the same clean-up path as Ctrl-C


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    signal.signal(signal.SIGTERM, _interrupt)
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
