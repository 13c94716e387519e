"""The image registry real nodes pull from: Debian's docker-registry (Distribution 2.8), on the host's
address of the stack's bridge, over plain HTTP, its storage in the cache.

Nodes pull as production nodes do (image pull policy, pull errors and all) and, because the
storage outlives the clusters, a `make cluster` after a change under training/ sends only the
layers that changed; an unchanged image is not sent at all. The images are tagged with their
image ID, so a changed image is a new tag and `pulumi up` rolls exactly the pods that run it.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import yaml

from components.flower_release import release_of, tag_suffix
from tools.images import buildah
from tools.live.build import KUBERNETES_VERSION, NodeBinaries, COREDNS_VERSION
from tools.live.network import Network
from tools.live.node import InfraImages
from tools.live.plane import PlaneError, pid_alive, wait_until

STORAGE = buildah.CACHE.parent / "registry"


class RegistryError(PlaneError):
    """The registry did not start, or an image could not be sent to it; one line."""


@dataclass(frozen=True)
class Registry:
    """The registry process of one stack's node network, with its PID file and log in `root`."""

    network: Network
    root: Path

    @property
    def address(self) -> str:
        return self.network.registry

    @property
    def pid_file(self) -> Path:
        return self.root / "registry.pid"

    def answers(self) -> bool:
        try:
            with urllib.request.urlopen(f"http://{self.address}/v2/", timeout=2) as response:
                return response.status == 200
        except (urllib.error.URLError, OSError):
            return False

    def start(self) -> None:
        if self.pid_file.exists() and pid_alive(int(self.pid_file.read_text())) and self.answers():
            return
        STORAGE.mkdir(parents=True, exist_ok=True)
        self.root.mkdir(parents=True, exist_ok=True)
        config = self.root / "registry.yaml"
        config.write_text(yaml.safe_dump({
            "version": 0.1, "log": {"level": "warn", "accesslog": {"disabled": True}},
            "storage": {"filesystem": {"rootdirectory": str(STORAGE)}, "delete": {"enabled": True}},
            "http": {"addr": self.address}}))
        with open(self.root / "registry.log", "ab") as log:
            subprocess.run(["setsid", "--fork", "sh", "-c", 'echo $$ > "$0" && exec "$@"', str(self.pid_file),
                            "docker-registry", "serve", str(config)], stdin=subprocess.DEVNULL, stdout=log,
                           stderr=subprocess.STDOUT, check=True)
        if not wait_until(self.answers, 20, 0.1):
            raise RegistryError(f"the image registry on {self.address} did not answer; see {self.root / 'registry.log'}")

    def stop(self) -> bool:
        if not self.pid_file.exists():
            return False
        pid = int(self.pid_file.read_text())
        self.pid_file.unlink()
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes() if Path(f"/proc/{pid}/cmdline").exists() else b""
        if pid_alive(pid) and str(self.root).encode() in cmdline:
            os.kill(pid, signal.SIGTERM)
            wait_until(lambda: not pid_alive(pid), 10, 0.1)
            return True
        return False

    def publish(self, image: str, repository: str) -> str:
        """Sends `image` (in the buildah store) as `<registry>/<repository>:i<its image ID>-flwr<release>`
        (the release its own tag names); returns that name."""
        release = release_of(image)
        name = f"{self.address}/{repository}:i{buildah.image_id(image)[:16]}{tag_suffix(release) if release else ''}"
        buildah.push(image, f"docker://{name}", insecure=True)
        return name

    def infra_images(self, binaries: NodeBinaries) -> InfraImages:
        """The pause and CoreDNS images, each one static binary in an empty image, made once and sent."""
        pause = self._single_binary("pause", KUBERNETES_VERSION, binaries.pause, ["/pause"], "65535:65535")
        coredns = self._single_binary("coredns", COREDNS_VERSION, binaries.coredns, ["/coredns"], "65532:65532")
        return InfraImages(pause=pause, coredns=coredns)

    def _single_binary(self, name: str, version: str, binary: Path, entrypoint: list[str], user: str) -> str:
        local = f"localhost/flowerbed/{name}:{version}"
        with buildah.store_lock():
            if buildah.image_id(local) is None:
                container = buildah.buildah("from", "scratch").stdout.strip()
                try:
                    buildah.buildah("copy", container, str(binary), entrypoint[0])
                    buildah.buildah("config", "--entrypoint", json.dumps(entrypoint), "--user", user, container)
                    buildah.buildah("commit", "--quiet", container, local)
                finally:
                    buildah.buildah("rm", container, check=False)
            remote = f"{self.address}/flowerbed/{name}:{version}"
            buildah.push(local, f"docker://{remote}", insecure=True)
        return remote
