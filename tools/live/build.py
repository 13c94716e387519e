"""The binaries of a local Kubernetes control plane and of real nodes, built once from the Go module proxy.

etcd, kube-apiserver, kube-controller-manager, kube-scheduler and kwok (fake nodes), and for
real nodes kubelet, kube-proxy, CoreDNS, kube-router and the pause container's binary,
go into the same per-version cache as the Pulumi toolchain
(`~/.cache/flowerbed/toolchain/<name>-<version>/`, flock-protected, a `SOURCE`
record each), so every clone and CI reuse them. The recipe and its one trick (the
`k8s.io/kubernetes` module zip has no `staging/`, so its staging replaces become the
published `k8s.io/*` v0.X.Y modules) are from shared/research/live-kubernetes.md; the node
parts from shared/research/real-nodes.md.

Why these node parts: kubelet and kube-proxy come from the plane's own source tree (one version
everywhere). CoreDNS v1.12.4 is the release that builds here (the module proxy lists only newer
tags, whose go.mod asks for a newer Go). NetworkPolicies: kube-router v2.1.0 (firewall only) is
the one release the proxy serves; the SIG Network implementation, kube-network-policies v0.8.0,
needs nftables' `queue` expression (CONFIG_NFT_QUEUE), which this machine's kernel lacks. kube-router's
advisory GHSA-phqm-jgc3-qf8g is in its service proxy, which never runs here
(`--run-service-proxy=false`, as `--run-router=false`). The pause binary is Kubernetes' own
`build/pause/linux/pause.c` from the same module, linked statically.
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
COREDNS_VERSION = "1.12.4"
KUBE_ROUTER_VERSION = "2.1.0"
KUBE_COMMANDS = ("kube-apiserver", "kube-controller-manager", "kube-scheduler")
NODE_COMMANDS = ("kubelet", "kube-proxy")
# Cache entries (name, version) this module builds: a control plane's, then a real node's.
ENTRIES = (("etcd", ETCD_VERSION), ("kubernetes", KUBERNETES_VERSION), ("kwok", KWOK_VERSION))
NODE_ENTRIES = (("kubernetes-node", KUBERNETES_VERSION), ("coredns", COREDNS_VERSION),
                ("kube-router", KUBE_ROUTER_VERSION))


@dataclass(frozen=True)
class Binaries:
    """Absolute paths of one control plane's executables."""

    etcd: Path
    kube_apiserver: Path
    kube_controller_manager: Path
    kube_scheduler: Path
    kwok: Path


@dataclass(frozen=True)
class NodeBinaries:
    """Absolute paths of a real node's executables."""

    kubelet: Path
    kube_proxy: Path
    coredns: Path
    kube_router: Path
    pause: Path


def build_env() -> dict[str, str]:
    env = go_env()
    # Both cores when nothing else runs: the kube-apiserver link alone is most of a cold CI run's build.
    env.update(GOWORK="off", GOFLAGS=f"-buildvcs=false -mod=mod -modcacherw -p={os.cpu_count() or 1}")
    return env


def _kubernetes_source(version: str, work: Path) -> tuple[Path, list[str]]:
    """k8s.io/kubernetes@v<version> copied to `work`, buildable (staging replaces -> published
    modules); returns the copy and the -ldflags that stamp the version."""
    upstream = go_download("k8s.io/kubernetes", f"v{version}")
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
    return work, ldflags


def _kubernetes_commands(name: str, commands: tuple[str, ...], version: str, minutes: str) -> Path:
    """`commands` (./cmd/<command>) of k8s.io/kubernetes@v<version> into cache entry `name`."""
    with cache_entry(name, version) as (entry, build):
        if build:
            log(f"building {', '.join(commands)} v{version} (first time only; {minutes} cold)")
            work, ldflags = _kubernetes_source(version, entry / "src")
            for command in commands:
                run(["go", "build", "-trimpath", "-ldflags", " ".join(ldflags), "-o", str(entry / command),
                     f"./cmd/{command}"], cwd=work, env=build_env())
            if name == "kubernetes-node":
                # The pause container's binary, from the same tree: static, so its image is one file.
                run(["gcc", "-Os", "-static", "-Wall", "-Werror", f"-DVERSION=v{version}", "-o",
                     str(entry / "pause"), str(work / "build" / "pause" / "linux" / "pause.c")], cwd=work)
            (entry / "SOURCE").write_text(f"k8s.io/kubernetes@v{version} (module zip; staging replaces -> "
                                          f"published v0.{version.split('.', 1)[1]})\n")
            shutil.rmtree(work)
    return entry


def kubernetes(version: str = KUBERNETES_VERSION) -> Path:
    """kube-apiserver, -controller-manager and -scheduler from module k8s.io/kubernetes@v<version>."""
    return _kubernetes_commands("kubernetes", KUBE_COMMANDS, version, "~10-20 minutes")


def kubernetes_node(version: str = KUBERNETES_VERSION) -> Path:
    """kubelet, kube-proxy and pause from the plane's source tree (a warm Go build cache: ~1-2 minutes)."""
    return _kubernetes_commands("kubernetes-node", NODE_COMMANDS, version, "~1-5 minutes")


def _wrapped(name: str, module: str, version: str, package: str, binary: str) -> Path:
    """`package` of `module`@v<version> built through a throwaway main module (their replaces and
    build constraints refuse a plain `go install mod@ver`)."""
    with cache_entry(name, version) as (entry, build):
        if build:
            log(f"building {name} v{version} (first time only; a few minutes cold)")
            work = entry / "src"
            write_wrapper(work, name, {module: f"v{version}"}, [])
            (work / "tools.go").write_text(f'//go:build tools\n\npackage tools\n\nimport _ "{package}"\n')
            run(["go", "mod", "tidy"], cwd=work, env=build_env())
            run(["go", "build", "-trimpath", "-ldflags", "-s -w", "-o", str(entry / binary), package],
                cwd=work, env=build_env())
            (entry / "SOURCE").write_text(f"{module}@v{version} ({package})\n")
            shutil.rmtree(work)
    return entry


def coredns(version: str = COREDNS_VERSION) -> Path:
    return _wrapped("coredns", "github.com/coredns/coredns", version, "github.com/coredns/coredns", "coredns")


def kube_router(version: str = KUBE_ROUTER_VERSION) -> Path:
    return _wrapped("kube-router", "github.com/cloudnativelabs/kube-router/v2", version,
                    "github.com/cloudnativelabs/kube-router/v2/cmd/kube-router", "kube-router")


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


def missing(entries: tuple[tuple[str, str], ...] = ENTRIES) -> list[str]:
    """The cache entries (`<name>-<version>`) not built yet."""
    return [f"{name}-{version}" for name, version in entries if not (CACHE / f"{name}-{version}" / ".complete").exists()]


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


def ensure_node() -> NodeBinaries:
    """A real node's executables, built (under the same lock) where the cache lacks them."""
    CACHE.mkdir(parents=True, exist_ok=True)
    with open(CACHE / ".lock-live", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        node_dir, coredns_dir, router_dir = kubernetes_node(), coredns(), kube_router()
    return NodeBinaries(kubelet=node_dir / "kubelet", kube_proxy=node_dir / "kube-proxy",
                        coredns=coredns_dir / "coredns", kube_router=router_dir / "kube-router",
                        pause=node_dir / "pause")


if __name__ == "__main__":
    binaries = ensure()
    print(f"control-plane binaries ready: {binaries.kube_apiserver.parent}, {binaries.etcd.parent}, {binaries.kwok.parent}")
    node = ensure_node()
    print(f"node binaries ready: {node.kubelet.parent}, {node.coredns.parent}, {node.kube_router.parent}")
