"""make data: put a site's study data onto its study-data volume, through the Kubernetes API.

    make data STACK=<stack> SITE=<site> DATASET=<study>/<dataset> FROM=<path> [REPLACE=1]

For any live stack (local or not, prod included): a short-lived, Pod-Security-restricted pod in
the site's namespace mounts the dataset's claim, the files of `<path>` (a file or a directory)
stream into it through `kubectl exec` (tar), and every file is checked against its SHA-256
before the pod is deleted. Files of the same name are replaced; `--replace` empties the volume
first. The ClientApp pods then read the dataset at /data/<study>/<dataset> (training/README.md).
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import sys
import tarfile
from pathlib import Path

from components import naming
from components.config import SiteConfig, StudyData
from tools.engine.offline import REPO
from tools.ops.deployment import Deployment, OpsError, require_real_nodes, volume_pod

# Runs in the pod (the platform image's Python): path -> SHA-256 of every file under /volume.
_DIGESTS = ("import hashlib,json,pathlib;r=pathlib.Path('/volume');print(json.dumps({str(p.relative_to(r)):"
            "hashlib.sha256(p.read_bytes()).hexdigest() for p in r.rglob('*') if p.is_file()}))")


def local_files(source: Path) -> dict[str, Path]:
    """Name in the volume -> local file: a directory's files by their relative path, or one file."""
    if source.is_file():
        return {source.name: source}
    if source.is_dir():
        return {str(p.relative_to(source)): p for p in sorted(source.rglob("*")) if p.is_file()}
    raise OpsError(f"FROM: {source} is neither a file nor a directory")


def archive(files: dict[str, Path]) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        for name, path in files.items():
            info = tar.gettarinfo(str(path), arcname=name)
            info.uid = info.gid = 0
            info.uname = info.gname = ""
            info.mode = 0o644
            with path.open("rb") as file:
                tar.addfile(info, file)
    return buffer.getvalue()


def dataset_of(site: SiteConfig, dataset: str) -> StudyData:
    study, _, name = dataset.partition("/")
    for data in site.study_data:
        if (data.study, data.dataset) == (study, name):
            return data
    listed = ", ".join(f"{d.study}/{d.dataset}" for d in site.study_data) or "none"
    raise OpsError(f"DATASET: {dataset!r} is not a study dataset of site {site.name} (it has: {listed})")


def upload(deployment: Deployment, site_name: str, dataset: str, source: Path, replace: bool) -> dict[str, str]:
    """Copies `source` onto the dataset's volume; returns name -> SHA-256 of what the volume now holds."""
    config = deployment.config()
    site = next((s for s in config.sites if s.name == site_name), None)
    if site is None:
        raise OpsError(f"SITE: {site_name!r} is not a site of stack {deployment.stack} "
                       f"(its sites: {', '.join(s.name for s in config.sites)})")
    data = dataset_of(site, dataset)
    files = local_files(source)
    if not files:
        raise OpsError(f"FROM: {source} holds no file")
    kubectl = deployment.kubectl(config.clusters[site.cluster])
    require_real_nodes(kubectl, site.cluster, "no pod can copy data there")
    claim = data.existing_claim or naming.study_claim_name(data.study, data.dataset)
    if kubectl.run("get", "pvc", claim, "-n", site.namespace, check=False).returncode != 0:
        raise OpsError(f"site {site.name}: no claim {claim} in namespace {site.namespace}: "
                       f"deploy the stack first (make up STACK={deployment.stack})")
    with volume_pod(kubectl, site.namespace, claim, config.images.platform, config.images.pull_secrets,
                    read_only=False, role="data-loader") as pod:
        exec_in = ("exec", "-i", pod, "-n", site.namespace, "-c", "data-loader", "--")
        if replace:
            kubectl.run(*exec_in, "find", "/volume", "-mindepth", "1", "-delete")
        kubectl.run(*exec_in, "tar", "-x", "-f", "-", "-C", "/volume", "--no-same-owner", "--no-same-permissions",
                    stdin=archive(files), timeout=1800)
        held = json.loads(kubectl.run(*exec_in, "python", "-c", _DIGESTS).stdout)
    for name, path in files.items():
        if held.get(name) != hashlib.sha256(path.read_bytes()).hexdigest():
            raise OpsError(f"{name}: the copy on the volume differs from {path} (its SHA-256 does not match)")
    return held


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="make data", description=__doc__.split("\n\n")[0])
    parser.add_argument("stack")
    parser.add_argument("--site", required=True, help="SITE: a site of the stack")
    parser.add_argument("--dataset", required=True, help="DATASET: <study>/<dataset>, as the site's studyData lists it")
    parser.add_argument("--from", dest="source", required=True, type=Path, help="FROM: a file or a directory")
    parser.add_argument("--replace", action="store_true", help="REPLACE=1: empty the volume first")
    args = parser.parse_args(argv)
    try:
        held = upload(Deployment(REPO, args.stack), args.site, args.dataset, args.source, args.replace)
    except OpsError as err:
        print(f"make data: {err}", file=sys.stderr)
        return 1
    files = local_files(args.source)
    size = sum(p.stat().st_size for p in files.values())
    print(f"make data: {len(files)} file(s), {size} bytes of {args.source} on site {args.site}'s {args.dataset} "
          f"volume (checked by SHA-256); it holds {len(held)} file(s); the ClientApp reads them at "
          f"{naming.study_mount_path(*args.dataset.split('/', 1))}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
