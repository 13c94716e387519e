"""make up / preview / destroy: the real Pulumi engine on one stack of this project, offline.

    tools/stack up|preview|destroy <stack>

`up` selects (or creates) the stack, runs `pulumi up --yes`, prints the stack
outputs and a summary of what was rendered. `preview` prints the human diff and
saves the machine form (`pulumi preview --json`) to out/<stack>/preview.json.
`destroy` removes everything `up` made except the data volumes marked
retain-on-delete (study data, SuperLink state) and the namespaces holding them:
Pulumi forgets them without deleting them (in render mode their manifests stay
in out/<stack>/), so it prints what was kept and the kubectl commands that
delete it on purpose (tools/engine/kept.py).
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections import Counter
from pathlib import Path

import yaml

from tools.engine.kept import released, report
from tools.engine.offline import REPO, Pulumi, ToolchainMissing, check_toolchain


def rendered_manifests(render_root: Path) -> list[tuple[Path, dict]]:
    """Every Kubernetes object the provider wrote under `render_root` (one or more per YAML file)."""
    found = []
    for path in sorted(render_root.rglob("*.yaml")):
        for doc in yaml.safe_load_all(path.read_text()):
            if isinstance(doc, dict) and "kind" in doc:
                found.append((path, doc))
    return found


def shown(path: Path) -> Path:
    return path.relative_to(REPO) if path.is_relative_to(REPO) else path


def summary(render_root: Path, outputs: dict) -> str:
    sites = outputs.get("sites", {})
    lines = ["sites: " + ", ".join(f"{name} (cluster {site['cluster']}, namespace {site['namespace']})"
                                   for name, site in sorted(sites.items()))]
    manifests = rendered_manifests(render_root)
    kubeconfigs = sorted(render_root.glob("*.kubeconfig"))  # written by make cluster for a live stack
    if not manifests and kubeconfigs:
        return "\n".join([*lines, "live clusters (make cluster); see the workloads with:", *(
            f"  kubectl --kubeconfig {shown(path)} get deployments,jobs,pvc -A -l app.kubernetes.io/part-of=flowerbed"
            for path in kubeconfigs)])
    if not manifests:
        return "\n".join([*lines, f"no manifests under {shown(render_root)}"])
    clusters = Counter(path.relative_to(render_root).parts[0] for path, _ in manifests)
    namespaces = sorted({doc["metadata"]["name"] for _, doc in manifests if doc["kind"] == "Namespace"})
    kinds = Counter(doc["kind"] for _, doc in manifests)
    files = {path for path, _ in manifests}
    lines += [
        f"rendered {len(manifests)} objects in {len(files)} files under {shown(render_root)}/",
        "  per cluster: " + ", ".join(f"{name} {count}" for name, count in sorted(clusters.items())),
        "  namespaces: " + ", ".join(namespaces),
        "  kinds: " + ", ".join(f"{kind} {count}" for kind, count in sorted(kinds.items())),
    ]
    return "\n".join(lines)


def state(pulumi: Pulumi) -> dict:
    """The stack's deployment (`pulumi stack export`): what Pulumi manages right now."""
    return json.loads(pulumi.run(["stack", "export"], capture=True).stdout).get("deployment") or {}


def print_released(before: dict, after: dict, render_root: Path) -> None:
    """Name what Pulumi stopped managing but left in the clusters on purpose (retained data)."""
    left = rendered_manifests(render_root) if render_root.exists() else []
    print()
    print("\n".join(report(released(before, after), [(shown(path), doc) for path, doc in left])))


def up(pulumi: Pulumi, render_root: Path) -> None:
    pulumi.select_or_init()
    before = state(pulumi)
    pulumi.run(["up", "--yes"])
    # A removed site's data volumes (and their namespace) stay: say so, with how to delete them.
    if released(before, after := state(pulumi)):
        print_released(before, after, render_root)
    outputs = json.loads(pulumi.run(["stack", "output", "--json"], capture=True).stdout)
    print("\nstack outputs:")
    print(json.dumps(outputs, indent=2, sort_keys=True))
    print()
    print(summary(render_root, outputs))


def preview(pulumi: Pulumi, render_root: Path) -> None:
    pulumi.select_or_init()
    pulumi.run(["preview", "--diff"])
    machine = pulumi.run(["preview", "--json"], capture=True)
    render_root.mkdir(parents=True, exist_ok=True)
    target = render_root / "preview.json"
    target.write_text(machine.stdout)
    print(f"\nJSON preview saved to {shown(target)}")


def destroy(pulumi: Pulumi, render_root: Path) -> None:
    pulumi.select_or_init()
    before = state(pulumi)  # once destroyed, the state no longer names what was retained
    pulumi.run(["destroy", "--yes"])
    print_released(before, {}, render_root)


COMMANDS = {"up": up, "preview": preview, "destroy": destroy}


def main(argv: list[str]) -> int:
    if len(argv) != 2 or argv[0] not in COMMANDS:
        print(f"usage: tools/stack {{{'|'.join(COMMANDS)}}} <stack>", file=sys.stderr)
        return 2
    command, stack = argv
    try:
        check_toolchain()
    except ToolchainMissing as err:
        print(f"tools/stack: {err}", file=sys.stderr)
        return 1
    try:
        COMMANDS[command](Pulumi(REPO, stack), REPO / "out" / stack)
    except subprocess.CalledProcessError as err:  # pulumi already printed its own diagnostics
        print(f"tools/stack: pulumi {command} failed (exit {err.returncode})", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
