"""The Flower App a run submits: its own run config, and which of flowerbed's extras it can have.

Any Flower App directory runs (Message API or the legacy NumPyClient/client_fn
style): federate submits it with `flwr run` and Flower does the rest. The
extras need something from the app, so each depends on what the app has:

- per-round progress lines, `report.png`: an app that declares `num-server-rounds`
  and either `artifacts-dir` (its ServerApp appends one JSON line per round to
  `<artifacts-dir>/metrics.jsonl`: `round`, `accuracy`, `loss`, `sites`) or, as
  `training/` does, `artifacts-root` (the same file in `<artifacts-root>/<run-id>/`);
- run-config validation before start-up, the centralized baseline and the
  local-run defaults (all sites sampled, a shorter round timeout): only
  flowerbed's own training app, whose package provides them.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from flwr.cli.build import build_fab_from_disk
from flwr.cli.config_utils import load_and_validate
from flwr.common.config import flatten_dict

TRAINING_PACKAGE = "flowerbed_training"
ROUNDS_KEY = "num-server-rounds"
SHARED_DIR_KEY = "artifacts-dir"  # metrics.jsonl in <artifacts-dir>/
PER_RUN_ROOT_KEY = "artifacts-root"  # metrics.jsonl in <artifacts-root>/<run-id>/ (training/)


@dataclass(frozen=True)
class FlowerApp:
    directory: Path
    run_config: dict[str, Any]  # `[tool.flwr.app.config]`, flattened: the app's defaults
    components: dict[str, str]  # `[tool.flwr.app.components]`: serverapp, clientapp

    @classmethod
    def load(cls, directory: Path) -> FlowerApp:
        """Read `pyproject.toml` and bundle the app as `flwr run` will, with Flower's own functions,
        so that an app Flower would refuse fails in seconds, before any process starts."""
        directory = directory.resolve()
        if not (directory / "pyproject.toml").is_file():
            raise ValueError(f"--app: {directory} has no pyproject.toml; a Flower App directory needs one")
        config, _ = load_and_validate(directory / "pyproject.toml")  # `flwr run` prints the warnings
        build_fab_from_disk(directory)  # include/exclude rules, size limit
        app = config["tool"]["flwr"]["app"]
        return cls(directory, dict(flatten_dict(app.get("config", {}))), dict(app.get("components", {})))

    @property
    def name(self) -> str:
        return self.directory.name

    @property
    def pyproject(self) -> Path:
        return self.directory / "pyproject.toml"

    @property
    def is_training(self) -> bool:
        """flowerbed's training app (or a copy of it): its ServerApp lives in `flowerbed_training`."""
        return self.components.get("serverapp", "").startswith(f"{TRAINING_PACKAGE}.")

    @property
    def artifacts_key(self) -> str | None:
        """The run-config key federate points at --out-dir: `artifacts-root` (a directory per run) or `artifacts-dir`."""
        return next((key for key in (PER_RUN_ROOT_KEY, SHARED_DIR_KEY) if key in self.run_config), None)

    @property
    def reports_metrics(self) -> bool:
        return not self.missing_metrics_keys()

    def missing_metrics_keys(self) -> list[str]:
        missing = [] if self.artifacts_key else [SHARED_DIR_KEY]
        return missing + ([] if ROUNDS_KEY in self.run_config else [ROUNDS_KEY])

    def results_dir(self, out_dir: Path, run_id: str) -> Path:
        """Where the run's metrics.jsonl (and federate's summary.json, report.png) are."""
        return out_dir / run_id if self.artifacts_key == PER_RUN_ROOT_KEY else out_dir
