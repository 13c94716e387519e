"""One local Kubernetes control plane: etcd, kube-apiserver, kube-controller-manager,
kube-scheduler and kwok on 127.0.0.1, started as background processes with PID files.

For real nodes (tools/live/node.py) the API server listens on its cluster's address on the
nodes' bridge instead (port 6443, reached by kubelets and pods), reaches kubelets by their
address (never by name: no lookup leaves the machine) with a client certificate, and no kwok runs.

What is real: the API server (validation, RBAC, Pod Security admission, server-side
apply), the controllers (Deployments, ReplicaSets, Jobs, garbage collection, namespace
deletion, PV binding, ServiceAccounts) and the scheduler. kwok's fake nodes mark
scheduled pods Running/Ready and Job pods Succeeded; no container ever runs.
Flags and the kwok stages follow shared/research/live-kubernetes.md.
"""

from __future__ import annotations

import base64
import json
import os
import signal
import socket
import ssl
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import yaml

from tools.live import pki
from tools.live.build import Binaries

HERE = Path(__file__).resolve().parent
KWOK_STAGES = HERE / "kwok-stages.yaml"
START_TIMEOUT_S = 60
# Collect garbage at +50% heap instead of +100%: two planes side by side in ~1 GB instead of ~1.3 GB,
# for a little CPU (these servers idle between test requests).
GO_RUNTIME = {"GOGC": "50"}
# Stopped in this order (newest first), started in the reverse.
PROCESSES = ("kwok", "kube-scheduler", "kube-controller-manager", "kube-apiserver", "etcd")


class PlaneError(RuntimeError):
    """A control plane that cannot start or be reached; the message is one line plus log lines."""


@dataclass(frozen=True)
class Ports:
    etcd_client: int
    etcd_peer: int
    api_server: int
    controller_manager: int
    scheduler: int
    kwok: int
    # Where kube-apiserver listens: loopback (kwok planes), or its address on the nodes' bridge.
    api_address: str = "127.0.0.1"

    def numbers(self) -> list[int]:
        """Every port number, the API server's included."""
        return [self.etcd_client, self.etcd_peer, self.api_server, self.controller_manager, self.scheduler, self.kwok]

    @classmethod
    def free(cls, api_address: str = "127.0.0.1", api_port: int | None = None) -> Ports:
        """Loopback ports the kernel has just handed out (all held open until all are chosen); the API
        server's is `api_port` on `api_address` when given."""
        sockets = []
        try:
            for _ in range(6):
                s = socket.socket()
                s.bind(("127.0.0.1", 0))
                sockets.append(s)
            ports = [s.getsockname()[1] for s in sockets]
            if api_port is not None:
                ports[2] = api_port
            return cls(*ports, api_address=api_address)
        finally:
            for s in sockets:
                s.close()


def port_taken(port: int, address: str = "127.0.0.1") -> bool:
    with socket.socket() as s:
        try:
            s.bind((address, port))
        except OSError:
            return True
    return False


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # A zombie (exited, not yet reaped by its parent) is not running.
    try:
        return Path(f"/proc/{pid}/stat").read_text().split(") ", 1)[1][0] != "Z"
    except (OSError, IndexError):
        return False


def wait_until(check: Callable[[], bool], timeout: float, interval: float = 0.2) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return True
        time.sleep(interval)
    return False


class ControlPlane:
    """The control plane of one cluster of a stack, living in `root` (data, PKI, logs, PID files)."""

    def __init__(self, cluster: str, root: Path, binaries: Binaries | None = None,
                 api_address: str | None = None) -> None:
        """`api_address`: for real nodes, the API server's address on their bridge (port 6443); None:
        loopback on a free port, with kwok's fake nodes. A plane found running keeps what it started with."""
        self.cluster = cluster
        self.root = root
        self.binaries = binaries
        self.pki = pki.PlanePki.at(root / "pki")
        self._api_address = api_address

    @property
    def real_nodes(self) -> bool:
        """Whether this plane serves real nodes (no kwok) rather than kwok's fake ones."""
        if self.ports_file.exists():
            return self.ports().api_address != "127.0.0.1"
        return self._api_address is not None

    @property
    def processes(self) -> tuple[str, ...]:
        return tuple(p for p in PROCESSES if p != "kwok" or not self.real_nodes)

    @property
    def api_url(self) -> str:
        ports = self.ports()
        return f"https://{ports.api_address}:{ports.api_server}"

    @property
    def kubeconfig(self) -> Path:
        return self.root / "kubeconfig"

    @property
    def ports_file(self) -> Path:
        return self.root / "ports.json"

    def log(self, process: str) -> Path:
        return self.root / f"{process}.log"

    def pid_file(self, process: str) -> Path:
        return self.root / f"{process}.pid"

    def pids(self) -> dict[str, int]:
        found = {}
        for process in PROCESSES:
            path = self.pid_file(process)
            if path.exists():
                found[process] = int(path.read_text())
        return found

    def ports(self) -> Ports:
        return Ports(**json.loads(self.ports_file.read_text()))

    # --- state -----------------------------------------------------------------------------------------

    def ready(self) -> bool:
        """Every process of this plane alive and the API server answering /readyz."""
        pids = self.pids()
        if set(pids) != set(self.processes) or not all(pid_alive(pid) for pid in pids.values()):
            return False
        return self.client().answers("/readyz")

    # --- start -----------------------------------------------------------------------------------------

    def start(self, nodes: Sequence[dict], objects: Sequence[dict], timeout: float = START_TIMEOUT_S) -> None:
        """Starts every process, then creates `nodes` (kwok fake nodes) and `objects` (StorageClass, PVs).

        Raises PlaneError when a port is taken or a process is not up within `timeout` seconds.
        """
        if self.binaries is None:
            raise ValueError("starting a plane needs its binaries")
        self.root.mkdir(parents=True, exist_ok=True)
        real = self._api_address is not None
        ports = Ports.free(self._api_address, pki.REAL_NODE_API_PORT) if real else Ports.free()
        self.ports_file.write_text(json.dumps(asdict(ports)))
        pki.create(self.pki, self.cluster, extra_ips=(ports.api_address,) if real else ())
        self._write_kubeconfig()
        started = time.monotonic()

        def left() -> float:
            return max(1.0, timeout - (time.monotonic() - started))

        self._spawn("etcd", [
            str(self.binaries.etcd), "--name", "etcd", "--data-dir", str(self.root / "etcd"),
            "--listen-client-urls", f"http://127.0.0.1:{ports.etcd_client}",
            "--advertise-client-urls", f"http://127.0.0.1:{ports.etcd_client}",
            "--listen-peer-urls", f"http://127.0.0.1:{ports.etcd_peer}",
            "--initial-advertise-peer-urls", f"http://127.0.0.1:{ports.etcd_peer}",
            "--initial-cluster", f"etcd=http://127.0.0.1:{ports.etcd_peer}",
            "--listen-metrics-urls", "", "--unsafe-no-fsync",  # throwaway test data: durability buys nothing
        ], (ports.etcd_client, ports.etcd_peer))
        if real:
            # Kubelets by address, never by name (a name would be looked up beyond this machine), with
            # a client certificate their webhook authorizer accepts; the `kubernetes` Service's endpoint
            # is the advertised address, which pods reach.
            node_flags = ["--kubelet-preferred-address-types=InternalIP",
                          f"--kubelet-client-certificate={self.pki.kubelet_client_cert}",
                          f"--kubelet-client-key={self.pki.kubelet_client_key}"]
        else:
            # A loopback advertise address cannot go into the `kubernetes` Endpoints.
            node_flags = ["--endpoint-reconciler-type=none"]
        self._spawn("kube-apiserver", [
            str(self.binaries.kube_apiserver), f"--etcd-servers=http://127.0.0.1:{ports.etcd_client}",
            f"--bind-address={ports.api_address}", f"--advertise-address={ports.api_address}",
            f"--secure-port={ports.api_server}",
            f"--tls-cert-file={self.pki.server_cert}", f"--tls-private-key-file={self.pki.server_key}",
            f"--client-ca-file={self.pki.ca_cert}",
            "--service-account-issuer=https://kubernetes.default.svc.cluster.local",
            f"--service-account-key-file={self.pki.service_account_public}",
            f"--service-account-signing-key-file={self.pki.service_account_key}",
            "--service-cluster-ip-range=10.96.0.0/16", "--authorization-mode=Node,RBAC",
            # Privileged pods are allowed cluster-wide, so only Pod Security admission can refuse them.
            "--allow-privileged=true",
            *node_flags, f"--cert-dir={self.root / 'apiserver-certs'}",
        ], (ports.api_server,), address=ports.api_address)
        client = self.client()
        self._await("kube-apiserver", lambda: client.answers("/readyz"), left())
        kubeconfig = str(self.kubeconfig)
        common = [f"--kubeconfig={kubeconfig}", f"--authentication-kubeconfig={kubeconfig}",
                  f"--authorization-kubeconfig={kubeconfig}", "--leader-elect=false", "--bind-address=127.0.0.1"]
        self._spawn("kube-controller-manager", [
            str(self.binaries.kube_controller_manager), *common, f"--secure-port={ports.controller_manager}",
            f"--service-account-private-key-file={self.pki.service_account_key}",
            f"--root-ca-file={self.pki.ca_cert}", f"--cluster-signing-cert-file={self.pki.ca_cert}",
            f"--cluster-signing-key-file={self.pki.ca_key}", "--use-service-account-credentials=true",
            "--controllers=*",
        ], (ports.controller_manager,))
        self._spawn("kube-scheduler", [
            str(self.binaries.kube_scheduler), *common, f"--secure-port={ports.scheduler}",
        ], (ports.scheduler,))
        if not real:
            self._spawn_kwok(ports)
        for obj in [*nodes, *objects]:
            client.create(obj)
        # The ServiceAccount controller has run once the default namespace has its ServiceAccount.
        self._await("kube-controller-manager", lambda: client.answers("/api/v1/namespaces/default/serviceaccounts/default"),
                    left())
        for node in nodes:
            name = node["metadata"]["name"]
            self._await("kwok", lambda name=name: client.node_ready(name), left())

    def _spawn_kwok(self, ports: Ports) -> None:
        self._spawn("kwok", [
            str(self.binaries.kwok), f"--kubeconfig={self.kubeconfig}", "--manage-all-nodes=false",
            "--manage-nodes-with-annotation-selector=kwok.x-k8s.io/node=fake",
            "--manage-nodes-with-label-selector=",
            "--disregard-status-with-annotation-selector=kwok.x-k8s.io/status=custom",
            "--disregard-status-with-label-selector=", "--cidr=10.244.0.1/16", "--node-ip=10.244.0.1",
            f"--server-address=127.0.0.1:{ports.kwok}", f"--config={KWOK_STAGES}",
        ], (ports.kwok,), env={"KUBE_FEATURE_WatchListClient": "false"})

    def _spawn(self, process: str, argv: list[str], ports: Sequence[int], env: dict[str, str] | None = None,
               address: str = "127.0.0.1") -> None:
        """Starts `argv` detached (its own session, a child of init, not of this Python) with its PID file.

        Detached because the plane outlives `make cluster`; the shell writes its own PID and then
        becomes the process (`exec`), so the PID file names exactly the server.
        """
        for port in ports:
            if port_taken(port, address):
                raise PlaneError(f"cluster {self.cluster}: port {port} on {address} is taken (needed by {process}); "
                                 "free it or run `make cluster` again for other ports")
        pid_file = self.pid_file(process)
        pid_file.unlink(missing_ok=True)
        with open(self.log(process), "ab") as log:
            subprocess.run(["setsid", "--fork", "sh", "-c", 'echo $$ > "$0.tmp" && mv "$0.tmp" "$0" && exec "$@"',
                            str(pid_file), *argv], stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                           env={**os.environ, **GO_RUNTIME, **(env or {})}, check=True)
        if not wait_until(pid_file.exists, 10, 0.02):
            raise PlaneError(f"cluster {self.cluster}: {process} did not start; see {self.log(process)}")

    def _await(self, process: str, check: Callable[[], bool], timeout: float) -> None:
        pid = self.pids()[process]
        if wait_until(lambda: check() or not pid_alive(pid), timeout) and pid_alive(pid):
            return
        state = "exited" if not pid_alive(pid) else f"not ready within {timeout:.0f} s"
        tail = self.log(process).read_text(errors="replace").splitlines()[-15:]
        self.stop()
        raise PlaneError(f"cluster {self.cluster}: {process} {state}; last lines of {self.log(process)}:\n"
                         + "\n".join(f"  {line}" for line in tail))

    def _write_kubeconfig(self) -> None:
        def b64(path: Path) -> str:
            return base64.b64encode(path.read_bytes()).decode()

        context = f"flowerbed-{self.cluster}"
        self.kubeconfig.write_text(yaml.safe_dump({
            "apiVersion": "v1", "kind": "Config", "current-context": context,
            "clusters": [{"name": context, "cluster": {
                "server": self.api_url, "certificate-authority-data": b64(self.pki.ca_cert)}}],
            "users": [{"name": f"{context}-admin", "user": {
                "client-certificate-data": b64(self.pki.admin_cert), "client-key-data": b64(self.pki.admin_key)}}],
            "contexts": [{"name": context, "context": {"cluster": context, "user": f"{context}-admin"}}],
        }, sort_keys=False))
        self.kubeconfig.chmod(0o600)

    def client(self) -> ApiClient:
        return ApiClient(self.api_url, self.pki)

    # --- stop ------------------------------------------------------------------------------------------

    def stop(self) -> list[str]:
        """Stops exactly the processes named by this plane's PID files (newest first); returns their names."""
        stopped = []
        for process, pid in self.pids().items():
            if pid_alive(pid) and _is_ours(pid, self.root):
                os.killpg(pid, signal.SIGTERM)
                if not wait_until(lambda pid=pid: not pid_alive(pid), 10, 0.1):
                    os.killpg(pid, signal.SIGKILL)
                    wait_until(lambda pid=pid: not pid_alive(pid), 5, 0.1)
                stopped.append(process)
            self.pid_file(process).unlink()
        return stopped


def _is_ours(pid: int, root: Path) -> bool:
    """A PID file can outlive its process and the PID be reused: only signal a process started for `root`."""
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace")
    except OSError:
        return False
    return str(root) in cmdline


class ApiClient:
    """The few admin calls the tool makes, over the plane's own TLS (no kubeconfig parsing, no kubectl)."""

    def __init__(self, url: str, files: pki.PlanePki) -> None:
        self.base = url
        self.context = ssl.create_default_context(cafile=str(files.ca_cert))
        self.context.load_cert_chain(str(files.admin_cert), str(files.admin_key))

    def request(self, method: str, path: str, body: dict | None = None) -> tuple[int, dict]:
        data = json.dumps(body).encode() if body is not None else None
        request = urllib.request.Request(self.base + path, data=data, method=method,
                                         headers={"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(request, context=self.context, timeout=10) as response:
                return response.status, _json(response.read())
        except urllib.error.HTTPError as err:
            return err.code, _json(err.read())
        except OSError:  # not listening (yet)
            return 0, {}

    def create(self, obj: dict) -> None:
        status, body = self.request("POST", collection_path(obj), obj)
        if status not in (200, 201, 409):  # 409: already there (a plane restarted on its old data)
            raise PlaneError(f"creating {obj['kind']} {obj['metadata']['name']}: {status} {body.get('message', '')}")

    def answers(self, path: str) -> bool:
        """GET `path` succeeds (an object exists, a health endpoint says ok)."""
        return self.request("GET", path)[0] == 200

    def node_ready(self, name: str) -> bool:
        status, node = self.request("GET", f"/api/v1/nodes/{name}")
        conditions = node.get("status", {}).get("conditions", []) if status == 200 else []
        return any(c.get("type") == "Ready" and c.get("status") == "True" for c in conditions)


def _json(raw: bytes) -> dict:
    """A response body as JSON; health endpoints answer plain text ("ok"), read as empty."""
    try:
        body = json.loads(raw or b"{}")
    except ValueError:
        return {}
    return body if isinstance(body, dict) else {}


def collection_path(obj: dict) -> str:
    """The REST collection a cluster-scoped object is created in (the kinds this tool creates)."""
    paths = {"Node": "/api/v1/nodes", "PersistentVolume": "/api/v1/persistentvolumes",
             "StorageClass": "/apis/storage.k8s.io/v1/storageclasses"}
    return paths[obj["kind"]]
