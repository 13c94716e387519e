"""Only registered SuperNodes that trust the federation's CA can join (real SuperLink, TLS + node auth)."""

from __future__ import annotations

from pathlib import Path

import pytest

from federate.credentials import write_credentials
from federate.flwr_cli import FlwrCli, FlwrCommandFailed
from tests.federate.conftest import FederationFactory, wait_for_exit

pytestmark = pytest.mark.e2e

# A SuperNode gives up after this many failed connection attempts (instead of retrying forever).
RETRIES = 2
GIVE_UP_S = 60.0


def test_only_the_registered_node_with_the_right_ca_joins(start_federation: FederationFactory, tmp_path: Path) -> None:
    federation = start_federation(["member", "unregistered", "wrong-ca"])
    member, unregistered, wrong_ca = federation.sites
    federation.start_superlink()
    federation.register(member)
    federation.register(wrong_ca)  # registered, so only the CA can keep it out
    other_ca = write_credentials(tmp_path / "other-pki", []).ca_cert

    federation.start_supernode(member, federation.credentials.node_keys[member.name], tmp_path)
    intruder = federation.start_supernode(
        unregistered, federation.credentials.node_keys[unregistered.name], tmp_path, max_retries=RETRIES
    )
    mistrusting = federation.start_supernode(
        wrong_ca, federation.credentials.node_keys[wrong_ca.name], tmp_path,
        root_certificates=other_ca, max_retries=RETRIES,
    )

    federation.wait_for_nodes_online(1)  # the member joins: the setup itself works
    assert wait_for_exit(intruder, GIVE_UP_S) not in (None, 0), intruder.tail()
    assert wait_for_exit(mistrusting, GIVE_UP_S) not in (None, 0), mistrusting.tail()
    assert "CERTIFICATE_VERIFY_FAILED" in mistrusting.tail(40)
    assert "CERTIFICATE_VERIFY_FAILED" not in intruder.tail(40)  # it was refused for its key, not TLS
    nodes = federation.cli.json("supernode", "list")["nodes"]
    assert [node["status"] for node in nodes].count("online") == 1
    assert federation.online_nodes() == 1


def test_an_operator_cli_with_another_ca_cannot_connect(start_federation: FederationFactory, tmp_path: Path) -> None:
    federation = start_federation(["member"])
    federation.start_superlink()
    other_ca = write_credentials(tmp_path / "other-pki", []).ca_cert
    stranger = FlwrCli.configure(tmp_path / "stranger", "local", federation.superlink_address, other_ca)

    # Same address, same CLI, only the CA differs: the right one works, the other is refused.
    assert federation.cli.json("ls")["success"]
    with pytest.raises(FlwrCommandFailed, match="unavailable"):
        stranger.json("ls")
