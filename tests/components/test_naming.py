"""components/naming.py: the names, ports and texts other parts rely on."""

from __future__ import annotations

import tomllib

from components import naming
from tests.flower import parse_config_args


def test_node_config_is_what_flower_parses_into_the_contract_keys() -> None:
    parsed = parse_config_args([naming.node_config("hospital-a", "demo")])
    assert parsed == {"site-name": "hospital-a", "data-root": "/data", "state-dir": "/state", "federation": "demo"}


def test_server_certificate_names_cover_endpoint_services_and_port_forward() -> None:
    names = naming.server_certificate_names("fl.demo.example.org", "demo-server")
    assert names[0] == "fl.demo.example.org"
    for service in ("superlink-fleet", "superlink-runtime", "superlink-control"):
        assert f"{service}.demo-server.svc" in names
        assert f"{service}.demo-server.svc.cluster.local" in names
    assert "localhost" in names
    assert len(names) == len(set(names))


def test_supernode_runtime_names_are_the_sites_service() -> None:
    assert naming.supernode_runtime_names("demo-lab-c") == [
        "supernode-runtime.demo-lab-c.svc", "supernode-runtime.demo-lab-c.svc.cluster.local"]


def test_listener_ports_are_distinct_and_unprivileged() -> None:
    ports = [naming.SUPERLINK_PORT, naming.FLEET_PORT, naming.RUNTIME_PORT, naming.CONTROL_PORT,
             naming.SUPERNODE_RUNTIME_PORT, naming.SUPEREXEC_HEALTH_PORT]
    assert len(set(ports)) == len(ports)
    assert min(ports) > 1024


def test_flwr_connection_is_a_toml_superlink_entry() -> None:
    parsed = tomllib.loads(naming.flwr_connection("demo", "/home/admin/demo-ca.crt"))
    assert parsed == {"superlink": {"demo": {"address": "localhost:9093",
                                             "root-certificates": "/home/admin/demo-ca.crt"}}}


def test_port_forward_targets_the_control_service() -> None:
    assert naming.port_forward_command("demo-server") == (
        "kubectl -n demo-server port-forward svc/superlink-control 9093:9093")
    assert naming.port_forward_command("demo-server", "prod").startswith("kubectl --context prod -n demo-server")


def test_study_paths_follow_the_data_contract() -> None:
    assert naming.study_mount_path("default", "tabular") == "/data/default/tabular"
    assert naming.study_claim_name("default", "tabular") == "study-default-tabular"
