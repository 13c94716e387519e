"""A consortium on three live control planes: the coordinator's hub stack and two hospitals' site stacks,
each in its own project copy and backend, each `pulumi up` with only its own cluster's kubeconfig
(tools/live, kwok nodes). Only the join bundle and the join requests cross, as files.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest
import yaml

from components import exchange
from tests.live.conftest import Kubectl, condition, require_toolchain_and_binaries
from tools.engine import stack as stack_commands
from tools.engine.consortium import (HOSPITALS, HUB, Consortium, Party, audit, kubeconfig_servers,
                                     resource_strings, run)
from tools.live import cluster
from tools.live.plane import ControlPlane

pytestmark = pytest.mark.live

SERVER_NS = "consortium-server"


@dataclass
class LiveParty:
    """One organisation: its stack and the control plane of its one cluster."""

    party: Party
    local: cluster.LocalStack
    plane: ControlPlane

    @property
    def kubectl(self) -> Kubectl:
        return Kubectl(self.plane.kubeconfig)

    @property
    def api_server(self) -> str:
        return f"https://127.0.0.1:{self.plane.ports().api_server}"


@dataclass
class LiveConsortium:
    example: Consortium
    parties: dict[str, LiveParty]


@pytest.fixture(scope="module")
def consortium(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveConsortium]:
    require_toolchain_and_binaries()
    parties: dict[str, LiveParty] = {}

    def on_its_own_plane(member: Party) -> None:
        """The example's stack on a local control plane (`make cluster` sets its kubeconfig) instead of
        render mode, with no load balancer to wait for."""
        stack_file = member.root / f"Pulumi.{member.name}.yaml"
        document = yaml.safe_load(stack_file.read_text())
        config = document["config"]
        config["flowerbed:clusters"] = {name: {} for name in config["flowerbed:clusters"]}
        if "flowerbed:server" in config:
            config["flowerbed:server"]["serviceType"] = "NodePort"
        stack_file.write_text(yaml.safe_dump(document, sort_keys=False))
        local = cluster.LocalStack(member.root, member.name)
        [plane] = cluster.up(local).values()
        parties[member.name] = LiveParty(member, local, plane)

    try:
        yield LiveConsortium(run(tmp_path_factory.mktemp("consortium-live"), on_its_own_plane), parties)
    finally:
        for live in parties.values():
            cluster.down(live.local)


def test_each_stack_holds_its_own_kubeconfig_and_no_other_party_is_secret(consortium: LiveConsortium) -> None:
    parties = consortium.parties
    for name, live in parties.items():
        state = consortium.example.states[name]
        assert kubeconfig_servers(state) == [live.api_server], name
        text = "\n".join(s for r in state.get("resources") or [] for s in resource_strings(r))
        assert not [other.api_server for other_name, other in parties.items()
                    if other_name != name and other.api_server in text], name
    # No private key in two states, none of a hospital's at the hub, no federation CA key at a hospital.
    assert audit(consortium.example.states) == []


def test_every_workload_runs_on_its_own_partys_plane(consortium: LiveConsortium) -> None:
    def available(live: LiveParty) -> dict[tuple[str, str], str | None]:
        return {(d["metadata"]["namespace"], d["metadata"]["name"]): condition(d, "Available")
                for d in live.kubectl.items("deployments") if d["metadata"]["namespace"] != "kube-system"}

    parties = consortium.parties
    assert available(parties[HUB]) == {(SERVER_NS, "superlink"): "True", (SERVER_NS, "serverapp-executor"): "True"}
    for name in HOSPITALS:
        assert available(parties[name]) == {
            (f"consortium-{name}-supernode", "supernode"): "True", (f"consortium-{name}", "clientapp-executor"): "True"}


def test_the_registration_job_registers_exactly_the_admitted_keys(consortium: LiveConsortium) -> None:
    hub = consortium.parties[HUB].kubectl
    [job] = hub.items("jobs", SERVER_NS)
    assert condition(job, "Complete") == "True"  # `up` waited for it
    pod = job["spec"]["template"]["spec"]
    [keys] = [v for v in pod["volumes"] if v["name"] == "keys"]
    assert [s["configMap"]["name"] for s in keys["projected"]["sources"]] == ["supernode-public-keys"]
    registered = hub.json("get", "configmap", "supernode-public-keys", "-n", SERVER_NS)["data"]
    requests = {}
    for name in HOSPITALS:
        outputs = json.loads(consortium.example.party(name).pulumi.run(["stack", "output", "--json"],
                                                                        capture=True).stdout)
        admitted = exchange.admitted_site(yaml.safe_load(outputs["joinRequests"][name]), name, "consortium")
        requests[f"{admitted.name}.pub"] = admitted.public_key
    assert registered == requests


def test_a_site_stacks_destroy_keeps_its_data_and_removes_its_supernode(consortium: LiveConsortium) -> None:
    """Last: it takes hospital-b's stack down."""
    hospital = consortium.parties["hospital-b"]

    def claims() -> dict[str, str]:
        return {c["metadata"]["name"]: c["metadata"]["uid"] for c in hospital.kubectl.items("pvc", "consortium-hospital-b")}

    before = claims()
    assert set(before) == {"study-default-tabular", "clientapp-state"}
    stack_commands.destroy(hospital.party.pulumi, hospital.party.out)
    assert claims() == before
    phase = hospital.kubectl.run("get", "namespace", "consortium-hospital-b-supernode", "-o",
                                 "jsonpath={.status.phase}", check=False)
    assert phase.returncode != 0 or phase.stdout == "Terminating"
    # The hub's and the other hospital's workloads are untouched.
    assert {d["metadata"]["name"] for d in consortium.parties["hospital-a"].kubectl.items("deployments")
            if d["metadata"]["namespace"] != "kube-system"} == {"supernode", "clientapp-executor"}
