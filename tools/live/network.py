"""The private network real nodes live on: a host bridge, one network namespace per node.

One stack's real clusters share a bridge `fbr<N>` with the address block 10.250.<N>.0/24 (N: the
first block no other stack uses). On it: the host (.1, where the image registry listens), each
cluster's API server (.2 + i) and each cluster's node (.10 + i), a network namespace of its own
joined by a veth pair. Nothing routes off the machine: the namespaces have no default route,
the host does not forward (its `net.ipv4.ip_forward` stays as it is), and the Service range
inside each node goes to a sink, so an address no rule rewrote dies there.

Each node is thus its own network, as two organisations' clusters are: a pod in one reaches the
other only through that node's address (a NodePort), with its source masqueraded.
"""

from __future__ import annotations

import ipaddress
import json
import subprocess
from dataclasses import asdict, dataclass
from pathlib import Path

BLOCK = ipaddress.ip_network("10.250.0.0/16")
SERVICE_RANGE = "10.96.0.0/16"  # the planes' --service-cluster-ip-range
CLUSTER_DNS = "10.96.0.10"
API_SERVER_PORT = 6443  # one of components.kube.API_SERVER_PORTS, which the executors' egress admits
REGISTRY_PORT = 5000


class NetworkError(RuntimeError):
    """The network could not be set up; one line."""


def ip(*args: str, netns: str | None = None, check: bool = True) -> subprocess.CompletedProcess:
    prefix = ["ip", "netns", "exec", netns] if netns else []
    result = subprocess.run([*prefix, "ip", *args], capture_output=True, text=True)
    if check and result.returncode != 0:
        raise NetworkError(f"ip {' '.join(args)}{f' (in {netns})' if netns else ''}: {result.stderr.strip()}")
    return result


def in_netns(netns: str, *argv: str, check: bool = True) -> subprocess.CompletedProcess:
    result = subprocess.run(["ip", "netns", "exec", netns, *argv], capture_output=True, text=True)
    if check and result.returncode != 0:
        raise NetworkError(f"{' '.join(argv)} (in {netns}): {result.stderr.strip()}")
    return result


@dataclass(frozen=True)
class ClusterAddresses:
    """Where one cluster of the stack lives on the bridge."""

    cluster: str
    index: int
    api_server: str
    node: str
    netns: str
    host_link: str  # the veth end on the host
    pod_cidr: str


@dataclass(frozen=True)
class Network:
    """One stack's bridge and the addresses of its clusters (saved as `network.json`)."""

    slot: int
    clusters: tuple[ClusterAddresses, ...]

    @property
    def bridge(self) -> str:
        return f"fbr{self.slot}"

    @property
    def host(self) -> str:
        return str(BLOCK.network_address + self.slot * 256 + 1)

    @property
    def prefix(self) -> str:
        return f"{ipaddress.ip_address(self.host)}/24"

    @property
    def registry(self) -> str:
        return f"{self.host}:{REGISTRY_PORT}"

    def cluster(self, name: str) -> ClusterAddresses:
        return next(c for c in self.clusters if c.cluster == name)

    @classmethod
    def plan(cls, clusters: list[str], taken: set[int]) -> Network:
        slot = next((s for s in range(256) if s not in taken and not _link_exists(f"fbr{s}")), None)
        if slot is None:
            raise NetworkError("no free address block in 10.250.0.0/16 for another stack's nodes")
        base = BLOCK.network_address + slot * 256
        return cls(slot, tuple(ClusterAddresses(
            cluster=name, index=i, api_server=str(base + 2 + i), node=str(base + 10 + i),
            netns=f"fbr{slot}-{name}"[:40], host_link=f"fbr{slot}v{i}", pod_cidr=f"10.{244 + i}.{slot}.0/24")
            for i, name in enumerate(clusters)))

    def save(self, path: Path) -> None:
        path.write_text(json.dumps(asdict(self), indent=1))

    @classmethod
    def load(cls, path: Path) -> Network:
        raw = json.loads(path.read_text())
        return cls(raw["slot"], tuple(ClusterAddresses(**c) for c in raw["clusters"]))

    # --- up ----------------------------------------------------------------------------------------

    def create_bridge(self) -> None:
        """The bridge with the host's and every API server's address (idempotent)."""
        if not _link_exists(self.bridge):
            ip("link", "add", self.bridge, "type", "bridge")
        addresses = ip("-o", "addr", "show", "dev", self.bridge).stdout
        for address in (self.host, *(c.api_server for c in self.clusters)):
            if f" {address}/24 " not in addresses:
                ip("addr", "add", f"{address}/24", "dev", self.bridge)
        ip("link", "set", self.bridge, "up")

    def create_node_netns(self, cluster: ClusterAddresses) -> None:
        """The node's namespace: eth0 on the bridge, forwarding for its pods, the Service-range sink."""
        if cluster.netns in ip("netns", "list").stdout.split():
            return
        ip("netns", "add", cluster.netns)
        ip("link", "add", cluster.host_link, "type", "veth", "peer", "name", "eth0", "netns", cluster.netns)
        ip("link", "set", cluster.host_link, "master", self.bridge, "up")
        ns = cluster.netns
        ip("link", "set", "lo", "up", netns=ns)
        ip("addr", "add", f"{cluster.node}/24", "dev", "eth0", netns=ns)
        ip("link", "set", "eth0", "up", netns=ns)
        # No `dummy` module on this kernel: a veth whose peer stays down swallows the Service range
        # (as kube-ipvs0 would), so nothing kube-proxy did not rewrite looks for a route elsewhere.
        ip("link", "add", "svcsink0", "type", "veth", "peer", "name", "svcsink1", netns=ns)
        ip("link", "set", "svcsink0", "up", netns=ns)
        ip("route", "add", SERVICE_RANGE, "dev", "svcsink0", netns=ns)
        in_netns(ns, "sysctl", "-qw", "net.ipv4.ip_forward=1", "net.bridge.bridge-nf-call-iptables=1",
                 "net.bridge.bridge-nf-call-ip6tables=1")

    # --- down --------------------------------------------------------------------------------------

    def remove(self) -> list[str]:
        """Deletes the namespaces and the bridge; returns what it removed."""
        removed = []
        for cluster in self.clusters:
            if cluster.netns in ip("netns", "list").stdout.split():
                ip("netns", "delete", cluster.netns)
                removed.append(f"netns {cluster.netns}")
            if _link_exists(cluster.host_link):
                ip("link", "delete", cluster.host_link)
        if _link_exists(self.bridge):
            ip("link", "delete", self.bridge)
            removed.append(f"bridge {self.bridge}")
        return removed


def _link_exists(name: str) -> bool:
    return subprocess.run(["ip", "link", "show", name], capture_output=True).returncode == 0
