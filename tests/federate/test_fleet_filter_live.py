"""The server's real nginx filter config in front of a real SuperLink: Fleet passes, Control does not.

The Control API has no authentication (whoever reaches it runs code on every
site), so the public listener must not forward it. This runs the exact
nginx.conf the server pod gets (components/fleet_filter.py) under Debian's nginx.
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from components.fleet_filter import nginx_conf
from federate.federation import LocalFederation
from federate.flwr_cli import FlwrCli, FlwrCommandFailed
from federate.ports import free_port, wait_until_listening
from federate.processes import Supervisor
from tests.federate.conftest import FederationFactory

NGINX = shutil.which("nginx") or shutil.which("/usr/sbin/nginx")
pytestmark = [
    pytest.mark.e2e,
    pytest.mark.skipif(NGINX is None, reason="nginx not installed (.ci/run installs it)"),
]


@dataclass(frozen=True)
class FilteredServer:
    federation: LocalFederation
    listeners: dict[str, int]  # fleet / runtime / control -> nginx port

    def cli_via(self, listener: str, home: Path) -> FlwrCli:
        """An operator `flwr` that reaches the SuperLink through one of nginx's listeners."""
        return FlwrCli.configure(
            home, listener, f"127.0.0.1:{self.listeners[listener]}", self.federation.credentials.ca_cert
        )


@pytest.fixture
def filtered_server(start_federation: FederationFactory, tmp_path: Path) -> Iterator[FilteredServer]:
    federation = start_federation(["hospital"])
    federation.start_superlink()
    credentials = federation.credentials
    listeners = {"fleet": free_port(), "runtime": free_port(), "control": free_port()}
    runtime_dir = tmp_path / "nginx"
    runtime_dir.mkdir()
    conf = runtime_dir / "nginx.conf"
    conf.write_text(nginx_conf(
        superlink_port=federation.ports.superlink,
        fleet_port=listeners["fleet"],
        runtime_port=listeners["runtime"],
        control_port=listeners["control"],
        cert_file=str(credentials.server_cert),
        key_file=str(credentials.server_key),
        ca_file=str(credentials.ca_cert),
        superlink_server_name="localhost",
        runtime_dir=str(runtime_dir),
    ))
    with Supervisor(tmp_path / "nginx-logs") as nginx:
        nginx.start("nginx", [str(NGINX), "-e", "stderr", "-p", str(runtime_dir), "-c", str(conf)])
        for port in listeners.values():
            wait_until_listening(port, 30, nginx.check)
        yield FilteredServer(federation, listeners)


def test_control_api_is_not_reachable_through_the_fleet_listener(filtered_server: FilteredServer, tmp_path: Path) -> None:
    through_control = filtered_server.cli_via("control", tmp_path / "admin")
    through_fleet = filtered_server.cli_via("fleet", tmp_path / "public")
    key = filtered_server.federation.credentials.node_keys["hospital"].public_key

    assert through_control.json("ls")["success"]  # the filter and SuperLink work; only the path matters
    with pytest.raises(FlwrCommandFailed):
        through_fleet.json("ls")
    with pytest.raises(FlwrCommandFailed):
        through_fleet.json("supernode", "register", str(key))
    assert through_control.json("supernode", "list")["nodes"] == []  # nothing slipped through


def test_a_supernode_joins_through_the_fleet_listener(filtered_server: FilteredServer, tmp_path: Path) -> None:
    federation = filtered_server.federation
    site = federation.sites[0]
    federation.register(site)
    federation.start_supernode(
        site, federation.credentials.node_keys[site.name], tmp_path,
        superlink_address=f"127.0.0.1:{filtered_server.listeners['fleet']}",
    )
    federation.wait_for_nodes_online(1)
