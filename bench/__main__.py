"""`python -m bench [NAME ...] [--rounds N --sites N --dataset D --seeds N --set KEY=VALUE ...]`."""

from __future__ import annotations

import os

# One BLAS thread, set before numpy loads: its default pool spins against torch and the
# sites on a small shared machine (measured: a 38k-entry dot product 5x slower).
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import argparse  # noqa: E402
import dataclasses  # noqa: E402
import time  # noqa: E402

import torch  # noqa: E402

from . import centralized, communication, learning, strategies, stragglers  # noqa: E402
from .options import Options, check, run_config_value  # noqa: E402
from .runs import quiet_flower, warm_up  # noqa: E402

BENCHMARKS = {"centralized": centralized.run, "strategies": strategies.run, "communication": communication.run,
              "learning": learning.run, "stragglers": stragglers.run}
# Each benchmark's own defaults; command-line options replace them.
DEFAULTS = {"learning": learning.DEFAULTS, "stragglers": stragglers.DEFAULTS}
QUICK = ("centralized", "strategies", "communication")  # run when no NAME is given


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    parser.add_argument("names", nargs="*", metavar="NAME",
                        help=f"benchmarks to run: {', '.join(BENCHMARKS)} (default: {', '.join(QUICK)})")
    parser.add_argument("--dataset", help="builtin:breast-cancer or builtin:digits (learning: comma-separated)")
    parser.add_argument("--sites", type=int)
    parser.add_argument("--rounds", type=int)
    parser.add_argument("--target-accuracy", type=float, help="centralized, strategies")
    parser.add_argument("--seeds", type=int, help="learning: seeds 0..N-1")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", dest="overrides",
                        help="run-config value for every run (repeatable), e.g. --set lr=0.05")
    args = parser.parse_args()
    unknown = sorted(set(args.names) - set(BENCHMARKS))
    if unknown:
        parser.error(f"unknown benchmark(s) {', '.join(unknown)}; choose from {', '.join(BENCHMARKS)}")
    try:
        overrides = tuple(run_config_value(a) for a in args.overrides)
    except ValueError as err:
        parser.error(str(err))
    given = {k: v for k, v in vars(args).items() if k not in ("names", "overrides") and v is not None}
    chosen = {name: dataclasses.replace(DEFAULTS.get(name, Options()), **given, overrides=overrides)
              for name in args.names or QUICK}
    try:
        for options in chosen.values():
            check(options)
    except ValueError as err:  # before any run: a bad option would otherwise fail minutes in
        parser.error(str(err))

    # One torch thread: the sites run one after another, and on a small shared
    # machine torch's default thread pool is much slower than one thread.
    torch.set_num_threads(1)
    quiet_flower()
    warm_up()
    started = time.perf_counter()
    for name, options in chosen.items():
        BENCHMARKS[name](options)
    print(f"\nbench: {time.perf_counter() - started:.0f} s")


if __name__ == "__main__":
    main()
