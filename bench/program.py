"""`python -m bench.program`: the Pulumi program's cost at 10, 100 and 1,000 sites (`make bench-program`).

Two measurements of the same generated federations (the dev stack's clusters and site
shapes, repeated under new names):

- mocks: the program's components declared under `pulumi.runtime.set_mocks`
  (tests/components/component_harness.py: Kubernetes objects echo their inputs, the PKI
  dynamic providers really run), in this process after a warm-up run, so imports do not count;
- engine: a real `pulumi preview` of a throwaway project copy (tests/engine/engine_project.py)
  with the toolchain's CLI, language host and kubernetes provider, render mode, new stack; the
  sites are read from one file each (`sitesDir`), as the stack config of 1,000 inline sites
  exceeds the 128 KiB that Linux allows the one environment variable the SDK reads it from.

And a consortium's hub (examples/consortium/Pulumi.hub.yaml) admitting 10 and 1,000 member sites
by as many join files (generated keys), as a real-engine `pulumi preview` the same way.

Each row gives wall and CPU seconds (user + system, the engine's whole process tree: CLI,
language host, program, providers), ms per resource of each, and the growth against the
smallest size of the same measurement in the same run: (time / baseline time) and that divided
by the growth in resources (1.00 = linear), both of CPU time, which a busy machine disturbs
far less than wall time. Runs in the program environment (.venv-program).
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import platform
import resource
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests" / "components"))  # the harness's own imports are rootdir-relative

from component_harness import EXAMPLE, deploy_raw, stack_raw_config  # noqa: E402

from components import exchange, pki  # noqa: E402
from tests.engine.engine_project import StackCopy  # noqa: E402
from tools.engine.offline import Pulumi, copy_program  # noqa: E402

STACK = "dev"
HUB = "hub"


def with_sites(raw_sites: list[dict[str, Any]], count: int) -> list[dict[str, Any]]:
    """`count` sites cycling through the dev stack's site shapes (GPU, CPU-only, other cluster)."""
    sites = []
    for i in range(count):
        site = copy.deepcopy(raw_sites[i % len(raw_sites)])
        site["name"] = f"site-{i:04d}"
        sites.append(site)
    return sites


@dataclass(frozen=True)
class Measurement:
    sites: int
    resources: int
    seconds: float  # wall
    cpu: float  # user + system


def children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def mocks(sites: int) -> Measurement:
    raw = stack_raw_config(STACK)
    raw["sites"] = with_sites(raw["sites"], sites)
    started, cpu = time.perf_counter(), time.process_time()
    deployment = deploy_raw(raw)
    return Measurement(sites, len(deployment.resources), time.perf_counter() - started, time.process_time() - cpu)


def preview(pulumi: Pulumi, sites: int) -> Measurement:
    started, cpu = time.perf_counter(), children_cpu()
    result = pulumi.run(["preview", "--json"], capture=True, check=False)
    seconds, cpu = time.perf_counter() - started, children_cpu() - cpu
    if result.returncode != 0:
        raise SystemExit(f"bench.program: pulumi preview of {sites} sites failed:\n{result.stdout}{result.stderr}")
    summary = json.loads(result.stdout)["changeSummary"]
    return Measurement(sites, sum(summary.values()), seconds, cpu)


def engine(sites: int, scratch: Path) -> Measurement:
    stack = StackCopy.create(scratch / f"engine-{sites}", STACK)
    (stack.root / "sites").mkdir()
    for site in with_sites(stack.read_config()["config"]["flowerbed:sites"], sites):
        (stack.root / "sites" / f"{site['name']}.yaml").write_text(yaml.safe_dump(site))

    def from_files(config: dict[str, Any]) -> None:
        del config["flowerbed:sites"]
        config["flowerbed:sitesDir"] = "sites"

    stack.change_config(from_files)
    return preview(stack.pulumi, sites)


def hub(members: int, scratch: Path) -> Measurement:
    """A hub admitting `members` sites, one join file each (fresh P-384 keys)."""
    root = copy_program(scratch / f"hub-{members}", [EXAMPLE / f"Pulumi.{HUB}.yaml"])
    (root / "sites").mkdir()
    for i in range(members):
        key = pki.new_supernode_key().public_openssh
        (root / "sites" / f"site-{i:04d}.yaml").write_text(exchange.join_request("consortium", f"site-{i:04d}", key, {}))
    pulumi = Pulumi(root, HUB)
    pulumi.select_or_init()
    return preview(pulumi, members)


def measured(what: str, counts: list[int], measure: Callable[[int], Measurement]) -> list[Measurement]:
    rows = []
    for count in counts:
        rows.append(measure(count))
        print(f"  {what} {count}: {rows[-1].seconds:.1f} s, CPU {rows[-1].cpu:.1f} s", flush=True)
    return rows


def table(title: str, rows: list[Measurement]) -> list[str]:
    base = rows[0]
    lines = [f"{title} (baseline: {base.sites} sites, same run)",
             "| sites | resources | wall s | CPU s | wall ms/resource | CPU ms/resource | CPU x baseline "
             "| CPU growth vs linear |",
             "| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for row in rows:
        growth = row.cpu / base.cpu
        linear = growth / (row.resources / base.resources)
        lines.append(f"| {row.sites:,} | {row.resources:,} | {row.seconds:.1f} | {row.cpu:.1f} "
                     f"| {1000 * row.seconds / row.resources:.1f} | {1000 * row.cpu / row.resources:.1f} "
                     f"| {growth:.2f} | {linear:.2f} |")
    return lines


def sizes(text: str) -> list[int]:
    """argparse type: comma-separated site counts, each >= 1 (empty: none)."""
    parts = [part.strip() for part in text.split(",") if part.strip()]
    if not all(part.isdigit() and int(part) >= 1 for part in parts):
        raise argparse.ArgumentTypeError(f"{text!r}: expected site counts >= 1, comma-separated (N,N,...)")
    return sorted(int(part) for part in parts)


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.program", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--mock-sites", type=sizes, default=[10, 100, 1000], metavar="N,N,...",
                        help="site counts under mocks (default 10,100,1000)")
    parser.add_argument("--engine-sites", type=sizes, default=[10, 100], metavar="N,N,...",
                        help="site counts for the real-engine preview (default 10,100; empty: none)")
    parser.add_argument("--hub-members", type=sizes, default=[10, 1000], metavar="N,N,...",
                        help="member counts for the real-engine preview of a consortium's hub (default 10,1000; "
                             "empty: none)")
    args = parser.parse_args()

    print(f"bench.program: pulumi SDK {metadata.version('pulumi')}, Python {platform.python_version()}, "
          f"{platform.machine()}, {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f}", flush=True)
    mocks(3)  # warm-up: imports and first-use caches stay out of the baseline
    output: list[str] = []
    if args.mock_sites:
        output += table("program under mocks", measured("mocks, sites:", args.mock_sites, mocks))
    with tempfile.TemporaryDirectory(prefix="bench-program-") as scratch:
        if args.engine_sites:
            rows = measured("engine, sites:", args.engine_sites, lambda count: engine(count, Path(scratch)))
            output += ["", *table("real-engine `pulumi preview --json` (new stack, render mode)", rows)]
        if args.hub_members:
            rows = measured("hub, members:", args.hub_members, lambda count: hub(count, Path(scratch)))
            output += ["", *table("real-engine `pulumi preview --json` of a consortium's hub (new stack, render mode; "
                                  "sites = members admitted by join files)", rows)]
    print(f"\nload average at the end {os.getloadavg()[0]:.1f}\n" + "\n".join(output))


if __name__ == "__main__":
    main()
