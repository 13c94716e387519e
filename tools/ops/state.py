"""make restore-state: put a backup of the SuperLink's database back (README: Upgrading Flower).

    make restore-state STACK=<stack> BACKUP=state-flwr<release>-<UTC time>.db

The SuperLink pod's init container backs its database up on the state volume before another Flower
release opens it (components/state_backup.py). This puts one of those backups back, for any live
stack: SuperLink is scaled to 0 (its pods gone, so nothing writes), a short-lived restricted pod
with the deployed platform image mounts the state volume and runs the same script's `restore`
(the replaced database is kept beside the backups). When the deployed SuperLink runs the backup's
Flower release, SuperLink is scaled back and waited for. When it runs another (a rollback: the
backup is the older release's), SuperLink stays stopped, since the newer one would migrate the
backup forward again at once; `pulumi up` of the flowerbed release written for the backup's Flower,
with its images, starts it (README: Upgrading Flower).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from components import hardening, naming, state_backup
from components.flower_release import release_of
from tools.engine.offline import REPO
from tools.live.plane import wait_until
from tools.ops.deployment import Deployment, Kubectl, OpsError, live_platform_image, require_real_nodes, volume_pod

ROLLOUT_TIMEOUT_S = 600
_VOLUME_DATABASE = "/volume/" + Path(naming.SUPERLINK_DATABASE).name


def _scale(kubectl: Kubectl, namespace: str, replicas: int) -> None:
    kubectl.run("scale", "deployment", naming.SUPERLINK, "-n", namespace, f"--replicas={replicas}")


def restore(deployment: Deployment, backup: str) -> str:
    """Puts `backup` (a file name in the state volume's backups/) back; returns what was done, one line.

    SuperLink starts again when the deployed image runs the backup's Flower release. Otherwise it stays
    stopped (a newer SuperLink would migrate a rollback's backup forward again at once), and the line
    says to deploy the flowerbed release of the backup's Flower, whose `pulumi up` starts it."""
    backup_release = state_backup.release_of_backup(backup)  # a name that cannot be a backup stops here
    config = deployment.live_config()  # a rollback's stack may name an older release's images
    namespace = config.server.namespace
    kubectl = deployment.kubectl(config.clusters[config.server.cluster])
    require_real_nodes(kubectl, config.server.cluster, "no pod can restore the SuperLink's database there")
    if kubectl.run("get", "deployment", naming.SUPERLINK, "-n", namespace, check=False).returncode != 0:
        raise OpsError(f"stack {deployment.stack}: no SuperLink Deployment in namespace {namespace}: deploy it first")
    image = live_platform_image(kubectl, namespace)
    running = release_of(image)
    restart = backup_release in (running, state_backup.UNKNOWN)
    selector = ",".join(f"{k}={v}" for k, v in hardening.selector(config.federation, naming.SUPERLINK).items())
    _scale(kubectl, namespace, 0)
    restored = False
    try:
        if not wait_until(lambda: not kubectl.run("get", "pods", "-l", selector, "-n", namespace, "-o",
                                                  "name").stdout.strip(), 300, 1):
            raise OpsError(f"the SuperLink pod in {namespace} did not stop within 300 s (kubectl -n {namespace} "
                           "get pods)")
        with volume_pod(kubectl, namespace, naming.SUPERLINK_STATE_CLAIM, image, config.images.pull_secrets,
                        read_only=False, role="state-restore") as pod:
            done = kubectl.run("exec", "-i", pod, "-n", namespace, "-c", "state-restore", "--", "python", "-",
                               "restore", "--database", _VOLUME_DATABASE, "--backup", backup,
                               stdin=Path(state_backup.__file__).read_text(), check=False)
        if done.returncode != 0:
            raise OpsError(done.stderr.strip().removeprefix("state-backup: ") or f"restore exited {done.returncode}")
        restored = True
    finally:
        if restart or not restored:
            _scale(kubectl, namespace, 1)  # back as declared unless restored for another release
    line = done.stdout.strip().removeprefix("state-backup: ")
    if not restart:
        return (f"{line}; SuperLink stays stopped: the deployed image runs Flower {running or 'of no named release'}, "
                f"which would migrate Flower {backup_release}'s database forward again; pulumi up the flowerbed "
                f"release for Flower {backup_release} with its images to start it (README: Upgrading Flower)")
    kubectl.run("rollout", "status", f"deployment/{naming.SUPERLINK}", "-n", namespace,
                f"--timeout={ROLLOUT_TIMEOUT_S}s", timeout=ROLLOUT_TIMEOUT_S + 30)
    return f"{line}; SuperLink is running again"


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="make restore-state", description=__doc__.split("\n\n")[0])
    parser.add_argument("stack")
    parser.add_argument("--backup", required=True, help="BACKUP: a file in the state volume's backups/")
    args = parser.parse_args(argv)
    try:
        line = restore(Deployment(REPO, args.stack), args.backup)
    except (OpsError, state_backup.StateError) as err:
        print(f"make restore-state: {err}", file=sys.stderr)
        return 1
    print(f"make restore-state: {line}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
