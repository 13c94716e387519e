"""Removing a site locks it out: the registration Job's script (components/supernode_registry.py)
keeps SuperLink's registered keys equal to the stack's sites. Real SuperLink, SuperNodes and
SuperExecs on loopback with TLS and SuperNode authentication; the script runs as the Job runs it.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import pytest

from federate.federation import LocalFederation
from federate.flwr_cli import flower_env
from federate.job import MetricsFollower, follow, submit
from tests.federate.conftest import REPO, FederationFactory, wait_for_exit

pytestmark = pytest.mark.e2e

REGISTRY = REPO / "components" / "supernode_registry.py"
SITES = ["hospital-a", "hospital-b", "lab-c"]
REMOVED = "lab-c"
RETRIES = 2  # the removed SuperNode gives up after this many refused attempts instead of retrying forever
GIVE_UP_S = 90.0


def registration_job(federation: LocalFederation, sites: Sequence[str]) -> list[str]:
    """The Job's command with the stack's `sites`: their public keys in one directory, as the Job mounts them."""
    keys = federation.workdir / "job-keys"
    shutil.rmtree(keys, ignore_errors=True)
    keys.mkdir(parents=True)
    for site in sites:
        shutil.copy(federation.credentials.node_keys[site].public_key, keys / f"{site}.pub")
    home = federation.workdir / "job-home"
    home.mkdir(exist_ok=True)
    done = subprocess.run(
        [sys.executable, str(REGISTRY), "--superlink", federation.superlink_address,
         "--root-certificates", str(federation.credentials.ca_cert), "--keys", str(keys)],
        env=flower_env(home), capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 0, done.stdout + done.stderr
    # flwr's client announces the connection it uses; the rest is the script's own report.
    return [line for line in done.stdout.splitlines() if not line.startswith("Using SuperLink:")]


def test_a_removed_sites_key_is_refused_and_the_other_sites_keep_training(
        start_federation: FederationFactory, tmp_path: Path) -> None:
    federation = start_federation(SITES)
    federation.start_server()
    assert registration_job(federation, SITES) == [f"{site}: registered" for site in SITES]
    assert registration_job(federation, SITES) == [f"{site}: already registered" for site in SITES]  # rerun

    staying = [site for site in federation.sites if site.name != REMOVED]
    for site in staying:
        federation.start_site(site, tmp_path / site.name)
    removed_key = federation.credentials.node_keys[REMOVED]
    [removed_site] = [site for site in federation.sites if site.name == REMOVED]
    removed = federation.start_supernode(removed_site, removed_key, tmp_path, max_retries=RETRIES)
    federation.wait_for_nodes_online(len(SITES))

    started = time.monotonic()
    lines = registration_job(federation, [site.name for site in staying])  # the stack without lab-c
    assert lines[0].startswith(f"{REMOVED}: unregistered node ")
    assert lines[1:] == [f"{site.name}: already registered" for site in staying]
    # The connected SuperNode is sent away (flwr 1.42 then stops it with exit code 0) ...
    assert wait_for_exit(removed, GIVE_UP_S) is not None, removed.tail()
    print(f"removed SuperNode stopped {time.monotonic() - started:.0f} s after the registration ran")
    # ... and its key never gets in again.
    again = federation.start_supernode(removed_site, removed_key, tmp_path, max_retries=RETRIES)
    assert wait_for_exit(again, GIVE_UP_S) not in (None, 0), again.tail()
    assert federation.online_nodes() == len(staying)
    for expected_exit in (removed, again):  # so that the run below does not count them as crashed
        federation.supervisor.processes.remove(expected_exit)

    overrides = {"artifacts-root": str(tmp_path / "artifacts"), "num-server-rounds": 1,
                 "min-available-sites": len(staying), "min-train-sites": len(staying),
                 "fraction-evaluate": 0.0, "round-timeout": 120.0}
    run_id = submit(federation.cli, REPO / "training", overrides, tmp_path)
    rounds: list[dict] = []
    metrics = MetricsFollower(tmp_path / "artifacts" / run_id / "metrics.jsonl")
    follow(federation.cli, run_id, federation.supervisor, lambda: rounds.extend(metrics.new_rounds()), timeout=600)
    [round_one] = rounds
    assert round_one["aggregated"] and round_one["sites"] == [site.name for site in staying]
