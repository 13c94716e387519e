"""`python -m federate --strategy fedbuff` with real processes: a slow site does not hold the others back."""

from __future__ import annotations

import json
import shutil
from collections import Counter
from pathlib import Path

import pytest

from federate.ports import free_port
from tests import slow_sites
from tests.federate.conftest import REPO, assert_nothing_left, free_port_run, run_federate_command

pytestmark = pytest.mark.e2e

SITES = ["fast-a", "fast-b", "slow-c"]
SLOW_SECONDS = 300  # slow-c's every training sleeps this long (tests/slow_sites.py)
UPDATES = 6
# The training app with slow-c slowed down: its ClientApp wrapped by tests/slow_sites.py, which travels in
# this app's bundle (the training app's own bundle carries no such hook).
SLOWED_CLIENT = f"""
from flowerbed_training.client.app import app as training_app
from slow_sites import slowed

app = slowed(training_app, {{"slow-c": {SLOW_SECONDS}}})
"""


def slowed_training_app(directory: Path) -> Path:
    """A copy of training/ whose ClientApp is `slowed_client:app`."""
    shutil.copytree(REPO / "training", directory, ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(slow_sites.__file__, directory / "slow_sites.py")
    (directory / "slowed_client.py").write_text(SLOWED_CLIENT.lstrip())
    pyproject = (directory / "pyproject.toml").read_text()
    for old, new in (('clientapp = "flowerbed_training.client.app:app"', 'clientapp = "slowed_client:app"'),
                     ('fab-include = ["flowerbed_training/**/*.py", "README.md"]',
                      'fab-include = ["flowerbed_training/**/*.py", "slow_sites.py", "slowed_client.py", "README.md"]')):
        assert old in pyproject, old
        pyproject = pyproject.replace(old, new)
    (directory / "pyproject.toml").write_text(pyproject)
    return directory


def test_fast_sites_keep_updating_the_model_while_the_slow_site_trains(tmp_path: Path) -> None:
    out = tmp_path / "out"
    app = slowed_training_app(tmp_path / "slowed-training")
    superlink, base = free_port(), free_port_run(len(SITES))
    done = run_federate_command(tmp_path, out, superlink, base, "--app", str(app), "--sites", ",".join(SITES),
                                "--strategy", "fedbuff", "--rounds", str(UPDATES), "--round-timeout", "600",
                                "-c", "async-buffer-size=2")
    assert done.returncode == 0, done.stderr

    [run] = [path for path in out.iterdir() if path.name.isdigit()]  # <out-dir>/<run-id>/, as for every strategy
    metrics = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [m["version"] for m in metrics] == list(range(1, UPDATES + 1))
    replies = Counter(reply["site"] for m in metrics for reply in m["replies"])
    # Two replies per server update; slow-c's first one takes SLOW_SECONDS (+ its start-up).
    assert replies["fast-a"] + replies["fast-b"] >= 2 * UPDATES - 1 and replies["slow-c"] <= 1, replies
    assert replies["fast-a"] >= 2 and replies["fast-b"] >= 2, replies
    summary = json.loads((run / "summary.json").read_text())
    # Synchronous rounds would each wait for slow-c: at least UPDATES x SLOW_SECONDS in all.
    assert summary["seconds"]["training"] < UPDATES * SLOW_SECONDS / 2, summary["seconds"]
    assert summary["strategy"] == "fedbuff" and summary["final_accuracy"] >= 0.8
    assert summary["status"] == "finished:completed"
    assert (run / "final_model.npz").exists() and (run / "checkpoints" / "latest.json").exists()
    assert_nothing_left(tmp_path, [superlink, *range(base, base + len(SITES))])
