"""make cluster / cluster-down: one local control plane per cluster that a stack names.

    tools/cluster up|down|status <stack>

A stack whose file says `localCluster:nodes: real` (a key of this tool's, which the Pulumi program
never reads) gets a real node per cluster instead of kwok's fake ones: each cluster its own
network namespace on a private bridge (tools/live/network.py), a node that runs containers
(tools/live/node.py), the stack's images built (`make images`) and served to the nodes from a
registry on the bridge (tools/live/registry.py), and `flowerbed:images` set to them.

`up` builds the binaries once (tools/live/build.py), starts a plane per cluster of
`Pulumi.<stack>.yaml` on free loopback ports, gives each a kwok node (plus a GPU node
with `nvidia.com/gpu` and the labels and taints the GPU sites of that cluster select),
a default StorageClass and one hostPath PersistentVolume per claim the stack will make,
so PVCs bind. It sets `clusters.<name>.kubeconfig` in the stack config as a secret and
writes `out/<stack>/<cluster>.kubeconfig` for kubectl. A second `up` finds the running
planes and changes nothing. `down` stops exactly the processes `up` started (PID files),
removes their data and takes the kubeconfigs out of the stack config again.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import time
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any


from components.config import ConfigError, FederationConfig, SiteConfig, flowerbed_values, parse, stack_file
from components.flower_release import stand_in_image
from tools.engine.offline import REPO, Pulumi
from tools.engine.stack import shown
from tools.images import build as image_build
from tools.images.settings import SettingError, Settings, flower_app
from tools.live import build
from tools.live.network import Network
from tools.live.node import RealNode
from tools.live.plane import ControlPlane, PlaneError
from tools.live.registry import Registry

PREFIX = "flowerbed:"
# This tool's own key in a stack file: `real` for real nodes, `kwok` (the default) for fake ones.
NODES_KEY = "localCluster:nodes"
NODE_KINDS = ("kwok", "real")
STORAGE_CLASS = "local"
GPUS_PER_NODE = 8
# The placeholder kubeconfig lets the stack's config be validated before the planes exist.
_PENDING = "set by make cluster"
# An image placeholder the config accepts (its tag names the program's Flower release).
_PENDING_IMAGE = stand_in_image("set-by-make-cluster")


class ClusterError(RuntimeError):
    """Bad input or a plane that did not come up; printed as one line (plus log lines)."""


@dataclass(frozen=True)
class LocalStack:
    """A stack whose clusters are local control planes, inside one project directory."""

    project: Path
    stack: str

    @property
    def stack_file(self) -> Path:
        return self.project / f"Pulumi.{self.stack}.yaml"

    @property
    def out(self) -> Path:
        return self.project / "out" / self.stack

    def plane(self, cluster: str, binaries=None) -> ControlPlane:
        return ControlPlane(cluster, self.out / "live" / cluster, binaries)

    def started_clusters(self) -> list[str]:
        """Clusters that `up` made a plane directory for (running or not)."""
        live = self.out / "live"
        return sorted(p.name for p in live.iterdir() if p.is_dir()) if live.exists() else []

    @property
    def node_network_dir(self) -> Path:
        """Real nodes: the stack's bridge plan (network.json) and its registry's files."""
        return self.out / "node-network"

    def _config(self) -> dict[str, Any]:
        """The stack file's `config:`, every namespace's keys; a missing or broken file is one line naming it."""
        try:
            return stack_file(self.stack_file)
        except ConfigError as err:
            raise ClusterError(str(err)) from None

    def raw_config(self) -> dict[str, Any]:
        return flowerbed_values(self._config())

    def real_nodes(self) -> bool:
        kind = self._config().get(NODES_KEY, "kwok")
        if kind not in NODE_KINDS:
            raise ClusterError(f"{self.stack_file.name}: {NODES_KEY}: {kind!r} is not one of {', '.join(NODE_KINDS)}")
        return kind == "real"

    def network(self) -> Network | None:
        path = self.node_network_dir / "network.json"
        return Network.load(path) if path.exists() else None

    def config(self) -> FederationConfig:
        """The stack's validated config, with the kubeconfigs that `up` will set taken as given."""
        raw = self.raw_config()
        clusters = raw.get("clusters")
        if not isinstance(clusters, Mapping) or not clusters:
            raise ClusterError(f"{self.stack_file.name}: flowerbed:clusters names no cluster")
        rendered = sorted(name for name, entry in clusters.items() if isinstance(entry, Mapping) and "renderDir" in entry)
        if rendered:
            raise ClusterError(f"stack {self.stack}: cluster {rendered[0]} is in render mode (renderDir); make cluster "
                               f"starts live control planes for clusters without renderDir (see Pulumi.local.yaml)")
        raw["clusters"] = {name: {**(entry or {}), "kubeconfig": _PENDING} for name, entry in clusters.items()}
        if self.real_nodes() and isinstance(raw.get("images"), Mapping):
            raw["images"] = {"platform": _PENDING_IMAGE, "job": _PENDING_IMAGE, **raw["images"]}
        try:
            # Only this stack's own config: a consortium site stack's join bundle is not needed to start its planes.
            return parse(raw, self.project)
        except ConfigError as err:
            raise ClusterError(f"invalid stack configuration in {self.stack_file.name}: {err}") from None

    def pulumi(self) -> Pulumi:
        return Pulumi(self.project, self.stack)


def kwok_node(name: str, labels: Mapping[str, str] | None = None, taints: list[dict] | None = None,
              gpus: int = 0) -> dict:
    """A Node that kwok manages (annotation `kwok.x-k8s.io/node: fake`): it reports Ready, runs nothing."""
    capacity = {"cpu": "64", "memory": "512Gi", "pods": "250", **({"nvidia.com/gpu": str(gpus)} if gpus else {})}
    return {
        "apiVersion": "v1", "kind": "Node",
        "metadata": {"name": name, "annotations": {"node.alpha.kubernetes.io/ttl": "0", "kwok.x-k8s.io/node": "fake"},
                     "labels": {"kubernetes.io/hostname": name, "kubernetes.io/os": "linux",
                                "kubernetes.io/arch": "amd64", "type": "kwok", **(labels or {})}},
        "spec": {"taints": taints or []},
        "status": {"allocatable": capacity, "capacity": capacity},
    }


def taints_tolerated(site: SiteConfig) -> list[dict]:
    """The taints a GPU node must carry so that only pods with this site's tolerations land on it."""
    taints = []
    for toleration in site.tolerations:
        if not toleration.get("key"):
            continue  # a key-less toleration tolerates everything: no taint follows from it
        taint = {"key": toleration["key"], "effect": toleration.get("effect") or "NoSchedule"}
        if toleration.get("operator", "Equal") == "Equal" and toleration.get("value"):
            taint["value"] = toleration["value"]
        taints.append(taint)
    return taints


def nodes_for(config: FederationConfig, cluster: str) -> list[dict]:
    """A general node, plus one GPU node when a GPU site or ServerApp of this cluster needs GPUs."""
    nodes = [kwok_node(f"kwok-{cluster}-0")]
    gpu_sites = [site for site in config.sites if site.cluster == cluster and site.gpus > 0]
    labels: dict[str, str] = {}
    taints: dict[tuple[str, str], dict] = {}
    for site in gpu_sites:
        labels.update(site.node_selector)
        taints.update({(t["key"], t["effect"]): t for t in taints_tolerated(site)})
    server = config.server  # None in a consortium's site stack
    server_gpus = server is not None and server.cluster == cluster and server.server_app.gpus > 0
    if gpu_sites or server_gpus:
        nodes.append(kwok_node(f"kwok-{cluster}-gpu-0", labels, list(taints.values()), GPUS_PER_NODE))
    return nodes


def claims_for(config: FederationConfig, cluster: str) -> list[tuple[str, str]]:
    """(storage class, size) of every PersistentVolumeClaim the program makes in this cluster."""
    claims = []
    server = config.server
    if server is not None and server.cluster == cluster:
        claims += [(s.storage_class or STORAGE_CLASS, s.size) for s in (server.state_storage, server.artifacts_storage)]
    for site in config.sites:
        if site.cluster == cluster:
            claims += [(d.storage_class or STORAGE_CLASS, d.size) for d in site.study_data if d.existing_claim is None]
            claims.append((site.state_storage.storage_class or STORAGE_CLASS, site.state_storage.size))
    return claims


def storage_for(config: FederationConfig, cluster: str, plane: ControlPlane, node: str | None = None) -> list[dict]:
    """A default StorageClass (and any class the stack names) and two PVs per claim.

    Two, so a claim that is deleted and made again (its first PV stays Released) still binds.
    Binding needs the classes to bind at once: the pinned provider waits forever on a
    WaitForFirstConsumer claim (pulumi-kubernetes fixed that in 4.27). With a real `node`, the
    PVs are `local` volumes on it (a directory each, which keeps its data across pod restarts; the
    kubelet gives it the pods' fsGroup); with kwok, hostPath PVs that nothing ever writes.
    """
    claims = claims_for(config, cluster)
    classes = sorted({STORAGE_CLASS, *(storage_class for storage_class, _ in claims)})
    objects: list[dict] = [{
        "apiVersion": "storage.k8s.io/v1", "kind": "StorageClass",
        "metadata": {"name": name, "annotations": {
            "storageclass.kubernetes.io/is-default-class": str(name == STORAGE_CLASS).lower()}},
        "provisioner": "kubernetes.io/no-provisioner", "volumeBindingMode": "Immediate",
        "allowVolumeExpansion": True, "reclaimPolicy": "Retain",
    } for name in classes]
    for index, (storage_class, size) in enumerate(claims * 2):
        path = plane.root / "volumes" / f"pv-{index}"
        if node is None:
            # Never written: kwok runs no container. The path only has to be absolute.
            source: dict[str, Any] = {"hostPath": {"path": str(path)}}
        else:
            # World-writable, as Rancher's local-path provisioner makes its volumes: the kubelet gives a
            # `local` volume the pods' fsGroup only at its first mount, and that may be a read-only one.
            path.mkdir(parents=True, exist_ok=True)
            path.chmod(0o777)
            source = {"local": {"path": str(path)}, "nodeAffinity": {"required": {"nodeSelectorTerms": [
                {"matchExpressions": [{"key": "kubernetes.io/hostname", "operator": "In", "values": [node]}]}]}}}
        objects.append({
            "apiVersion": "v1", "kind": "PersistentVolume",
            "metadata": {"name": f"local-{cluster}-{index}", "labels": {"flowerbed.dev/local-cluster": cluster}},
            "spec": {"capacity": {"storage": size}, "accessModes": ["ReadWriteOnce", "ReadWriteMany"],
                     "storageClassName": storage_class, "persistentVolumeReclaimPolicy": "Retain", **source},
        })
    return objects


def set_config(stack: LocalStack, key: str, value: str | None, *, secret: bool = False) -> None:
    """Writes (or, with None, removes) `flowerbed:<key>` (a --path) in the stack config."""
    pulumi = stack.pulumi()
    pulumi.select_or_init()
    key = f"{PREFIX}{key}"
    if value is None:
        pulumi.run(["config", "rm", "--path", key], capture=True, check=False)
        return
    current = pulumi.run(["config", "get", "--path", key], capture=True, check=False)
    if current.returncode == 0 and current.stdout.rstrip("\n") == value.rstrip("\n"):
        return  # unchanged: leave the stack file alone
    # The values never start with a dash, so no "--" is needed (and `run` appends --stack after the
    # arguments, which a "--" would turn into values).
    pulumi.run(["config", "set", *(["--secret"] if secret else []), "--path", key, value], capture=True)


def set_kubeconfig(stack: LocalStack, cluster: str, kubeconfig: str | None) -> None:
    """Writes (or, with None, removes) `clusters.<cluster>.kubeconfig` as a secret in the stack config."""
    set_config(stack, f"clusters.{cluster}.kubeconfig", kubeconfig, secret=True)


def up(stack: LocalStack, app: Path | None = None) -> dict[str, ControlPlane]:
    """Starts (or finds running) one plane per cluster of the stack; returns them by cluster name.

    `app`: real nodes only; the job image of this Flower App instead of the training app's."""
    config = stack.config()
    real = stack.real_nodes()
    if shutil.which("go") is None and (build.missing() or (real and build.missing(build.NODE_ENTRIES))):
        raise ClusterError("make cluster builds etcd, kube-apiserver and kwok (and for real nodes kubelet, "
                           "kube-proxy, CoreDNS, kube-router) from Go modules: install Go (1.25 or newer) and put it on PATH")
    binaries = build.ensure()
    if real:
        return up_real(stack, config, binaries, app)
    if app is not None:
        raise ClusterError(f"APP: kwok's nodes run no image; give APP to a stack with real nodes ({NODES_KEY}: real)")
    planes = {}
    for cluster in config.clusters:
        plane = stack.plane(cluster, binaries)
        if plane.ready():
            print(f"cluster {cluster}: already running (API server {plane.api_url})")
        else:
            plane.stop()  # a half-started or crashed plane: clear its processes and data first
            shutil.rmtree(plane.root, ignore_errors=True)
            started = time.monotonic()
            plane.start(nodes_for(config, cluster), storage_for(config, cluster, plane))
            print(f"cluster {cluster}: started in {time.monotonic() - started:.1f} s (API server {plane.api_url})")
        _hand_over(stack, cluster, plane)
        planes[cluster] = plane
    print(f"clusters.<name>.kubeconfig set as secrets in {stack.stack_file.name}; next: make up STACK={stack.stack}")
    return planes


def _hand_over(stack: LocalStack, cluster: str, plane: ControlPlane) -> None:
    """The plane's kubeconfig into the stack config (a secret) and out/<stack>/<cluster>.kubeconfig."""
    kubeconfig = plane.kubeconfig.read_text()
    set_kubeconfig(stack, cluster, kubeconfig)
    copy = stack.out / f"{cluster}.kubeconfig"
    copy.write_text(kubeconfig)
    copy.chmod(0o600)
    print(f"  kubectl --kubeconfig {shown(copy)} get nodes")
    print(f"  logs: {shown(plane.root)}/*.log")


def up_real(stack: LocalStack, config: FederationConfig, binaries: build.Binaries,
            app: Path | None = None) -> dict[str, ControlPlane]:
    """Planes with a real node each, on the stack's own bridge, running the stack's images (the job
    image of `app`, if given, else of training/): built, served by a registry on the bridge, pulled."""
    if config.server is None:
        raise ClusterError(f"{stack.stack_file.name}: real nodes serve one-stack federations (role: federation); "
                           "a consortium's hub and site stacks run on kwok planes (make consortium, tests/live)")
    gpu_sites = [f"sites[{i}].gpus" for i, site in enumerate(config.sites) if site.gpus > 0]
    if config.server.server_app.gpus > 0:
        gpu_sites.append("server.serverApp.gpus")
    if gpu_sites:
        raise ClusterError(f"{stack.stack_file.name}: {gpu_sites[0]}: the real nodes of make cluster have no GPU; "
                           "set it to 0 (GPU scheduling is tested on kwok stacks)")
    node_binaries = build.ensure_node()
    platform = image_build.build_with_buildah(Settings("localhost/flowerbed", "local", (), None, False, "buildah"))
    job = image_build.build_with_buildah(Settings("localhost/flowerbed", "local", ("cuda",), app, False, "buildah"))
    network = stack.network()
    if network is None:
        taken = {n.slot for n in _running_networks(stack.project)}
        network = Network.plan(list(config.clusters), taken)
        stack.node_network_dir.mkdir(parents=True, exist_ok=True)
        network.save(stack.node_network_dir / "network.json")
    network.create_bridge()
    registry = Registry(network, stack.node_network_dir)
    registry.start()
    started = time.monotonic()
    images = {"platform": _publish(registry, platform.platform), "job": _publish(registry, job.jobs[0])}
    infra = registry.infra_images(node_binaries)
    print(f"images: {images['platform']}, {images['job']} in the registry on {network.registry} "
          f"({time.monotonic() - started:.0f} s)")
    public_names = {config.server.endpoint: network.cluster(config.server.cluster).node}
    planes = {}
    nodes: list[RealNode] = []
    for cluster in config.clusters:
        addresses = network.cluster(cluster)
        plane = ControlPlane(cluster, stack.out / "live" / cluster, binaries, api_address=addresses.api_server)
        node = RealNode(plane, network, node_binaries)
        if plane.ready() and node.ready():
            print(f"cluster {cluster}: already running (API server {plane.api_url}, node {addresses.node})")
        else:
            node.stop()
            plane.stop()
            shutil.rmtree(plane.root, ignore_errors=True)
            started = time.monotonic()
            network.create_node_netns(addresses)
            plane.start([], storage_for(config, cluster, plane, node.name))
            node.start(infra, public_names)
            print(f"cluster {cluster}: started in {time.monotonic() - started:.1f} s (API server {plane.api_url}, "
                  f"node {node.name} at {addresses.node})")
        _hand_over(stack, cluster, plane)
        planes[cluster] = plane
        nodes.append(node)
    _pull_everywhere(nodes, list(images.values()))
    for role, image in images.items():
        set_config(stack, f"images.{role}", image)
    print(f"clusters.<name>.kubeconfig and images set in {stack.stack_file.name}; next: make up STACK={stack.stack}")
    return planes


def _publish(registry: Registry, image: str) -> str:
    """`image` of the buildah store sent to the registry, as flowerbed/<its repository's last part>."""
    return registry.publish(image, "flowerbed/" + image.rsplit("/", 1)[1].split(":")[0])


def _pull_everywhere(nodes: list[RealNode], images: list[str]) -> None:
    # Flower hands a task back when its pod has not started within about 30 s, and the executor
    # launches another: the several-GB job image must be on the node before the first task.
    started = time.monotonic()
    with ThreadPoolExecutor(len(nodes)) as pool:
        list(pool.map(lambda node: node.pull(images), nodes))
    print(f"images pulled by every node in {time.monotonic() - started:.0f} s")


def send_images(stack: LocalStack, images: Mapping[str, str]) -> dict[str, str]:
    """More images of the buildah store for the running real nodes of `stack` (e.g. another release's,
    for an upgrade): sent to its registry and pulled by every node; returns their registry names, by key."""
    network = stack.network()
    if network is None or not stack.started_clusters():
        raise ClusterError(f"stack {stack.stack}: no real nodes are running; make cluster STACK={stack.stack} first")
    registry = Registry(network, stack.node_network_dir)
    registry.start()
    names = {key: _publish(registry, image) for key, image in images.items()}
    _pull_everywhere([RealNode(stack.plane(cluster), network) for cluster in stack.started_clusters()],
                     list(names.values()))
    return names


def _running_networks(project: Path) -> list[Network]:
    """The node networks of this project's stacks (to give a new one another address block)."""
    return [Network.load(path) for path in (project / "out").glob("*/node-network/network.json")]


def down(stack: LocalStack) -> None:
    """Stops the planes (and real nodes) `up` started, removes their data and the config it set."""
    clusters = stack.started_clusters()
    network = stack.network()
    for cluster in clusters:
        plane = stack.plane(cluster)
        stopped = RealNode(plane, network).stop() if network is not None else []
        stopped += plane.stop()
        shutil.rmtree(plane.root)
        (stack.out / f"{cluster}.kubeconfig").unlink(missing_ok=True)
        set_kubeconfig(stack, cluster, None)
        print(f"cluster {cluster}: stopped {', '.join(stopped) or 'nothing (no process was running)'}; data removed")
    if network is not None:
        Registry(network, stack.node_network_dir).stop()
        removed = network.remove()
        shutil.rmtree(stack.node_network_dir)
        for role in ("platform", "job"):
            set_config(stack, f"images.{role}", None)
        print(f"node network: removed {', '.join(removed) or 'nothing'} and the registry")
    if not clusters and network is None:
        print(f"stack {stack.stack}: no local control planes under {shown(stack.out / 'live')}")


def status(stack: LocalStack) -> bool:
    network = stack.network()

    def running(cluster: str) -> bool:
        plane = stack.plane(cluster)
        return plane.ready() and (network is None or RealNode(plane, network).ready())

    clusters = stack.started_clusters()
    for cluster in clusters:
        print(f"cluster {cluster}: {'running' if running(cluster) else 'NOT running'} "
              f"({shown(stack.plane(cluster).root)})")
    return bool(clusters) and all(running(c) for c in clusters)


def main(argv: list[str]) -> int:
    app = Path(argv.pop(argv.index("--app") + 1)).resolve() if "--app" in argv[:-1] else None
    argv = [a for a in argv if a != "--app"]
    if len(argv) != 2 or argv[0] not in ("up", "down", "status"):
        print("usage: tools/cluster up|down|status <stack> [--app DIR]", file=sys.stderr)
        return 2
    stack = LocalStack(REPO, argv[1])
    try:
        if argv[0] == "up":
            up(stack, flower_app(app) if app is not None else None)
        elif argv[0] == "down":
            down(stack)
        else:
            return 0 if status(stack) else 1
    except (ClusterError, PlaneError, SettingError) as err:
        print(f"make cluster: {err}", file=sys.stderr)
        return 1
    except subprocess.CalledProcessError as err:
        print(f"make cluster: {' '.join(err.cmd[:3])} failed: {(err.stderr or '').strip()}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
