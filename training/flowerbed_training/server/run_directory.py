"""One directory per run: `<artifacts-root>/<run-id>/`, and the run that `resume` names.

A run writes only into its own directory (metrics.jsonl, checkpoints/,
final_model.npz, summary.json, report.png), so runs side by side never touch
each other's files. A resumed run reads the named run's latest checkpoint and
copies its metrics lines up to that round, then carries on in its own directory.
"""

from __future__ import annotations

import json
from pathlib import Path

from flowerbed_training.common.run_config import RunConfig, RunConfigError
from flowerbed_training.server.checkpoints import Checkpoint, CheckpointStore
from flowerbed_training.server.round_log import append_metrics, read_metrics

LATEST = "latest"
RUN_RECORD = "run.json"  # {"lineage": <first run id of this chain of resumes>}


def run_directory(config: RunConfig, run_id: int) -> Path:
    return Path(config.artifacts_root) / str(run_id)


def resumed_run(config: RunConfig, run_id: int) -> Path | None:
    """The directory of the run that `resume` names; None for a fresh run.

    `latest`: the other run whose newest checkpoint was written last (None when
    there is none yet, so `resume = "latest"` also starts the first run). A run id:
    that run, which must have a checkpoint (RunConfigError otherwise)."""
    if not config.resume:
        return None
    root = Path(config.artifacts_root)
    if config.resume == LATEST:
        pointers = [p for p in root.glob("*/checkpoints/latest.json") if p.parent.parent.name != str(run_id)]
        return max(pointers, key=lambda p: p.stat().st_mtime).parent.parent if pointers else None
    named = root / config.resume
    if CheckpointStore(named).latest() is None:
        raise RunConfigError(f"run config resume: run {config.resume} has no checkpoint under {named}; "
                             f"runs with one: {', '.join(runs_with_checkpoints(root)) or 'none'}")
    return named


def runs_with_checkpoints(root: Path) -> list[str]:
    return sorted(p.parent.parent.name for p in root.glob("*/checkpoints/latest.json"))


def lineage(directory: Path, previous: Path | None, run_id: int) -> int:
    """This run's lineage (its own id, or the lineage of the run it resumes), recorded in run.json."""
    if previous is None:
        value = run_id
    elif (previous / RUN_RECORD).exists():
        value = json.loads((previous / RUN_RECORD).read_text())["lineage"]
    else:  # written before run.json existed: it started its own lineage
        value = int(previous.name)
    directory.mkdir(parents=True, exist_ok=True)
    (directory / RUN_RECORD).write_text(json.dumps({"lineage": value}))
    return int(value)


def continue_from(previous: Path, directory: Path) -> Checkpoint:
    """The previous run's latest checkpoint; its metrics lines up to that round start this run's metrics.jsonl."""
    checkpoint = CheckpointStore(previous).latest()
    if checkpoint is None:
        raise RunConfigError(f"run config resume: {previous} has no checkpoint")
    directory.mkdir(parents=True, exist_ok=True)
    for line in read_metrics(previous):
        if line["round"] <= checkpoint.round:
            append_metrics(directory, line)
    return checkpoint
