"""The site's node config (`flower-supernode --node-config`), read in one place.

Only per-site facts: the site's name, where its study data and its state live, its
device, and the federation's name that keys its state. Keys and meanings:
training/README.md, "Node config"; the platform writes them (components/naming.py).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from flwr.app import Context


@dataclass(frozen=True)
class NodeConfig:
    name: str  # `site-name`; `node-<id>` for a node without one (as the server names it)
    data_root: Path  # `data-root`: study data is read from <data-root>/<study>/<dataset>
    device: str  # `device`: auto (the pod's GPU when it has one), cpu, cuda, cuda:<n> (common/task.py: device)
    state_dir: Path | None  # `state-dir`: the site's state volume; None: state stays in memory
    federation: str | None  # `federation`: keys the state under state-dir (client/site_state.py)

    @staticmethod
    def of(context: Context) -> NodeConfig:
        return NodeConfig.parse(context.node_config, context.node_id)

    @staticmethod
    def parse(node: Mapping[str, Any], node_id: int = 0) -> NodeConfig:
        return NodeConfig(
            name=str(node.get("site-name", f"node-{node_id}")),
            data_root=Path(str(node.get("data-root", "/data"))),
            device=str(node.get("device", "auto")),
            state_dir=Path(str(node["state-dir"])) if "state-dir" in node else None,
            federation=str(node["federation"]) if "federation" in node else None,
        )
