"""A deployed stack as day-2 tools see it: its validated config, its outputs, kubectl per cluster,
and short-lived Pod-Security-restricted pods that mount one of its volumes.

Works for any stack whose clusters are live (`kubeconfig` set), local or not: the kubeconfigs are
read from the stack's own config (secrets, decrypted by the stack's passphrase, as `pulumi up`
does), never from the environment.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import tempfile
import time
import uuid
import weakref
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from components import hardening, naming
from components.config import ClusterConfig, ConfigError, FederationConfig, parse
from components.flower_release import stand_in_image
from tools.engine.offline import Pulumi

POD_START_TIMEOUT_S = 180


class OpsError(RuntimeError):
    """Bad input or a stack that cannot do what was asked; one line."""


@dataclass
class Kubectl:
    """kubectl with one cluster's kubeconfig (a private temporary file) and context."""

    kubeconfig: Path
    context: str | None = None

    def argv(self, *args: str) -> list[str]:
        return ["kubectl", "--kubeconfig", str(self.kubeconfig), *(["--context", self.context] if self.context else []),
                *args]

    def run(self, *args: str, stdin: bytes | str | None = None, check: bool = True,
            timeout: float = 120) -> subprocess.CompletedProcess:
        result = subprocess.run(self.argv(*args), input=stdin, capture_output=True, timeout=timeout,
                                text=not isinstance(stdin, bytes))
        if check and result.returncode != 0:
            error = result.stderr if isinstance(result.stderr, str) else result.stderr.decode(errors="replace")
            raise OpsError(f"kubectl {' '.join(args[:3])}: {error.strip()}")
        return result

    def json(self, *args: str) -> dict[str, Any]:
        return json.loads(self.run(*args, "-o", "json").stdout)


@dataclass
class Deployment:
    """One stack of this project (`Pulumi.<stack>.yaml`), deployed with `make up`."""

    project: Path
    stack: str
    # The clusters' kubeconfigs while the tool runs (mode 0600), removed when the Deployment is collected
    # or the interpreter exits; a finalizer rather than TemporaryDirectory, which warns (ResourceWarning)
    # whenever it is cleaned up implicitly.
    _scratch: Path = field(default_factory=lambda: Path(tempfile.mkdtemp(prefix="flowerbed-ops-")))

    def __post_init__(self) -> None:
        weakref.finalize(self, shutil.rmtree, self._scratch, True)

    @property
    def pulumi(self) -> Pulumi:
        return Pulumi(self.project, self.stack)

    def config(self, images: str | None = None) -> FederationConfig:
        """The stack's config; `images`: a stand-in for both images, for tools that take them from the
        live objects instead (the stack may name images of a release this checkout refuses)."""
        if not (self.project / f"Pulumi.{self.stack}.yaml").exists():
            raise OpsError(f"no stack file Pulumi.{self.stack}.yaml in {self.project}")
        self.pulumi.select_or_init()
        shown = self.pulumi.run(["config", "--json", "--show-secrets"], capture=True, check=False)
        if shown.returncode != 0:
            raise OpsError(f"stack {self.stack}: cannot read its config: {shown.stderr.strip()}")
        raw = {key.removeprefix("flowerbed:"): _value(entry) for key, entry in json.loads(shown.stdout).items()
               if key.startswith("flowerbed:")}
        if images is not None and isinstance(raw.get("images"), dict):
            raw["images"] = {**raw["images"], "platform": images, "job": images}
        try:
            config = parse(raw)
        except ConfigError as err:
            raise OpsError(f"stack {self.stack}: {err}") from None
        rendered = sorted(c.name for c in config.clusters.values() if c.render_dir is not None)
        if rendered:
            raise OpsError(f"stack {self.stack}: cluster {rendered[0]} is in render mode (renderDir): nothing runs "
                           "there; use a stack whose clusters are live (make cluster STACK=pods, or your own)")
        return config

    def live_config(self) -> FederationConfig:
        """The config for tools that take the images from the live objects (`live_platform_image`):
        mid-upgrade, or still on an older release, the stack may name images this checkout refuses."""
        return self.config(images=stand_in_image("set-by-the-live-deployment"))

    def outputs(self) -> dict[str, Any]:
        shown = self.pulumi.run(["stack", "output", "--json", "--show-secrets"], capture=True, check=False)
        outputs = json.loads(shown.stdout) if shown.returncode == 0 and shown.stdout.strip() else {}
        if not outputs:
            raise OpsError(f"stack {self.stack} has no outputs: deploy it first (make up STACK={self.stack})")
        return outputs

    def kubectl(self, cluster: ClusterConfig) -> Kubectl:
        path = self._scratch / f"{cluster.name}.kubeconfig"
        path.write_text(cluster.kubeconfig or "")
        path.chmod(0o600)
        return Kubectl(path, cluster.context)


def live_platform_image(kubectl: Kubectl, namespace: str) -> str:
    """The platform image the SuperLink Deployment runs now: what a tool's own pods run, whatever the
    stack config names (mid-upgrade it may name the next release's images, or an older release's that
    this checkout refuses)."""
    deployment = kubectl.json("get", "deployment", naming.SUPERLINK, "-n", namespace)
    return next(c["image"] for c in deployment["spec"]["template"]["spec"]["containers"] if c["name"] == "superlink")


def _value(entry: Mapping[str, Any]) -> Any:
    """`pulumi config --json` gives each value as text, with `objectValue` for structured ones."""
    if "objectValue" in entry:
        return entry["objectValue"]
    return entry.get("value")


def fake_nodes(kubectl: Kubectl) -> list[str]:
    """The cluster's nodes that kwok simulates (annotation `kwok.x-k8s.io/node: fake`): they run nothing."""
    nodes = kubectl.json("get", "nodes")["items"]
    return [n["metadata"]["name"] for n in nodes
            if (n["metadata"].get("annotations") or {}).get("kwok.x-k8s.io/node") == "fake"]


def require_real_nodes(kubectl: Kubectl, cluster: str, what: str) -> None:
    fake = fake_nodes(kubectl)
    if fake and len(fake) == len(kubectl.json("get", "nodes")["items"]):
        raise OpsError(f"cluster {cluster} has only kwok's fake nodes ({', '.join(fake)}), which run no container, "
                       f"so {what}; use a stack with real nodes (make cluster STACK=pods)")


@contextmanager
def volume_pod(kubectl: Kubectl, namespace: str, claim: str, image: str, pull_secrets: tuple[str, ...],
               *, read_only: bool, role: str) -> Iterator[str]:
    """A pod in `namespace` that mounts `claim` at /volume and idles, hardened as Pod Security
    `restricted` requires (the platform image: sh, tar and Python); deleted on the way out."""
    name = f"flowerbed-{role}-{uuid.uuid4().hex[:6]}"
    container_context = hardening.container_security_context()
    pod = {
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": name, "namespace": namespace, "labels": {hardening.ROLE_LABEL: role}},
        "spec": {
            "restartPolicy": "Never", "automountServiceAccountToken": False,
            # A backstop: the pod goes away on its own within the hour even if this tool is killed.
            "activeDeadlineSeconds": 3600, "terminationGracePeriodSeconds": 0,
            "securityContext": hardening.pod_security_context(),
            "imagePullSecrets": [{"name": s} for s in pull_secrets],
            "containers": [{
                "name": role, "image": image, "command": ["sleep", "3600"],
                "securityContext": container_context,
                "resources": {"requests": {"cpu": "50m", "memory": "64Mi"}, "limits": {"cpu": "500m", "memory": "256Mi"}},
                "volumeMounts": [{"name": "volume", "mountPath": "/volume", "readOnly": read_only},
                                 {"name": "tmp", "mountPath": "/tmp"}]}],
            "volumes": [{"name": "volume", "persistentVolumeClaim": {"claimName": claim, "readOnly": read_only}},
                        {"name": "tmp", "emptyDir": {"sizeLimit": "1Gi"}}],
        },
    }
    kubectl.run("apply", "-f", "-", stdin=json.dumps(pod))
    try:
        deadline = time.monotonic() + POD_START_TIMEOUT_S
        while True:
            status = kubectl.json("get", "pod", name, "-n", namespace).get("status", {})
            if status.get("phase") == "Running":
                break
            waiting = [c["state"]["waiting"] for c in status.get("containerStatuses") or []
                       if c.get("state", {}).get("waiting")]
            if waiting and waiting[0].get("reason") in ("ErrImagePull", "ImagePullBackOff", "CreateContainerError"):
                raise OpsError(f"pod {namespace}/{name}: {waiting[0]['reason']}: {waiting[0].get('message', '')}")
            if time.monotonic() > deadline:
                raise OpsError(f"pod {namespace}/{name} not running within {POD_START_TIMEOUT_S} s "
                               f"(phase {status.get('phase')}; kubectl -n {namespace} describe pod {name})")
            time.sleep(0.5)
        yield name
    finally:
        kubectl.run("delete", "pod", name, "-n", namespace, "--grace-period=0", "--wait=false", check=False)
