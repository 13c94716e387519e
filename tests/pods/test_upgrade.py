"""A Flower upgrade on real pods, as README "Upgrading Flower" tells it, and the rollback.

The session deployed the federation with the previous flowerbed release (its program, its Flower
1.41.0 images), trained a run to the end, left another in progress and upgraded it with this
checkout's `pulumi up` (tests/pods/conftest.py, `upgraded_from_previous_release`). Here: the
database was backed up on the state volume under 1.41.0 before Flower 1.42.0 migrated it, the history
is all there, the SuperNodes reconnected and a new run trains. Then the rollback: `make restore-state`
with the 1.41.0 backup (SuperLink stays stopped: a 1.42.0 SuperLink would migrate it again) and the
previous release's `pulumi up` with its images bring the 1.41.0 SuperLink back on the history it had;
and forward again, as the other tests found the federation: the database the rollback replaced restored
and this release's `pulumi up`.
"""

from __future__ import annotations

import re

import pytest

from components.flower_release import FLOWER_RELEASE
from components.state_backup import BACKUPS, RELEASE_SUFFIX
from tests.live.conftest import say
from tests.pods import previous_release
from tests.pods.conftest import (DATASET, FEDERATION, SERVER_NS, SITES, TRAINING_APP, PodsStack, install_release,
                                 run_history, state_backup_log, superlink_pod, volume_path, wait_for)
from tools.ops.run import run
from tools.ops.state import restore

pytestmark = pytest.mark.pods

PREVIOUS = previous_release.FLOWER
# The newest schema revision of flwr 1.41.0 (components/state_backup.RELEASE_OF_SCHEMA_HEAD).
PREVIOUS_SCHEMA = "d90a2f91f23c"


def deployment_images(pods: PodsStack) -> dict[str, set[str]]:
    """The federation's Deployments (cluster/name) -> the images of their containers, init containers too."""
    found = {}
    for cluster_name in pods.planes:
        for deployment in pods.kubectl(cluster_name).items("deployments"):
            if not deployment["metadata"]["namespace"].startswith(f"{FEDERATION}-"):
                continue  # kube-system's
            spec = deployment["spec"]["template"]["spec"]
            found[f"{cluster_name}/{deployment['metadata']['name']}"] = {
                c["image"] for c in [*spec.get("initContainers", []), *spec["containers"]]}
    return found


def superlink_replicas(pods: PodsStack) -> int:
    return pods.kubectl("hub").json("get", "deployment", "superlink", "-n", SERVER_NS)["spec"]["replicas"]


def test_an_upgrade_keeps_the_history_backs_it_up_under_the_old_release_and_a_rollback_restores_it(
        pods, tmp_path, request):
    upgrade = pods.upgrade
    state = volume_path(pods, "hub", SERVER_NS, "superlink-state")
    marker = state / f"state.db{RELEASE_SUFFIX}"

    # The upgrade: every Deployment runs this release's images, the database was backed up first.
    assert all(images <= set(upgrade.images.values()) for images in deployment_images(pods).values()), \
        deployment_images(pods)
    match = re.search(rf"backed up to {BACKUPS}/(state-flwr{re.escape(PREVIOUS)}-\d{{8}}T\d{{6}}Z\.db) \(\d+ bytes, "
                      rf"schema {PREVIOUS_SCHEMA}\) before Flower {re.escape(FLOWER_RELEASE)} opens what Flower "
                      rf"{re.escape(PREVIOUS)} left", upgrade.init_log)
    assert match, upgrade.init_log
    backup = match[1]
    assert (state / BACKUPS / backup).is_file() and marker.read_text().strip() == FLOWER_RELEASE
    # The history as `flwr ls` listed it on Flower 1.41.0 is all there on 1.42.0.
    assert upgrade.history_before[upgrade.finished_run] == "finished:completed"
    assert upgrade.history_before[upgrade.running_run] == "running"
    assert set(upgrade.history_after) == set(upgrade.history_before)
    assert upgrade.history_after[upgrade.finished_run] == "finished:completed"
    say(request, f"\nupgrade 1.41.0 -> {FLOWER_RELEASE}: pulumi up {upgrade.seconds:.0f} s; backup {backup}; "
                 f"run {upgrade.running_run} had done {upgrade.rounds_before} rounds, {upgrade.rounds_after} 60 s "
                 f"after the upgraded SuperLink was Ready, status after the upgrade "
                 f"{upgrade.history_after[upgrade.running_run]!r} ({upgrade.running_status})")

    # The SuperNodes reconnected: a new run trains on the sites' study data.
    after_upgrade, _ = run(pods.deployment(), TRAINING_APP, {"num-server-rounds": 1, "dataset": DATASET,
                                                             "min-available-sites": len(SITES)}, 900, tmp_path)
    history = run_history(pods)
    assert history[after_upgrade] == "finished:completed"

    # Rollback, step 1: the 1.41.0 backup back; a 1.42.0 SuperLink would migrate it again, so it stays stopped.
    done = restore(pods.deployment(), backup)
    replaced = re.search(rf"the replaced database is kept as {BACKUPS}/(state-flwr{re.escape(FLOWER_RELEASE)}-"
                         r"\d{8}T\d{6}Z-replaced\.db)", done)
    assert replaced and f"SuperLink stays stopped: the deployed image runs Flower {FLOWER_RELEASE}" in done, done
    assert superlink_replicas(pods) == 0 and marker.read_text().strip() == PREVIOUS
    # Step 2: the previous release's pulumi up, with its images, starts the 1.41.0 SuperLink on it.
    install_release(pods, upgrade.previous_tree, upgrade.previous_images)
    superlink = wait_for(lambda: superlink_pod(pods), 600, "the 1.41.0 SuperLink Ready on the restored database")
    assert {c["image"] for c in superlink["spec"]["containers"]} == {upgrade.previous_images["platform"]}
    rolled_back = run_history(pods)
    assert set(rolled_back) == set(upgrade.history_before)  # the run made after the upgrade is not in the backup
    assert rolled_back[upgrade.finished_run] == "finished:completed"

    # Forward again: the database the rollback replaced, and this release's pulumi up.
    done = restore(pods.deployment(), replaced[1])
    assert f"SuperLink stays stopped: the deployed image runs Flower {PREVIOUS}" in done, done
    install_release(pods, None, upgrade.images)
    superlink = wait_for(lambda: superlink_pod(pods), 600, f"the {FLOWER_RELEASE} SuperLink Ready again")
    assert f"last opened by Flower {FLOWER_RELEASE}" in state_backup_log(pods, superlink)  # no backup this time
    assert run_history(pods) == history
    say(request, f"rollback: restore-state {backup} + the previous release's pulumi up gave {len(rolled_back)} runs "
                 f"back on Flower {PREVIOUS}; forward again with {replaced[1]}: {len(history)} runs")
