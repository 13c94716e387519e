"""Checkpoints in the artifacts directory: `checkpoints/round-NNNN.npz` + `latest.json`.

Each checkpoint holds the global model (`model/<key>`) and the strategy's state
(`strategy/<group>/<key>`: SCAFFOLD's c, FedAdam's moments), written atomically
so that a server pod killed mid-write leaves the previous checkpoint usable.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from flowerbed_training.common.atomic_file import replacing

_MODEL, _STRATEGY = "model/", "strategy/"


@dataclass(frozen=True)
class Checkpoint:
    round: int
    model: dict[str, np.ndarray]
    strategy_state: dict[str, np.ndarray]


class CheckpointStore:
    def __init__(self, artifacts_dir: Path, keep: int = 3) -> None:
        self.directory = artifacts_dir / "checkpoints"
        self.keep = keep

    def save(self, checkpoint: Checkpoint) -> Path:
        self.directory.mkdir(parents=True, exist_ok=True)
        path = self.directory / f"round-{checkpoint.round:04d}.npz"
        arrays = {_MODEL + k: v for k, v in checkpoint.model.items()}
        arrays |= {_STRATEGY + k: v for k, v in checkpoint.strategy_state.items()}
        with replacing(path) as file:
            np.savez(file, **arrays)
        with replacing(self.directory / "latest.json") as file:
            file.write(json.dumps({"round": checkpoint.round, "file": path.name}).encode())
        for old in sorted(self.directory.glob("round-*.npz"))[: -self.keep]:
            old.unlink()
        return path

    def latest(self) -> Checkpoint | None:
        pointer = self.directory / "latest.json"
        if not pointer.exists():
            return None
        meta = json.loads(pointer.read_text())
        with np.load(self.directory / meta["file"]) as archive:
            model = {k[len(_MODEL):]: archive[k] for k in archive.files if k.startswith(_MODEL)}
            state = {k[len(_STRATEGY):]: archive[k] for k in archive.files if k.startswith(_STRATEGY)}
        return Checkpoint(round=int(meta["round"]), model=model, strategy_state=state)


def save_final_model(artifacts_dir: Path, model: dict[str, np.ndarray]) -> Path:
    path = artifacts_dir / "final_model.npz"
    with replacing(path) as file:
        np.savez(file, **model)
    return path
