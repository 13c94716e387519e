"""Run a container of a rendered manifest the way a kubelet would, with runc, from the buildah store.

A `Sandbox` is a pod's network: a network namespace of the test's own (loopback only) with an
/etc/hosts that sends the Services' names to it, as a Service would; `Sandbox.run` starts one
container of a pod template exactly as the manifest says: its command and arguments, its
environment over the image's, its volumes (Secrets and ConfigMaps from the rendered objects,
emptyDirs, a directory per claim) at its mount paths, read-only where the manifest says, as the
manifest's uid/gid with the pod's fsGroup, a read-only root filesystem when the manifest asks for
one, no capabilities and no new privileges; where the pod's ServiceAccount mounts a token, the
files and variables the kubelet gives it (the token a placeholder: no API server runs here).
"""

from __future__ import annotations

import base64
import json
import os
import shutil
import signal
import subprocess
import uuid
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tools.images import buildah

RUNC_ROOT = Path("/run/flowerbed-image-tests")
SERVICE_ACCOUNT_DIR = "/var/run/secrets/kubernetes.io/serviceaccount"


@dataclass
class Running:
    """One container started by runc, its rootfs held by a buildah working container."""

    id: str
    name: str
    process: subprocess.Popen
    log: Path
    working_container: str
    bundle: Path

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def exited(self) -> int | None:
        return self.process.poll()


@dataclass
class Sandbox:
    """A pod network (its own namespace, loopback only) and the rendered objects its volumes come from."""

    root: Path
    objects: list[dict[str, Any]]
    hosts: Iterable[str] = ()
    netns: str = field(default_factory=lambda: f"fbimg-{uuid.uuid4().hex[:8]}")
    running: list[Running] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        subprocess.run(["ip", "netns", "add", self.netns], check=True)
        self.exec("ip", "link", "set", "lo", "up")
        (self.root / "hosts").write_text("127.0.0.1 localhost\n" + "".join(f"127.0.0.1 {h}\n" for h in self.hosts))
        (self.root / "resolv.conf").write_text("")  # no DNS: every name the pods use is in /etc/hosts

    def exec(self, *argv: str, check: bool = True, timeout: float = 60) -> subprocess.CompletedProcess:
        """`argv` on this machine, in the sandbox's network namespace only."""
        return subprocess.run(["nsenter", f"--net=/run/netns/{self.netns}", "--", *argv], capture_output=True,
                              text=True, check=check, timeout=timeout)

    def redirect(self, port: int, to_port: int) -> None:
        """What a Service's port mapping does: `port` on loopback reaches `to_port`."""
        self.exec("iptables", "-t", "nat", "-A", "OUTPUT", "-o", "lo", "-p", "tcp", "--dport", str(port),
                  "-j", "REDIRECT", "--to-ports", str(to_port))

    # --- containers -----------------------------------------------------------------------------------

    def run(self, image: str, pod: Mapping[str, Any], container: str, *, namespace: str) -> Running:
        """Starts `container` (or init container) of the pod template spec `pod` (from a rendered Deployment or Job)."""
        spec = next(c for c in [*(pod.get("initContainers") or []), *pod["containers"]] if c["name"] == container)
        pod_context = pod.get("securityContext") or {}
        context = {**pod_context, **(spec.get("securityContext") or {})}
        config = json.loads(buildah.buildah("inspect", "--type", "image", image).stdout)["Docker"]["config"]
        working = buildah.buildah("from", "--pull=never", image).stdout.strip()
        rootfs = buildah.buildah("mount", working).stdout.strip()
        cid = f"{container}-{uuid.uuid4().hex[:6]}"
        bundle = self.root / cid
        bundle.mkdir()
        volumes = {v["name"]: v for v in pod.get("volumes") or []}
        fs_group = pod_context.get("fsGroup")
        mounts = [{"destination": "/etc/hosts", "type": "bind", "source": str(self.root / "hosts"),
                   "options": ["rbind", "ro"]},
                  {"destination": "/etc/resolv.conf", "type": "bind", "source": str(self.root / "resolv.conf"),
                   "options": ["rbind", "ro"]}]
        for mount in spec.get("volumeMounts") or []:
            source = self._volume(volumes[mount["name"]], namespace, fs_group)
            mounts.append({"destination": mount["mountPath"], "type": "bind", "source": str(source),
                           "options": ["rbind", "ro" if mount.get("readOnly") else "rw"]})
        env = dict(item.split("=", 1) for item in config.get("Env") or [])
        env.update({e["name"]: e["value"] for e in spec.get("env") or []})
        if self._mounts_token(pod, namespace):
            mounts.append({"destination": SERVICE_ACCOUNT_DIR, "type": "bind", "options": ["rbind", "ro"],
                           "source": str(self._service_account_volume(namespace))})
            env.update(KUBERNETES_SERVICE_HOST="127.0.0.1", KUBERNETES_SERVICE_PORT="443")
        args = [*(spec.get("command") or config.get("Entrypoint") or []),
                *(spec.get("args") if spec.get("args") is not None else (config.get("Cmd") or []))]
        runc_config = _spec(bundle, rootfs, args, env, config.get("WorkingDir") or "/", context, fs_group,
                            mounts, self.netns, cid)
        (bundle / "config.json").write_text(json.dumps(runc_config))
        log = bundle / "output.log"
        RUNC_ROOT.mkdir(parents=True, exist_ok=True)
        with open(log, "wb") as out:
            process = subprocess.Popen(["runc", "--root", str(RUNC_ROOT), "run", "--bundle", str(bundle), cid],
                                       stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT)
        running = Running(cid, container, process, log, working, bundle)
        self.running.append(running)
        return running

    def wait(self, running: Running, timeout: float) -> int:
        try:
            return running.process.wait(timeout)
        except subprocess.TimeoutExpired:
            raise AssertionError(f"{running.name} did not exit within {timeout:.0f} s:\n{running.output()[-3000:]}") \
                from None

    def _mounts_token(self, pod: Mapping[str, Any], namespace: str) -> bool:
        """Whether the kubelet would mount a ServiceAccount token: the pod's say, else its ServiceAccount's."""
        if "automountServiceAccountToken" in pod:
            return bool(pod["automountServiceAccountToken"])
        account = next((o for o in self.objects if o["kind"] == "ServiceAccount" and o["metadata"].get("namespace")
                        == namespace and o["metadata"]["name"] == pod.get("serviceAccountName", "default")), {})
        return account.get("automountServiceAccountToken", True)

    def _service_account_volume(self, namespace: str) -> Path:
        """What the kubelet mounts for a ServiceAccount token (no API server here: a placeholder token;
        clients load the files at start and only use them to call the API)."""
        directory = self.root / "volumes" / namespace / "serviceaccount"
        directory.mkdir(parents=True, exist_ok=True)
        ca = next(o for o in self.objects if o["kind"] == "Secret" and o["metadata"].get("namespace") == namespace
                  and "ca.crt" in (o.get("data") or {}))
        for name, content in (("token", b"no-api-server-in-this-test"), ("namespace", namespace.encode()),
                              ("ca.crt", base64.b64decode(ca["data"]["ca.crt"]))):
            (directory / name).write_bytes(content)
            (directory / name).chmod(0o644)
        return directory

    def _volume(self, volume: Mapping[str, Any], namespace: str, fs_group: int | None) -> Path:
        """A directory holding what the kubelet would put into this volume."""
        directory = self.root / "volumes" / namespace / volume["name"]
        if directory.exists():
            return directory
        directory.mkdir(parents=True)
        files: dict[str, bytes] = {}
        mode = 0o644
        if "secret" in volume:
            files = self._data("Secret", volume["secret"]["secretName"], namespace)
            mode = volume["secret"].get("defaultMode", mode)
        elif "configMap" in volume:
            files = self._data("ConfigMap", volume["configMap"]["name"], namespace)
            mode = volume["configMap"].get("defaultMode", mode)
        elif "projected" in volume:
            for source in volume["projected"]["sources"]:
                kind, ref = ("ConfigMap", source["configMap"]) if "configMap" in source else ("Secret", source["secret"])
                files.update(self._data(kind, ref["name"], namespace))
            mode = volume["projected"].get("defaultMode", mode)
        elif not ("emptyDir" in volume or "persistentVolumeClaim" in volume):
            raise AssertionError(f"volume {volume['name']}: kind not supported by this test runner")
        for name, content in files.items():
            path = directory / name
            path.write_bytes(content)
            path.chmod(mode)
            os.chown(path, 0, fs_group if fs_group is not None else 0)
        # emptyDir: world-writable as the kubelet makes it; a claim: group-owned by fsGroup, setgid.
        if files:
            directory.chmod(0o755)
        elif "emptyDir" in volume:
            directory.chmod(0o1777)
        else:
            os.chown(directory, 0, fs_group if fs_group is not None else 0)
            directory.chmod(0o2775)
        return directory

    def _data(self, kind: str, name: str, namespace: str) -> dict[str, bytes]:
        obj = next((o for o in self.objects if o["kind"] == kind and o["metadata"]["name"] == name
                    and o["metadata"].get("namespace") == namespace), None)
        assert obj is not None, f"{kind} {namespace}/{name}: not among the rendered objects"
        files = {k: base64.b64decode(v) for k, v in (obj.get("data") or {}).items()} if kind == "Secret" else \
            {k: v.encode() for k, v in (obj.get("data") or {}).items()}
        files.update({k: v.encode() for k, v in (obj.get("stringData") or {}).items()})
        return files

    # --- teardown -------------------------------------------------------------------------------------

    def close(self) -> None:
        """Stops every container, releases its rootfs, deletes the namespace: nothing is left."""
        for running in self.running:
            subprocess.run(["runc", "--root", str(RUNC_ROOT), "kill", running.id, "KILL"], capture_output=True)
            try:
                running.process.wait(10)
            except subprocess.TimeoutExpired:
                running.process.send_signal(signal.SIGKILL)
                running.process.wait(5)
            subprocess.run(["runc", "--root", str(RUNC_ROOT), "delete", "--force", running.id], capture_output=True)
            buildah.buildah("umount", running.working_container, check=False)
            buildah.buildah("rm", running.working_container, check=False)
        self.running.clear()
        subprocess.run(["ip", "netns", "delete", self.netns], capture_output=True)
        shutil.rmtree(self.root, ignore_errors=True)
        for parent in Path("/sys/fs/cgroup").glob("*/flowerbed-image-tests"):
            if not any(p.is_dir() for p in parent.iterdir()):
                parent.rmdir()
        if RUNC_ROOT.exists() and not any(RUNC_ROOT.iterdir()):
            RUNC_ROOT.rmdir()


def _spec(bundle: Path, rootfs: str, args: list[str], env: dict[str, str], cwd: str, context: Mapping[str, Any],
          fs_group: int | None, mounts: list[dict], netns: str, cid: str) -> dict[str, Any]:
    """runc's default spec (`runc spec`), changed as the container's manifest and security context say."""
    subprocess.run(["runc", "spec", "--bundle", str(bundle)], check=True)
    spec = json.loads((bundle / "config.json").read_text())
    uid = context.get("runAsUser", 0)
    gid = context.get("runAsGroup", 0)
    capabilities = sorted(set(context.get("capabilities", {}).get("add") or []))
    if "ALL" not in (context.get("capabilities", {}).get("drop") or []):
        raise AssertionError(f"{cid}: a container that keeps Linux capabilities (the components drop ALL)")
    caps = [f"CAP_{c}" for c in capabilities]
    spec["root"] = {"path": rootfs, "readonly": bool(context.get("readOnlyRootFilesystem"))}
    spec["hostname"] = cid
    spec["process"].update(
        terminal=False, args=args, cwd=cwd, env=[f"{k}={v}" for k, v in env.items()],
        user={"uid": uid, "gid": gid, **({"additionalGids": [fs_group]} if fs_group is not None else {})},
        capabilities={"bounding": caps, "effective": caps, "permitted": caps, "ambient": caps},
        noNewPrivileges=context.get("allowPrivilegeEscalation") is False)
    spec["mounts"] += mounts
    spec["linux"]["namespaces"] = [n for n in spec["linux"]["namespaces"] if n["type"] != "network"] + [
        {"type": "network", "path": f"/run/netns/{netns}"}]
    spec["linux"]["cgroupsPath"] = f"/flowerbed-image-tests/{cid}"
    return spec


