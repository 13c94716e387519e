"""The SuperLink's database across Flower releases, on real pods (README: Upgrading Flower).

The state volume holds the database and, beside it, the release that last opened it. The test
marks the database as Flower 1.41.0's (what the previous flowerbed release's SuperLink leaves: the
same schema but one revision) and restarts SuperLink: its init container backs the database up under
that release before Flower 1.42.0 opens it, and the run history is all still there. A new run trains.
Then `make restore-state` puts that backup back: the run made since is gone from the history again
(what a rollback gives), the database it replaced is kept, and SuperLink runs again.
"""

from __future__ import annotations

import re
import tempfile
from pathlib import Path

import pytest

from components.flower_release import FLOWER_RELEASE
from components.state_backup import BACKUPS, RELEASE_SUFFIX
from federate.flwr_cli import FlwrCli
from tests.live.conftest import say
from tests.pods.conftest import DATASET, FEDERATION, SERVER_NS, SITES, TRAINING_APP, PodsStack, volume_path, wait_for
from tools.ops.run import port_forward, run
from tools.ops.state import restore

pytestmark = pytest.mark.pods

PREVIOUS_RELEASE = "1.41.0"


def run_history(pods: PodsStack) -> dict[str, str]:
    """run ID -> status, as `flwr ls` lists them through the Control API."""
    deployment = pods.deployment()
    config = deployment.config()
    with tempfile.TemporaryDirectory(prefix="flowerbed-ls-") as tmp, \
            port_forward(deployment.kubectl(config.clusters[config.server.cluster]), SERVER_NS,
                         Path(tmp) / "port-forward.log") as forward:
        ca = Path(tmp) / "ca.crt"
        ca.write_text(deployment.outputs()["caCertificate"])
        cli = FlwrCli.configure(Path(tmp) / "flwr-home", FEDERATION, f"localhost:{forward.port}", ca)
        return {run["run-id"]: run["status"] for run in cli.json("ls")["runs"]}


def superlink_pod(pods: PodsStack) -> dict | None:
    """The SuperLink pod once it is Ready (None before)."""
    for pod in pods.kubectl("hub").items("pods", SERVER_NS):
        ready = any(c["type"] == "Ready" and c["status"] == "True" for c in pod["status"].get("conditions") or [])
        if pod["metadata"]["labels"].get("flowerbed.dev/role") == "superlink" and ready:
            return pod
    return None


def init_log(pods: PodsStack, pod: dict) -> str:
    return pods.kubectl("hub").run("logs", pod["metadata"]["name"], "-n", SERVER_NS, "-c", "state-backup").stdout


def one_round(pods: PodsStack, out: Path) -> str:
    run_id, _ = run(pods.deployment(), TRAINING_APP, {"num-server-rounds": 1, "dataset": DATASET,
                                                      "min-available-sites": len(SITES)}, 900, out)
    return run_id


def test_the_database_is_backed_up_before_another_release_opens_it_and_a_backup_restores_the_history(
        pods, tmp_path, request):
    state = volume_path(pods, "hub", SERVER_NS, "superlink-state")
    marker = state / f"state.db{RELEASE_SUFFIX}"
    assert marker.read_text().strip() == FLOWER_RELEASE  # recorded by the first SuperLink pod's init container
    history = run_history(pods)
    if not any(status.startswith("finished") for status in history.values()):
        one_round(pods, tmp_path)
        history = run_history(pods)

    # The database as the previous release left it; SuperLink restarts (as `pulumi up` of new images does).
    marker.write_text(f"{PREVIOUS_RELEASE}\n")
    old = superlink_pod(pods)
    pods.kubectl("hub").run("delete", "pod", old["metadata"]["name"], "-n", SERVER_NS, "--wait=false")
    new = wait_for(lambda: (p := superlink_pod(pods)) and p["metadata"]["uid"] != old["metadata"]["uid"] and p,
                   600, "a new SuperLink pod Ready")
    line = init_log(pods, new)
    match = re.search(rf"backed up to {BACKUPS}/(state-flwr{re.escape(PREVIOUS_RELEASE)}-\d{{8}}T\d{{6}}Z\.db) "
                      rf"\(\d+ bytes, schema \w+\) before Flower {re.escape(FLOWER_RELEASE)} opens what Flower "
                      rf"{re.escape(PREVIOUS_RELEASE)} left", line)
    assert match, line
    backup = match[1]
    assert (state / BACKUPS / backup).is_file() and marker.read_text().strip() == FLOWER_RELEASE
    assert run_history(pods) == history  # migrated in place: every run is still there

    after_upgrade = one_round(pods, tmp_path)  # the SuperNodes reconnected: a new run trains
    assert run_history(pods)[after_upgrade].startswith("finished:completed")

    done = restore(pods.deployment(), backup)
    assert done.startswith(f"state.db: restored from {BACKUPS}/{backup} (Flower {PREVIOUS_RELEASE}'s); the replaced "
                           f"database is kept as {BACKUPS}/state-flwr{FLOWER_RELEASE}-"), done
    restored = wait_for(lambda: superlink_pod(pods), 600, "SuperLink Ready on the restored database")
    # The restored database says 1.41.0 again, so this release's init container backed it up once more.
    assert f"before Flower {FLOWER_RELEASE} opens what Flower {PREVIOUS_RELEASE} left" in init_log(pods, restored)
    assert run_history(pods) == history  # the history of the backup: the run since is gone
    say(request, f"\nSuperLink state: {len(history)} run(s) kept through a release change (backup {backup}); "
                 f"run {after_upgrade} trained after it; restore-state brought the backup's history back")
