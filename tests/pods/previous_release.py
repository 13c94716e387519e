"""The flowerbed release before this one, as its users have it: its Pulumi program and its images, made
from its own commit by its own `make images` (README: Upgrading Flower; tests/pods/test_upgrade.py).

That release pinned flwr 1.41.0, wrote no release marker beside the SuperLink's database and ran no
`state-backup` init container; its images carried no release in their tags, so the ones built here
are tagged `local-flwr1.41.0` (its builder takes any TAG), which is also what `make restore-state`
reads the running release from.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from tools.engine.offline import REPO

# main just before the Flower 1.42 merge: the last commit written for Flower 1.41.0.
COMMIT = "8e2986ad1373bfcab367c2579fe2661c7eb3e7a8"
FLOWER = "1.41.0"
# Its own repository names in the buildah store: this release's builds remove other tags of theirs.
REGISTRY = "localhost/flowerbed-previous"
TAG = f"local-flwr{FLOWER}"


def export(target: Path) -> Path:
    """The release's files (`git archive` of COMMIT) in `target`; a clone without that commit fails here."""
    if subprocess.run(["git", "cat-file", "-e", f"{COMMIT}^{{commit}}"], cwd=REPO, capture_output=True).returncode:
        raise RuntimeError(f"commit {COMMIT} (flowerbed for Flower {FLOWER}) is not in {REPO}: "
                           "a shallow clone? fetch the history (git fetch --unshallow)")
    target.mkdir(parents=True, exist_ok=True)
    archive = subprocess.run(["git", "archive", COMMIT], cwd=REPO, capture_output=True, check=True).stdout
    subprocess.run(["tar", "-x", "-C", str(target)], input=archive, check=True)
    return target


def build_images(tree: Path, app: Path) -> dict[str, str]:
    """The release's platform image and the job image of the Flower App `app`, built by the release's
    own tools/images (buildah, into the project's image store); by role."""
    script = (
        "import sys\nfrom pathlib import Path\n"
        "from tools.images.build import build_with_buildah\nfrom tools.images.settings import Settings\n"
        f"platform = build_with_buildah(Settings({REGISTRY!r}, {TAG!r}, (), None, False, 'buildah')).platform\n"
        f"job = build_with_buildah(Settings({REGISTRY!r}, {TAG!r}, ('cuda',), Path(sys.argv[1]), False, 'buildah'))\n"
        "print(platform)\nprint(job.jobs[0])\n")
    done = subprocess.run([sys.executable, "-c", script, str(app)], cwd=tree, capture_output=True, text=True,
                          timeout=1800)
    if done.returncode != 0:
        raise RuntimeError(f"building flowerbed {COMMIT[:7]}'s images failed:\n"
                           f"{done.stdout[-2000:]}{done.stderr[-3000:]}")
    platform, job = done.stdout.strip().splitlines()[-2:]
    return {"platform": platform, "job": job}

