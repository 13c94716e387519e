"""tools/live without a control plane: what `make cluster` would create, and its one-line errors."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest
import yaml

from tools.live import cluster
from tools.live.plane import ControlPlane, PlaneError, Ports

REPO = Path(__file__).resolve().parents[2]


def local_config():
    return cluster.LocalStack(REPO, "local").config()


def test_the_local_stack_is_the_dev_topology_on_live_clusters() -> None:
    dev = yaml.safe_load((REPO / "Pulumi.dev.yaml").read_text())["config"]
    local = yaml.safe_load((REPO / "Pulumi.local.yaml").read_text())["config"]
    assert local["flowerbed:sites"] == dev["flowerbed:sites"]
    assert set(local["flowerbed:clusters"]) == set(dev["flowerbed:clusters"])
    assert all("renderDir" not in (entry or {}) for entry in local["flowerbed:clusters"].values())
    assert local["flowerbed:server"]["serviceType"] == "NodePort"


def test_gpu_sites_get_a_gpu_node_with_their_labels_and_taints_others_do_not() -> None:
    config = local_config()
    hospitals = {node["metadata"]["name"]: node for node in cluster.nodes_for(config, "hospitals")}
    assert set(hospitals) == {"kwok-hospitals-0", "kwok-hospitals-gpu-0"}
    gpu = hospitals["kwok-hospitals-gpu-0"]
    assert gpu["status"]["allocatable"]["nvidia.com/gpu"] == "8"
    assert gpu["metadata"]["labels"]["nvidia.com/gpu.present"] == "true"
    assert gpu["spec"]["taints"] == [{"key": "nvidia.com/gpu", "effect": "NoSchedule"}]
    assert hospitals["kwok-hospitals-0"]["spec"]["taints"] == []
    assert "nvidia.com/gpu" not in hospitals["kwok-hospitals-0"]["status"]["allocatable"]
    assert [n["metadata"]["name"] for n in cluster.nodes_for(config, "hub")] == ["kwok-hub-0"]
    assert all(n["metadata"]["annotations"]["kwok.x-k8s.io/node"] == "fake"
               for n in cluster.nodes_for(config, "hospitals"))


def test_every_claim_the_program_makes_gets_two_volumes_of_its_class_and_size(tmp_path: Path) -> None:
    config = local_config()
    # The server's state and artifacts, and each site's study data and its ClientApp pods' state volume.
    assert sorted(cluster.claims_for(config, "hub")) == [("local", "10Gi"), ("local", "1Gi"), ("local", "5Gi")]
    assert cluster.claims_for(config, "hospitals") == [("local", "20Gi"), ("local", "1Gi"), ("local", "20Gi"),
                                                       ("local", "1Gi")]
    objects = cluster.storage_for(config, "hub", ControlPlane("hub", tmp_path))
    classes = [o for o in objects if o["kind"] == "StorageClass"]
    assert [(c["metadata"]["name"], c["volumeBindingMode"]) for c in classes] == [("local", "Immediate")]
    assert classes[0]["metadata"]["annotations"]["storageclass.kubernetes.io/is-default-class"] == "true"
    volumes = sorted(o["spec"]["capacity"]["storage"] for o in objects if o["kind"] == "PersistentVolume")
    assert volumes == ["10Gi", "10Gi", "1Gi", "1Gi", "5Gi", "5Gi"]


def test_a_named_storage_class_is_created_beside_the_default(tmp_path: Path) -> None:
    stack = cluster.LocalStack(REPO, "local")
    raw = stack.raw_config()
    raw["server"]["stateStorage"] = {"size": "1Gi", "storageClass": "fast"}
    raw["clusters"] = {name: {"kubeconfig": "x"} for name in raw["clusters"]}
    from components.config import parse

    objects = cluster.storage_for(parse(raw), "hub", ControlPlane("hub", tmp_path))
    assert sorted(o["metadata"]["name"] for o in objects if o["kind"] == "StorageClass") == ["fast", "local"]
    assert ("fast", "1Gi") in {(o["spec"]["storageClassName"], o["spec"]["capacity"]["storage"])
                               for o in objects if o["kind"] == "PersistentVolume"}


def test_a_consortiums_hub_and_site_stacks_get_their_own_nodes_and_volumes(tmp_path: Path) -> None:
    """One plane per party: the hub's holds the server's claims, a site stack's (no server) its site's."""
    example = REPO / "examples" / "consortium"
    configs = {}
    for party in ("hub", "hospital-a"):
        document = yaml.safe_load((example / f"Pulumi.{party}.yaml").read_text())
        document["config"]["flowerbed:clusters"] = {name: {} for name in document["config"]["flowerbed:clusters"]}
        (tmp_path / f"Pulumi.{party}.yaml").write_text(yaml.safe_dump(document))
        configs[party] = cluster.LocalStack(tmp_path, party).config()
    assert configs["hospital-a"].server is None
    assert sorted(cluster.claims_for(configs["hub"], "coordinator")) == [("local", "10Gi"), ("local", "5Gi")]
    assert cluster.claims_for(configs["hospital-a"], "hospital-a") == [("local", "20Gi"), ("local", "1Gi")]
    assert [n["metadata"]["name"] for n in cluster.nodes_for(configs["hub"], "coordinator")] == ["kwok-coordinator-0"]
    assert [n["metadata"]["name"] for n in cluster.nodes_for(configs["hospital-a"], "hospital-a")] == [
        "kwok-hospital-a-0", "kwok-hospital-a-gpu-0"]


def test_a_render_mode_stack_is_refused_naming_the_cluster(capsys: pytest.CaptureFixture[str]) -> None:
    assert cluster.main(["up", "dev"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["make cluster: stack dev: cluster hospitals is in render mode (renderDir); make cluster starts "
                   "live control planes for clusters without renderDir (see Pulumi.local.yaml)"]


def test_without_go_and_without_built_binaries_it_says_so(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(cluster.shutil, "which", lambda name: None)
    monkeypatch.setattr(cluster.build, "missing", lambda: ["kubernetes-1.34.4"])
    with pytest.raises(cluster.ClusterError, match="install Go"):
        cluster.up(cluster.LocalStack(REPO, "local"))


def test_a_taken_port_is_named(tmp_path: Path) -> None:
    plane = ControlPlane("hub", tmp_path)
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        port = holder.getsockname()[1]
        with pytest.raises(PlaneError, match=f"cluster hub: port {port} on 127.0.0.1 is taken"):
            plane._spawn("etcd", ["true"], (port,))


def test_a_process_that_dies_is_reported_with_its_last_log_lines(tmp_path: Path) -> None:
    plane = ControlPlane("hub", tmp_path)
    plane._spawn("etcd", ["sh", "-c", "echo listening failed: bad flag; exit 3"], ())
    with pytest.raises(PlaneError) as raised:
        plane._await("etcd", lambda: False, timeout=10)
    assert "cluster hub: etcd exited" in str(raised.value)
    assert "listening failed: bad flag" in str(raised.value)
    assert not (tmp_path / "etcd.pid").exists()


def test_free_ports_are_distinct() -> None:
    ports = Ports.free()
    numbers = [value for value in vars(ports).values() if isinstance(value, int)]
    assert len(set(numbers)) == len(numbers) == 6


def test_a_missing_or_broken_stack_file_is_one_line_naming_it(tmp_path: Path,
                                                             capsys: pytest.CaptureFixture[str]) -> None:
    assert cluster.main(["up", "no-such-stack"]) == 1  # `pulumi stack rm` deletes the file
    assert capsys.readouterr().err.strip().splitlines() == [
        f"make cluster: Pulumi.no-such-stack.yaml: no such stack file in {REPO} (`pulumi stack init` and `pulumi "
        "config set` make one; `pulumi stack rm` deletes it)"]
    (tmp_path / "Pulumi.broken.yaml").write_text("config:\n  flowerbed:sites: [unclosed\n")
    with pytest.raises(cluster.ClusterError, match=r"^Pulumi\.broken\.yaml: cannot be read as YAML \(while parsing"):
        cluster.LocalStack(tmp_path, "broken").config()
