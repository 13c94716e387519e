"""The SuperLink pod's init container that backs up its database before another Flower release opens
it (the script: components/state_backup.py, mounted from a ConfigMap and run by the platform image)."""

from __future__ import annotations

from pathlib import Path

import pulumi
import pulumi_kubernetes as k8s

from components import kube
from components.config import Images

SCRIPT = Path(__file__).with_name("state_backup.py")
SCRIPT_CONFIG = "superlink-state-backup"
CONTAINER = "state-backup"

_SCRIPT_DIR = "/etc/flowerbed/state-backup"
# A copy of the database streams page by page (sqlite3's backup API): memory stays small.
_SIZING = kube.Sizing("50m", "128Mi", "1", "512Mi")


def command(database: str, action: str = "backup") -> list[str]:
    return ["python", f"{_SCRIPT_DIR}/{SCRIPT.name}", action, "--database", database]


def script_data() -> dict[str, str]:
    return {SCRIPT.name: SCRIPT.read_text()}


def declare(prefix: str, metadata: k8s.meta.v1.ObjectMetaArgs, opts: pulumi.ResourceOptions) -> k8s.core.v1.ConfigMap:
    """The script's ConfigMap."""
    return k8s.core.v1.ConfigMap(f"{prefix}-state-backup", metadata=metadata, data=script_data(), opts=opts)


def init_container(images: Images, database: str, state_mount: k8s.core.v1.VolumeMountArgs,
                   script_volume: str) -> k8s.core.v1.ContainerArgs:
    """Runs before the SuperLink container, on the same state volume, in the same image (so with the
    flwr the SuperLink is about to run); a database it cannot open stops the pod before SuperLink starts."""
    argv = command(database)
    return kube.container(CONTAINER, images.platform, images, command=argv[:1], args=argv[1:], sizing=_SIZING,
                          mounts=[state_mount, kube.mount(script_volume, _SCRIPT_DIR)])
