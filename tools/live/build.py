"""The binaries of a local Kubernetes control plane, built once from the Go module proxy.

etcd, kube-apiserver, kube-controller-manager, kube-scheduler and kwok (fake nodes)
go into the same per-version cache as the Pulumi toolchain
(`~/.cache/flowerbed/toolchain/<name>-<version>/`, flock-protected, a `SOURCE`
record each), so every clone and CI reuse them. The recipe and its one trick (the
`k8s.io/kubernetes` module zip has no `staging/`, so its staging replaces become the
published `k8s.io/*` v0.X.Y modules) are from shared/research/live-kubernetes.md.
"""

from __future__ import annotations

import fcntl
import os
import re
import shutil
from dataclasses import dataclass
from pathlib import Path

from tools.engine.toolchain import CACHE, cache_entry, go_download, go_env, log, run, write_wrapper

KUBERNETES_VERSION = "1.34.4"
ETCD_VERSION = "3.6.16"
KWOK_VERSION = "0.8.0"
KUBE_COMMANDS = ("kube-apiserver", "kube-controller-manager", "kube-scheduler")
# Cache entries (name, version) this module builds.
ENTRIES = (("etcd", ETCD_VERSION), ("kubernetes", KUBERNETES_VERSION), ("kwok", KWOK_VERSION))


@dataclass(frozen=True)
class Binaries:
    """Absolute paths of one control plane's executables."""

    etcd: Path
    kube_apiserver: Path
    kube_controller_manager: Path
    kube_scheduler: Path
    kwok: Path


def build_env() -> dict[str, str]:
    env = go_env()
    # Both cores when nothing else runs: the kube-apiserver link alone is most of a cold CI run's build.
    env.update(GOWORK="off", GOFLAGS=f"-buildvcs=false -mod=mod -modcacherw -p={os.cpu_count() or 1}")
    return env


def kubernetes(version: str = KUBERNETES_VERSION) -> Path:
    """kube-apiserver, -controller-manager and -scheduler from module k8s.io/kubernetes@v<version>."""
    with cache_entry("kubernetes", version) as (entry, build):
        if build:
            log(f"building {', '.join(KUBE_COMMANDS)} v{version} (first time only; ~10-20 minutes cold)")
            upstream = go_download("k8s.io/kubernetes", f"v{version}")
            work = entry / "src"
            shutil.copytree(upstream["Dir"], work)
            for path in work.rglob("*"):
                path.chmod(path.stat().st_mode | 0o200)
            for name in ("go.work", "go.work.sum"):
                (work / name).unlink(missing_ok=True)
            go_mod = (work / "go.mod").read_text()
            staging = re.findall(r"^\s*(k8s\.io/[a-z0-9-]+) => \./staging/", go_mod, re.MULTILINE)
            minor_release = "v0." + version.split(".", 1)[1]  # k8s 1.34.4 publishes k8s.io/api v0.34.4
            run(["go", "mod", "edit", *(f"-dropreplace={module}" for module in staging)], cwd=work, env=build_env())
            go_mod = (work / "go.mod").read_text()
            for module in staging:
                go_mod = re.sub(rf"^(\s+){re.escape(module)} v0\.0\.0$", rf"\1{module} {minor_release}",
                                go_mod, flags=re.MULTILINE)
            (work / "go.mod").write_text(go_mod)
            major, minor = version.split(".")[:2]
            ldflags = ["-s", "-w"]
            for package in ("k8s.io/component-base/version", "k8s.io/client-go/pkg/version"):
                ldflags += [f"-X {package}.gitVersion=v{version}", f"-X {package}.gitMajor={major}",
                            f"-X {package}.gitMinor={minor}"]
            for command in KUBE_COMMANDS:
                run(["go", "build", "-trimpath", "-ldflags", " ".join(ldflags), "-o", str(entry / command),
                     f"./cmd/{command}"], cwd=work, env=build_env())
            (entry / "SOURCE").write_text(
                f"k8s.io/kubernetes@v{version} (module zip; staging replaces -> published {minor_release})\n")
            shutil.rmtree(work)
    return entry


def etcd(version: str = ETCD_VERSION) -> Path:
    """etcd from go.etcd.io/etcd/server/v3 through a wrapper module (its replaces refuse `go install @v`)."""
    with cache_entry("etcd", version) as (entry, build):
        if build:
            log(f"building etcd v{version} (first time only; about a minute cold)")
            work = entry / "src"
            write_wrapper(work, "etcd", {"go.etcd.io/etcd/server/v3": f"v{version}"}, [])
            (work / "tools.go").write_text('//go:build tools\n\npackage tools\n\nimport _ "go.etcd.io/etcd/server/v3"\n')
            run(["go", "mod", "tidy"], cwd=work, env=build_env())
            run(["go", "build", "-trimpath", "-ldflags", "-s -w", "-o", str(entry / "etcd"),
                 "go.etcd.io/etcd/server/v3"], cwd=work, env=build_env())
            (entry / "SOURCE").write_text(f"go.etcd.io/etcd/server/v3@v{version}\n")
            shutil.rmtree(work)
    return entry


def kwok(version: str = KWOK_VERSION) -> Path:
    """kwok, the fake-node controller: pods on its nodes go Running/Ready, Job pods Succeeded; nothing runs."""
    with cache_entry("kwok", version) as (entry, build):
        if build:
            log(f"building kwok v{version} (first time only; a few minutes cold)")
            env = dict(build_env(), GOBIN=str(entry))
            run(["go", "install", "-trimpath", "-ldflags", "-s -w", f"sigs.k8s.io/kwok/cmd/kwok@v{version}"],
                cwd=entry, env=env)
            (entry / "SOURCE").write_text(f"sigs.k8s.io/kwok/cmd/kwok@v{version}\n")
    return entry


def missing() -> list[str]:
    """The cache entries (`<name>-<version>`) not built yet."""
    return [f"{name}-{version}" for name, version in ENTRIES if not (CACHE / f"{name}-{version}" / ".complete").exists()]


def ensure() -> Binaries:
    """Builds what the cache lacks (under the toolchain's lock) and returns the executables."""
    CACHE.mkdir(parents=True, exist_ok=True)
    # Its own lock, not the Pulumi toolchain's: the two caches share no entry and may build side by side.
    with open(CACHE / ".lock-live", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # two clones building the same entry at once would corrupt it
        etcd_dir, kube_dir, kwok_dir = etcd(), kubernetes(), kwok()
    return Binaries(
        etcd=etcd_dir / "etcd",
        kube_apiserver=kube_dir / "kube-apiserver",
        kube_controller_manager=kube_dir / "kube-controller-manager",
        kube_scheduler=kube_dir / "kube-scheduler",
        kwok=kwok_dir / "kwok",
    )


if __name__ == "__main__":
    binaries = ensure()
    print(f"control-plane binaries ready: {binaries.kube_apiserver.parent}, {binaries.etcd.parent}, {binaries.kwok.parent}")
