"""`python -m bench [NAME ...] [--rounds N --sites N --dataset D --target-accuracy A]`."""

from __future__ import annotations

import argparse
import time

import torch

from . import centralized, communication, strategies
from .options import Options
from .runs import quiet_flower, warm_up

BENCHMARKS = {"centralized": centralized.run, "strategies": strategies.run, "communication": communication.run}


def main() -> None:
    defaults = Options()
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    parser.add_argument("names", nargs="*", metavar="NAME",
                        help=f"benchmarks to run: {', '.join(BENCHMARKS)} (default: all)")
    parser.add_argument("--dataset", default=defaults.dataset, help="builtin:breast-cancer or builtin:digits")
    parser.add_argument("--sites", type=int, default=defaults.sites)
    parser.add_argument("--rounds", type=int, default=defaults.rounds)
    parser.add_argument("--target-accuracy", type=float, default=defaults.target_accuracy)
    args = parser.parse_args()
    unknown = sorted(set(args.names) - set(BENCHMARKS))
    if unknown:
        parser.error(f"unknown benchmark(s) {', '.join(unknown)}; choose from {', '.join(BENCHMARKS)}")
    options = Options(args.dataset, args.sites, args.rounds, args.target_accuracy)

    # One torch thread: the sites run one after another, and on a small shared
    # machine torch's default thread pool is much slower than one thread.
    torch.set_num_threads(1)
    quiet_flower()
    warm_up()
    started = time.perf_counter()
    for name in args.names or list(BENCHMARKS):
        BENCHMARKS[name](options)
    print(f"\nbench: {time.perf_counter() - started:.0f} s")


if __name__ == "__main__":
    main()
