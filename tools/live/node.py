"""A real Kubernetes node for one local control plane: containers run, pods get addresses,
Services route, names resolve and NetworkPolicies are enforced.

Per node (recipe and measurements: shared/research/real-nodes.md), all inside the node's
network namespace (tools/live/network.py):

| process | what it does |
| --- | --- |
| containerd 1.6 (Debian) | the container runtime (CRI), runc, CNI bridge + host-local + portmap, pulls from the stack's registry |
| kubelet 1.34.4 | runs the pods the scheduler places here; x509 + webhook auth on its API |
| kube-proxy 1.34.4 | Services (iptables mode) |
| kube-router 2.1.0 | NetworkPolicies (firewall only) |

plus CoreDNS as a pod (`k8s-app: kube-dns` in kube-system, behind the usual 10.96.0.10), which
answers the cluster's names and the stack's public names (the server endpoint, as the public DNS
would) and nothing else: it has no upstream, so no lookup leaves the machine.

The host is left as it was found. Every node process also lives in a mount namespace of the
node's own (a slave of the host's): /run, /var/lib and /var/log are private tmpfs there, so what
kubelet, containerd and the CNI plugins write at fixed paths (/var/lib/kubelet/device-plugins,
/var/lib/cni, /run/containerd, /run/netns/cni-*, /var/log/containers) never reaches the host, and
the host-wide sysctls the kubelet sets (kernel.panic, vm.overcommit_memory, ...) are shadowed by
plain files, so the host's values stay. Container mounts live in that namespace too, and go with
it when its last process ends.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import yaml

from tools.live import pki
from tools.live.build import NodeBinaries
from tools.live.network import CLUSTER_DNS, SERVICE_RANGE, ClusterAddresses, Network
from tools.live.plane import ControlPlane, PlaneError, pid_alive, wait_until

# Stopped in this order, started in the reverse; `holder` keeps the node's mount namespace.
PROCESSES = ("kube-router", "kube-proxy", "kubelet", "containerd", "holder")
# Files the kubelet writes under /proc/sys (container_manager_linux.go setupKernelTunables): host-wide,
# so shadowed in the node's mount namespace.
SHADOWED_SYSCTLS = ("kernel/panic", "kernel/panic_on_oops", "vm/overcommit_memory", "vm/panic_on_oom",
                    "kernel/keys/root_maxkeys", "kernel/keys/root_maxbytes")
CGROUP_HIERARCHIES = ("blkio", "cpu", "cpuacct", "cpuset", "devices", "freezer", "memory", "pids", "systemd",
                      "unified", "hugetlb", "net_cls", "net_prio", "perf_event", "rdma", "misc")
KUBE_ROUTER_USER = "flowerbed:kube-router"
KUBE_ROUTER_HEALTH_PORT = 20244
START_TIMEOUT_S = 120
_HOLDER_SETUP = """set -e
for dir in /run /var/lib /var/log; do mount -t tmpfs -o mode=0755,size=512m flowerbed-node "$dir"; done
mkdir /run/flowerbed-sysctl
for name in {sysctls}; do
  shadow=/run/flowerbed-sysctl/$(echo "$name" | tr / .)
  cat "/proc/sys/$name" > "$shadow"
  mount --bind "$shadow" "/proc/sys/$name"
done
touch /run/flowerbed-node-ready
exec -a "flowerbed-node-holder $0" sleep infinity
"""


class NodeError(PlaneError):
    """A node that did not come up; one line plus the last log lines."""


@dataclass(frozen=True)
class InfraImages:
    """The images every node needs before any pod of the stack: the pause container and CoreDNS."""

    pause: str
    coredns: str


class RealNode:
    """The node of one cluster, living in `<plane root>/node` (configs, PKI, logs, PID files, data)."""

    def __init__(self, plane: ControlPlane, network: Network, binaries: NodeBinaries | None = None) -> None:
        self.plane = plane
        self.network = network
        self.addresses: ClusterAddresses = network.cluster(plane.cluster)
        self.binaries = binaries
        self.root = plane.root / "node"
        self.name = f"node-{plane.cluster}"

    # --- paths -----------------------------------------------------------------------------------------

    def pid_file(self, process: str) -> Path:
        return self.root / "pids" / f"{process}.pid"

    def log(self, process: str) -> Path:
        return self.root / "logs" / f"{process}.log"

    @property
    def containerd_socket(self) -> Path:
        """In a short directory of its own: a Unix socket's path holds at most 108 bytes (containerd refuses
        more than 104 for its `.ttrpc` twin), and the node's directory may be deep (a pytest base temp)."""
        digest = hashlib.sha256(str(self.root).encode()).hexdigest()[:12]
        return Path(tempfile.gettempdir()) / f"flowerbed-node-{digest}" / "containerd.sock"

    @property
    def cgroup_root(self) -> str:
        return f"/flowerbed-{self.network.slot}-{self.plane.cluster}"

    def pids(self) -> dict[str, int]:
        return {p: int(self.pid_file(p).read_text()) for p in PROCESSES if self.pid_file(p).exists()}

    def ready(self) -> bool:
        pids = self.pids()
        return set(pids) == set(PROCESSES) and all(pid_alive(p) for p in pids.values()) and \
            self.plane.client().node_ready(self.name)

    # --- start -----------------------------------------------------------------------------------------

    def start(self, images: InfraImages, public_names: dict[str, str]) -> None:
        """Starts the node's processes and CoreDNS, and waits until the node is Ready and DNS answers.

        `public_names`: name -> address that CoreDNS answers for (the stack's server endpoint).
        """
        if self.binaries is None:
            raise ValueError("starting a node needs its binaries")
        for sub in ("pids", "logs", "pki", "containerd", "kubelet", "cni/net.d", "cni/ipam", "pod-logs",
                    "volume-plugins"):
            (self.root / sub).mkdir(parents=True, exist_ok=True)
        self.containerd_socket.parent.mkdir(mode=0o700, exist_ok=True)
        started = time.monotonic()

        def left() -> float:
            return max(5.0, START_TIMEOUT_S - (time.monotonic() - started))

        kubeconfigs = self._credentials()
        self._apply(self._rbac())
        self._create_cgroups()
        self._spawn_holder()
        self._spawn("containerd", ["containerd", "--config", str(self._containerd_config(images))])
        self._await("containerd", self.containerd_socket.exists, left())
        self._spawn("kubelet", [
            str(self.binaries.kubelet), f"--config={self._kubelet_config()}", f"--kubeconfig={kubeconfigs['kubelet']}",
            f"--root-dir={self.root / 'kubelet'}", f"--cert-dir={self.root / 'kubelet' / 'pki'}",
            f"--hostname-override={self.name}", f"--node-ip={self.addresses.node}", "--v=1"])
        self._spawn("kube-proxy", [str(self.binaries.kube_proxy), f"--config={self._kube_proxy_config(kubeconfigs)}"])
        client = self.plane.client()
        self._await("kubelet", lambda: client.node_ready(self.name), left())
        # After the Node exists: kube-router looks itself up by name once, at start.
        self._spawn("kube-router", [
            str(self.binaries.kube_router), "--run-firewall=true", "--run-router=false", "--run-service-proxy=false",
            "--enable-cni=false", f"--hostname-override={self.name}", f"--kubeconfig={kubeconfigs['kube-router']}",
            f"--service-cluster-ip-range={SERVICE_RANGE}", f"--health-port={KUBE_ROUTER_HEALTH_PORT}",
            "--metrics-port=0"])
        self._await("kube-router", self._kube_router_healthy, left())
        self._apply(coredns_objects(images.coredns, public_names))
        self._await("kubelet", self._dns_ready, left())

    def _create_cgroups(self) -> None:
        """The node's cgroup root in every v1 hierarchy (the kubelet's cgroupfs driver wants it to exist);
        its cpuset gets the host's CPUs and memory nodes, which a new cpuset starts without."""
        for hierarchy in CGROUP_HIERARCHIES:
            parent = Path("/sys/fs/cgroup") / hierarchy
            if parent.is_dir() and hierarchy != "unified":
                (parent / self.cgroup_root.lstrip("/")).mkdir(exist_ok=True)
        cpuset = Path("/sys/fs/cgroup/cpuset")
        for name in ("cpuset.cpus", "cpuset.mems"):
            (cpuset / self.cgroup_root.lstrip("/") / name).write_text((cpuset / name).read_text())

    def _credentials(self) -> dict[str, Path]:
        """Client certificates from the plane's CA, one kubeconfig per process that talks to the API."""
        ca = self.plane.pki.ca()
        identities = {"kubelet": (f"system:node:{self.name}", ("system:nodes",)),
                      "kube-proxy": ("system:kube-proxy", ()),  # bound to system:node-proxier by default
                      "kube-router": (KUBE_ROUTER_USER, ())}
        paths = {}
        for process, (user, groups) in identities.items():
            cert = pki.client_certificate(ca, user, groups)
            path = self.root / "pki" / f"{process}.kubeconfig"
            path.write_text(yaml.safe_dump({
                "apiVersion": "v1", "kind": "Config", "current-context": "node",
                "clusters": [{"name": "plane", "cluster": {"server": self.plane.api_url,
                                                           "certificate-authority": str(self.plane.pki.ca_cert)}}],
                "users": [{"name": user, "user": {"client-certificate-data": _b64(cert.cert_pem),
                                                  "client-key-data": _b64(cert.key_pem)}}],
                "contexts": [{"name": "node", "context": {"cluster": "plane", "user": user}}]}))
            path.chmod(0o600)
            paths[process] = path
        return paths

    def _rbac(self) -> list[dict]:
        """kube-apiserver may use kubelets' API; kube-router may read what it enforces."""
        return [
            _binding("flowerbed:apiserver-kubelet", "system:kubelet-api-admin", pki.KUBELET_CLIENT_USER),
            {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRole", "metadata": {"name": KUBE_ROUTER_USER},
             "rules": [{"apiGroups": [""], "resources": ["namespaces", "pods", "nodes", "services", "endpoints"],
                        "verbs": ["get", "list", "watch"]},
                       {"apiGroups": ["networking.k8s.io"], "resources": ["networkpolicies"],
                        "verbs": ["get", "list", "watch"]},
                       {"apiGroups": ["discovery.k8s.io"], "resources": ["endpointslices"],
                        "verbs": ["get", "list", "watch"]}]},
            _binding(KUBE_ROUTER_USER, KUBE_ROUTER_USER, KUBE_ROUTER_USER),
        ]

    def _spawn_holder(self) -> None:
        """The process that makes and keeps the node's mount namespace (see the module docstring)."""
        setup = _HOLDER_SETUP.format(sysctls=" ".join(SHADOWED_SYSCTLS))
        self._launch("holder", ["nsenter", f"--net=/run/netns/{self.addresses.netns}", "--", "unshare", "--mount",
                                "--propagation", "slave", "--", "bash", "-c", setup, self.addresses.netns])
        pid = self.pids()["holder"]
        self._await("holder", lambda: Path(f"/proc/{pid}/root/run/flowerbed-node-ready").exists(), 10)

    def _spawn(self, process: str, argv: list[str]) -> None:
        """`argv` in the node's network and mount namespaces, detached, with its PID file."""
        holder = self.pids()["holder"]
        self._launch(process, ["nsenter", f"--net=/run/netns/{self.addresses.netns}", f"--mount=/proc/{holder}/ns/mnt",
                               "--", *argv])

    def _launch(self, process: str, argv: list[str]) -> None:
        pid_file = self.pid_file(process)
        pid_file.unlink(missing_ok=True)
        with open(self.log(process), "ab") as log:
            subprocess.run(["setsid", "--fork", "sh", "-c", 'echo $$ > "$0.tmp" && mv "$0.tmp" "$0" && exec "$@"',
                            str(pid_file), *argv], stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                           env={**os.environ, "GOGC": "50"}, check=True)
        if not wait_until(pid_file.exists, 10, 0.02):
            raise NodeError(f"node {self.name}: {process} did not start; see {self.log(process)}")

    def _await(self, process: str, check, timeout: float) -> None:
        pid = self.pids()[process]
        if wait_until(lambda: check() or not pid_alive(pid), timeout) and pid_alive(pid):
            return
        state = "exited" if not pid_alive(pid) else f"not ready within {timeout:.0f} s"
        tail = self.log(process).read_text(errors="replace").splitlines()[-15:]
        raise NodeError(f"node {self.name}: {process} {state}; last lines of {self.log(process)}:\n"
                        + "\n".join(f"  {line}" for line in tail))

    def _apply(self, objects: list[dict]) -> None:
        result = subprocess.run(["kubectl", "--kubeconfig", str(self.plane.kubeconfig), "apply", "-f", "-"],
                                input=yaml.safe_dump_all(objects), capture_output=True, text=True, timeout=60)
        if result.returncode != 0:
            raise NodeError(f"node {self.name}: kubectl apply failed: {result.stderr.strip()}")

    def pull(self, images: list[str], timeout: float = 900) -> None:
        """Has the node pull `images` now, as an image pre-puller would: a pod per image in kube-system
        that only exits, waited for until it succeeded (or its pull failed)."""
        pods = []
        for index, image in enumerate(images):
            name = f"pre-pull-{index}"
            pods.append(name)
            self._apply([{"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name, "namespace": "kube-system"},
                          "spec": {"nodeName": self.name, "restartPolicy": "Never",
                                   "automountServiceAccountToken": False,
                                   "containers": [{"name": "pull", "image": image, "imagePullPolicy": "IfNotPresent",
                                                   "command": ["true"]}]}}])
        kubectl = ["kubectl", "--kubeconfig", str(self.plane.kubeconfig), "-n", "kube-system"]
        deadline = time.monotonic() + timeout
        try:
            for name in pods:
                while True:
                    pod = json.loads(subprocess.run([*kubectl, "get", "pod", name, "-o", "json"], capture_output=True,
                                                    text=True, check=True).stdout)
                    waiting = [c["state"]["waiting"] for c in pod["status"].get("containerStatuses") or []
                               if (c.get("state") or {}).get("waiting", {}).get("reason") in ("ErrImagePull",
                                                                                             "ImagePullBackOff")]
                    if waiting:
                        raise NodeError(f"node {self.name}: pulling {pod['spec']['containers'][0]['image']}: "
                                        f"{waiting[0].get('message', waiting[0]['reason'])}")
                    if pod["status"].get("phase") in ("Succeeded", "Failed"):
                        break
                    if time.monotonic() > deadline:
                        raise NodeError(f"node {self.name}: images not pulled within {timeout:.0f} s")
                    time.sleep(1)
        finally:
            subprocess.run([*kubectl, "delete", "pod", *pods, "--wait=false"], capture_output=True)

    def _kube_router_healthy(self) -> bool:
        probe = subprocess.run(["nsenter", f"--net=/run/netns/{self.addresses.netns}", "--", sys.executable, "-c",
                                "import urllib.request,sys; urllib.request.urlopen("
                                f"'http://127.0.0.1:{KUBE_ROUTER_HEALTH_PORT}/healthz', timeout=2)"],
                               capture_output=True)
        return probe.returncode == 0

    def _dns_ready(self) -> bool:
        ready = subprocess.run(["kubectl", "--kubeconfig", str(self.plane.kubeconfig), "-n", "kube-system", "get",
                                "deployment", "coredns", "-o", "jsonpath={.status.readyReplicas}"],
                               capture_output=True, text=True)
        return ready.stdout.strip() == "1"

    # --- configs ---------------------------------------------------------------------------------------

    def _containerd_config(self, images: InfraImages) -> Path:
        c = self.root / "containerd"
        registry = self.network.registry
        config = f"""version = 2
root = "{c / 'root'}"
state = "{c / 'state'}"
[grpc]
  address = "{self.containerd_socket}"
[ttrpc]
  address = "{self.containerd_socket}.ttrpc"
[plugins]
  [plugins."io.containerd.internal.v1.opt"]
    path = "{c / 'opt'}"
  [plugins."io.containerd.grpc.v1.cri"]
    sandbox_image = "{images.pause}"
    restrict_oom_score_adj = true
    [plugins."io.containerd.grpc.v1.cri".containerd]
      snapshotter = "overlayfs"
      default_runtime_name = "runc"
      # Unpacked layers are all a node needs: their compressed blobs would double its disk.
      discard_unpacked_layers = true
      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
        runtime_type = "io.containerd.runc.v2"
        [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
          BinaryName = "{shutil.which('runc') or '/usr/sbin/runc'}"
          Root = "{c / 'runc'}"
          SystemdCgroup = false
    [plugins."io.containerd.grpc.v1.cri".cni]
      bin_dir = "/usr/lib/cni"
      conf_dir = "{self.root / 'cni' / 'net.d'}"
    # The stack's registry, on the host's address of the bridge, over plain HTTP.
    [plugins."io.containerd.grpc.v1.cri".registry.mirrors."{registry}"]
      endpoint = ["http://{registry}"]
"""
        path = c / "config.toml"
        path.write_text(config)
        (self.root / "cni" / "net.d" / "10-bridge.conflist").write_text(json.dumps({
            "cniVersion": "0.4.0", "name": "flowerbed", "plugins": [
                # ipMasq: pod traffic that leaves the node takes the node's address, so the host and
                # other clusters answer the node (a NodePort across clusters needs it too).
                {"type": "bridge", "bridge": "cni0", "isGateway": True, "ipMasq": True, "hairpinMode": True,
                 "ipam": {"type": "host-local", "dataDir": str(self.root / "cni" / "ipam"),
                          "ranges": [[{"subnet": self.addresses.pod_cidr}]], "routes": [{"dst": "0.0.0.0/0"}]}},
                {"type": "portmap", "capabilities": {"portMappings": True}}]}, indent=1))
        return path

    def _kubelet_config(self) -> Path:
        resolv = self.root / "resolv.conf"
        resolv.write_text("")  # pods get no upstream resolver: nothing leaves the machine
        config = {
            "apiVersion": "kubelet.config.k8s.io/v1beta1", "kind": "KubeletConfiguration",
            "cgroupDriver": "cgroupfs", "cgroupRoot": self.cgroup_root,
            # This machine: swap may be on, cgroup v1 (kubelet 1.35 refuses it; 1.34 only warns).
            "failSwapOn": False, "failCgroupV1": False,
            "containerRuntimeEndpoint": f"unix://{self.containerd_socket}",
            "address": self.addresses.node, "readOnlyPort": 0, "healthzBindAddress": "127.0.0.1",
            "authentication": {"anonymous": {"enabled": False}, "webhook": {"enabled": True},
                               "x509": {"clientCAFile": str(self.plane.pki.ca_cert)}},
            "authorization": {"mode": "Webhook"},
            "clusterDNS": [CLUSTER_DNS], "clusterDomain": "cluster.local", "resolvConf": str(resolv),
            "podLogsDir": str(self.root / "pod-logs"), "volumePluginDir": str(self.root / "volume-plugins"),
            "maxPods": 60, "serializeImagePulls": False,
            # The host's disk is shared with everything else on the machine: evict only when it is nearly full.
            "evictionHard": {"memory.available": "200Mi", "nodefs.available": "3%", "imagefs.available": "3%"},
            "imageGCHighThresholdPercent": 97, "imageGCLowThresholdPercent": 95,
        }
        path = self.root / "kubelet.yaml"
        path.write_text(yaml.safe_dump(config))
        return path

    def _kube_proxy_config(self, kubeconfigs: dict[str, Path]) -> Path:
        config = {
            "apiVersion": "kubeproxy.config.k8s.io/v1alpha1", "kind": "KubeProxyConfiguration",
            "clientConnection": {"kubeconfig": str(kubeconfigs["kube-proxy"])}, "hostnameOverride": self.name,
            "mode": "iptables", "clusterCIDR": self.addresses.pod_cidr,
            "nodePortAddresses": [f"{self.addresses.node}/32"],
            "healthzBindAddress": "127.0.0.1:10256", "metricsBindAddress": "127.0.0.1:10249",
            # 0: leave the host-wide conntrack table size and timeouts alone.
            "conntrack": {"maxPerCore": 0, "min": 0, "tcpEstablishedTimeout": "0s", "tcpCloseWaitTimeout": "0s"},
        }
        path = self.root / "kube-proxy.yaml"
        path.write_text(yaml.safe_dump(config))
        return path

    # --- stop ------------------------------------------------------------------------------------------

    def stop(self) -> list[str]:
        """Stops the node's processes (by PID file), then every other process of the node: those in its mount
        namespace (container shims, containers) or its pods' cgroups; removes its cgroups. Returns what it
        stopped. No drain: everything a pod left (network, mounts, CNI state) is the node's own and goes
        with its namespaces and directory."""
        pids = self.pids()
        holder = pids.get("holder")
        namespace = _mount_namespace(holder) if holder and pid_alive(holder) else None
        stopped = []
        for process in PROCESSES:
            pid = pids.get(process)
            if pid is not None and pid_alive(pid) and _is_ours(pid, self):
                _terminate(pid)
                stopped.append(process)
            self.pid_file(process).unlink(missing_ok=True)
        leftovers = {pid for pid in _all_pids() if namespace is not None and _mount_namespace(pid) == namespace
                     or str(self.root) in _cmdline(pid)}
        leftovers |= {int(pid) for procs in self._cgroup_dirs("cgroup.procs") for pid in procs.read_text().split()}
        for pid in leftovers:
            _terminate(pid)
        if leftovers:
            stopped.append(f"{len(leftovers)} container process(es)")
        self._remove_cgroups()
        shutil.rmtree(self.containerd_socket.parent, ignore_errors=True)
        return stopped

    def _cgroup_dirs(self, file: str) -> list[Path]:
        return [path for hierarchy in CGROUP_HIERARCHIES
                for path in (Path("/sys/fs/cgroup") / hierarchy / self.cgroup_root.lstrip("/")).rglob(file)]

    def _remove_cgroups(self) -> None:
        """The node's cgroups, deepest first; a cgroup stays busy until its last process (a container's,
        a shim's) has exited and been reaped, so each gets a few seconds."""
        for hierarchy in CGROUP_HIERARCHIES:
            top = Path("/sys/fs/cgroup") / hierarchy / self.cgroup_root.lstrip("/")
            if not top.is_dir():
                continue
            for directory in sorted([top, *(p for p in top.rglob("*") if p.is_dir())], key=lambda p: len(p.parts),
                                    reverse=True):
                if not wait_until(lambda d=directory: _rmdir(d), 15, 0.2):
                    raise NodeError(f"node {self.name}: cgroup {directory} still busy: "
                                    f"{(directory / 'cgroup.procs').read_text().split()}")


def _b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


def _binding(name: str, role: str, user: str) -> dict:
    return {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRoleBinding", "metadata": {"name": name},
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": role},
            "subjects": [{"apiGroup": "rbac.authorization.k8s.io", "kind": "User", "name": user}]}


def coredns_objects(image: str, public_names: dict[str, str]) -> list[dict]:
    """CoreDNS in kube-system as a cluster's DNS (labels `k8s-app: kube-dns`, Service 10.96.0.10).

    It answers cluster.local and `public_names` (as the public DNS would answer for the server
    endpoint) and has no `forward`: every other name fails here instead of leaving the machine.
    """
    hosts = "\n".join(f"        {address} {name}" for name, address in sorted(public_names.items()))
    corefile = f""".:53 {{
    errors
    health :8080
    ready :8181
    hosts {{
{hosts}
        fallthrough
    }}
    kubernetes cluster.local in-addr.arpa ip6.arpa {{
        pods insecure
        fallthrough in-addr.arpa ip6.arpa
    }}
    cache 30
}}
"""
    labels = {"k8s-app": "kube-dns"}
    meta = {"namespace": "kube-system", "labels": labels}
    return [
        {"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": "coredns", **meta}},
        {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRole", "metadata": {"name": "flowerbed:coredns"},
         "rules": [{"apiGroups": [""], "resources": ["endpoints", "services", "pods", "namespaces"],
                    "verbs": ["list", "watch"]},
                   {"apiGroups": ["discovery.k8s.io"], "resources": ["endpointslices"], "verbs": ["list", "watch"]}]},
        {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRoleBinding",
         "metadata": {"name": "flowerbed:coredns"},
         "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "flowerbed:coredns"},
         "subjects": [{"kind": "ServiceAccount", "name": "coredns", "namespace": "kube-system"}]},
        {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "coredns", **meta},
         "data": {"Corefile": corefile}},
        {"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "coredns", **meta}, "spec": {
            "replicas": 1, "selector": {"matchLabels": labels},
            "template": {"metadata": {"labels": labels}, "spec": {
                "serviceAccountName": "coredns", "dnsPolicy": "Default",
                "securityContext": {"runAsNonRoot": True, "runAsUser": 65532, "runAsGroup": 65532,
                                    "seccompProfile": {"type": "RuntimeDefault"},
                                    # Port 53 without any capability (a namespaced, "safe" sysctl).
                                    "sysctls": [{"name": "net.ipv4.ip_unprivileged_port_start", "value": "53"}]},
                "containers": [{
                    "name": "coredns", "image": image, "imagePullPolicy": "IfNotPresent",
                    "args": ["-conf", "/etc/coredns/Corefile"],
                    "ports": [{"name": "dns", "containerPort": 53, "protocol": "UDP"},
                              {"name": "dns-tcp", "containerPort": 53, "protocol": "TCP"}],
                    "readinessProbe": {"httpGet": {"path": "/ready", "port": 8181}, "periodSeconds": 2},
                    "livenessProbe": {"httpGet": {"path": "/health", "port": 8080}, "periodSeconds": 10},
                    "resources": {"requests": {"cpu": "50m", "memory": "64Mi"}, "limits": {"memory": "170Mi"}},
                    "securityContext": {"allowPrivilegeEscalation": False, "readOnlyRootFilesystem": True,
                                        "capabilities": {"drop": ["ALL"]}},
                    "volumeMounts": [{"name": "config", "mountPath": "/etc/coredns"}]}],
                "volumes": [{"name": "config", "configMap": {"name": "coredns"}}]}}}},
        {"apiVersion": "v1", "kind": "Service", "metadata": {"name": "kube-dns", **meta}, "spec": {
            "clusterIP": CLUSTER_DNS, "selector": labels,
            "ports": [{"name": "dns", "port": 53, "protocol": "UDP"}, {"name": "dns-tcp", "port": 53, "protocol": "TCP"}]}},
    ]


def _rmdir(directory: Path) -> bool:
    try:
        directory.rmdir()
    except FileNotFoundError:
        pass
    except OSError:
        return False
    return True


def _mount_namespace(pid: int) -> str | None:
    try:
        return os.readlink(f"/proc/{pid}/ns/mnt")
    except OSError:
        return None


def _all_pids() -> list[int]:
    return [int(p.name) for p in Path("/proc").iterdir() if p.name.isdigit()]


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace")
    except OSError:
        return ""


def _is_ours(pid: int, node: RealNode) -> bool:
    """A PID file can outlive its process and the PID be reused: only signal a process of this node."""
    cmdline = _cmdline(pid)
    return str(node.root) in cmdline or f"flowerbed-node-holder {node.addresses.netns}" in cmdline


def _terminate(pid: int) -> None:
    try:
        os.kill(pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    if not wait_until(lambda: not pid_alive(pid), 10, 0.1):
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            return
        wait_until(lambda: not pid_alive(pid), 5, 0.1)
