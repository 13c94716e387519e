"""Shared helpers for the local-federation tests: real Flower processes on loopback."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import pytest

from federate.federation import LocalFederation, Ports
from federate.ports import ensure_free, free_port
from federate.processes import ManagedProcess, Supervisor
from federate.sites import sites_from_names

FederationFactory = Callable[[Sequence[str]], LocalFederation]
REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
def start_federation(tmp_path: Path) -> Iterator[FederationFactory]:
    """Build a LocalFederation for the given site names; every process is stopped afterwards."""
    with Supervisor(tmp_path / "logs") as supervisor:

        def build(names: Sequence[str]) -> LocalFederation:
            sites = sites_from_names(names)
            ports = Ports(free_port(), {site.name: free_port() for site in sites})
            return LocalFederation(sites, ports, tmp_path / "work", supervisor)

        yield build


def processes_mentioning(text: str) -> list[str]:
    """Live processes whose command line or environment contains `text` (pid and command)."""
    found = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit() or int(proc.name) == os.getpid():
            continue
        try:
            cmdline = (proc / "cmdline").read_bytes()
            environ = (proc / "environ").read_bytes()
            if (proc / "stat").read_text().split(") ")[-1].startswith("Z"):
                continue  # a zombie already exited; it only waits for its parent to reap it
        except OSError:  # exited while we looked, or not ours to read
            continue
        if text.encode() in cmdline or text.encode() in environ:
            command = cmdline.replace(b"\0", b" ").decode(errors="replace")
            found.append(f"{proc.name}: {command}")
    return found


def wait_for_exit(process: ManagedProcess, timeout: float) -> int | None:
    """The exit code once `process` has exited, or None if it is still running after `timeout`."""
    deadline = time.monotonic() + timeout
    while process.running() and time.monotonic() < deadline:
        time.sleep(0.5)
    return process.popen.poll()


def free_port_run(length: int) -> int:
    """A base port B with B..B+length-1 all free on loopback."""
    while True:
        base = free_port()
        try:
            for port in range(base, base + length):
                ensure_free(port, "probe", "--probe")
        except RuntimeError:
            continue
        return base


def federate_command(out_dir: Path, superlink_port: int, supernode_base: int, *extra: str) -> list[str]:
    return [
        sys.executable, "-m", "federate", "--out-dir", str(out_dir),
        "--superlink-port", str(superlink_port), "--supernode-port-base", str(supernode_base), *extra,
    ]


def run_federate_command(tmp_path: Path, out_dir: Path, superlink_port: int, supernode_base: int,
                         *extra: str) -> subprocess.CompletedProcess[str]:
    """`python -m federate` to the end (15 min at most), temp files under tmp_path; prints its output and time."""
    started = time.monotonic()
    done = subprocess.run(federate_command(out_dir, superlink_port, supernode_base, *extra), cwd=REPO,
                          env=isolated_env(tmp_path), capture_output=True, text=True, timeout=900, check=False)
    print(done.stdout, done.stderr, f"{time.monotonic() - started:.0f} s", sep="\n")
    return done


def isolated_env(tmp_path: Path) -> dict[str, str]:
    """Temp files of this run (keys, FLWR_HOMEs, database) under tmp_path, to find leftovers by path."""
    (tmp_path / "tmp").mkdir()
    return {**os.environ, "TMPDIR": str(tmp_path / "tmp")}


def assert_nothing_left(tmp_path: Path, ports: list[int]) -> None:
    assert processes_mentioning(str(tmp_path)) == []
    for port in ports:
        ensure_free(port, "leftover check", "--none")  # raises if anything still listens
