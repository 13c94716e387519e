"""What real nodes could leave on this machine, read before and after: the proof that
`make cluster-down` left the host as `make cluster` found it.

`snapshot()` reads the host-wide state a node touches or could touch: processes and mounts that
name the project, network namespaces, interfaces, the host's iptables rules, the sysctls a kubelet
rewrites, cgroups of nodes and container tests, and the files the kubelet, containerd and the CNI
plugins write at fixed paths. `changes(before, after)` names every difference.
"""

from __future__ import annotations

import re
import subprocess
from dataclasses import dataclass
from pathlib import Path

SYSCTLS = ("kernel/panic", "kernel/panic_on_oops", "vm/overcommit_memory", "vm/panic_on_oom",
           "kernel/keys/root_maxkeys", "kernel/keys/root_maxbytes", "net/ipv4/ip_forward")
FIXED_PATHS = ("/var/lib/kubelet", "/var/lib/cni", "/run/containerd", "/var/log/containers", "/var/log/pods",
               "/run/flowerbed-image-tests")
_COUNTERS = re.compile(r"\[\d+:\d+\]")


@dataclass(frozen=True)
class HostState:
    processes: frozenset[str]
    mounts: frozenset[str]
    netns: frozenset[str]
    links: frozenset[str]
    iptables: tuple[str, ...]
    sysctls: tuple[tuple[str, str], ...]
    cgroups: frozenset[str]
    files: frozenset[str]


def _run(*argv: str) -> str:
    result = subprocess.run(argv, capture_output=True, text=True)
    return result.stdout if result.returncode == 0 else ""


def snapshot(markers: tuple[str, ...]) -> HostState:
    """The host's state; `markers` are strings (paths, names) that identify what the tools started."""
    processes = set()
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit():
            try:
                cmdline = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            except OSError:
                continue
            if any(m in cmdline for m in markers) or "flowerbed-node-holder" in cmdline:
                processes.add(cmdline.strip())
    mounts = {line.split()[1] for line in Path("/proc/mounts").read_text().splitlines()
              if any(m in line for m in markers) or "flowerbed" in line.split()[1]}
    links = {line.split(":")[1].strip().split("@")[0] for line in _run("ip", "-o", "link").splitlines()
             if ":" in line}
    iptables = tuple(sorted(_COUNTERS.sub("", line) for line in _run("iptables-save").splitlines()
                            if line and not line.startswith("#")))
    sysctls = tuple((name, Path("/proc/sys", name).read_text().strip()) for name in SYSCTLS)
    cgroups = {str(p) for p in Path("/sys/fs/cgroup").glob("*/flowerbed*")}
    files = {path for path in FIXED_PATHS if Path(path).exists()}
    files |= {str(p) for p in Path("/run/netns").glob("cni-*")} if Path("/run/netns").exists() else set()
    return HostState(frozenset(processes), frozenset(mounts), frozenset(line.split()[0] for line in _run("ip", "netns", "list").splitlines() if line.strip()),
                     frozenset(links), iptables, sysctls, frozenset(cgroups), frozenset(files))


def changes(before: HostState, after: HostState) -> list[str]:
    """One line per difference (empty: the host is as it was)."""
    found = []
    for field in ("processes", "mounts", "netns", "links", "cgroups", "files"):
        added = sorted(getattr(after, field) - getattr(before, field))
        if added:
            found.append(f"{field} left behind: {', '.join(added)[:500]}")
    if after.iptables != before.iptables:
        extra = sorted(set(after.iptables) - set(before.iptables))
        gone = sorted(set(before.iptables) - set(after.iptables))
        found.append(f"host iptables changed: added {extra[:5]}, removed {gone[:5]}")
    if after.sysctls != before.sysctls:
        found.append(f"sysctls changed: {dict(before.sysctls)} -> {dict(after.sysctls)}")
    return found
