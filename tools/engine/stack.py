"""make up / preview / destroy: the real Pulumi engine on one stack of this project, offline.

    tools/stack up|preview|destroy|diff <stack>

`up` selects (or creates) the stack, runs `pulumi up --yes`, prints the stack
outputs and a summary of what was rendered; a consortium's stacks also leave the
public files for the other parties in out/<stack>/ (the hub's join-bundle.yaml, a
site stack's join/<site>.yaml). `preview` runs the program once
(`pulumi preview --json`), saves that machine form to out/<stack>/preview.json and
prints the human diff read from it (every step; changed properties with old and new
values; diagnostics; the change summary).
`diff` prints that human diff again from a saved out/<stack>/preview.json, with no
engine and no toolchain: the GitHub workflow runs `pulumi preview --json` once and
comments this on the pull request.
`destroy` removes everything `up` made except the data volumes marked
retain-on-delete (study data, SuperLink state) and the namespaces holding them:
Pulumi forgets them without deleting them (in render mode their manifests stay
in out/<stack>/), so it prints what was kept and the kubectl commands that
delete it on purpose (tools/engine/kept.py).
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from collections import Counter
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml

from components.exchange import BUNDLE_OUTPUT, REQUESTS_OUTPUT
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
    if "members" in outputs:  # a consortium's hub: it deploys no site
        lines = ["members admitted: " + (", ".join(f"{name} ({member['publicKeyFingerprint']}, {member['joinFile']})"
                                                   for name, member in sorted(outputs["members"].items())) or "none")]
    else:
        lines = ["sites: " + ", ".join(f"{name} (cluster {site['cluster']}, namespace {site['namespace']})"
                                       for name, site in sorted(outputs.get("sites", {}).items()))]
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


def write_exchange(render_root: Path, outputs: dict) -> list[str]:
    """A consortium stack's public files for the other parties, written under `render_root`: the hub's
    join bundle, a site stack's join requests (components/exchange.py). One line per file written."""
    written = []
    if BUNDLE_OUTPUT in outputs:
        path = render_root / "join-bundle.yaml"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(outputs[BUNDLE_OUTPUT])
        written.append(f"join bundle: {shown(path)} (public: hand it to every member; its site stack reads it "
                       "as flowerbed:bundle.file)")
    for site, text in sorted(outputs.get(REQUESTS_OUTPUT, {}).items()):
        path = render_root / "join" / f"{site}.yaml"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
        written.append(f"join request of {site}: {shown(path)} (public: the coordinator commits it into the "
                       "hub's members directory)")
    return written


def state(pulumi: Pulumi, *, secrets: bool = False) -> dict:
    """The stack's deployment (`pulumi stack export`, `--show-secrets` with `secrets`): what Pulumi manages
    right now."""
    exported = pulumi.run(["stack", "export", *(["--show-secrets"] if secrets else [])], capture=True).stdout
    return json.loads(exported).get("deployment") or {}


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
    print("\n".join([summary(render_root, outputs), *write_exchange(render_root, outputs)]))


OP_SYMBOLS = {"create": "+", "update": "~", "delete": "-", "replace": "+-", "create-replacement": "++",
              "delete-replaced": "--", "read": ">", "refresh": "~", "import": "=", "discard": "<"}
_PATH_PART = re.compile(r'\.?([^.\[\]"]+)|\[(\d+)\]|\["((?:[^"\\]|\\.)*)"\]')


def property_at(state: Mapping[str, Any] | None, path: str) -> Any:
    """The value at a property path of a preview's `detailedDiff` (`spec.ports[0]`, `data["a.yaml"]`), or None."""
    value: Any = (state or {}).get("inputs") or {}
    for match in _PATH_PART.finditer(path):
        key, index, quoted = match.groups()
        try:
            value = value[int(index)] if index is not None else value[quoted if quoted is not None else key]
        except (KeyError, IndexError, TypeError):
            return None
    return value


def _short(value: Any, width: int = 100) -> str:
    text = json.dumps(value, sort_keys=True)
    return text if len(text) <= width else text[: width - 3] + "..."


def parse_urn(urn: str) -> tuple[str, str]:
    """(resource type, resource name) from `urn:pulumi:<stack>::<project>::<parent$...$type>::<name>`."""
    _, _, qualified_type, name = urn.split("::", 3)
    return qualified_type.split("$")[-1], name


def human_diff(digest: Mapping[str, Any]) -> list[str]:
    """The `pulumi preview --json` digest as lines a person reads: one line per step that changes something
    (op, type, name), its changed properties with old and new inputs, then diagnostics and the counts."""
    lines = []
    for step in digest.get("steps") or []:
        if step["op"] == "same":
            continue
        resource_type, name = parse_urn(step["urn"])
        lines.append(f"{OP_SYMBOLS.get(step['op'], '?'):>2} {step['op']:<8} {resource_type}  {name}")
        for path, change in sorted((step.get("detailedDiff") or {}).items()):
            old, new = property_at(step.get("oldState"), path), property_at(step.get("newState"), path)
            kind = change.get("kind", "update")
            values = (_short(new) if kind.startswith("add") else _short(old) if kind.startswith("delete")
                      else f"{_short(old)} => {_short(new)}")
            lines.append(f"      {kind:<14} {path}: {values}")
        if step.get("replaceReasons"):
            lines.append(f"      replaced because of: {', '.join(step['replaceReasons'])}")
    for diagnostic in digest.get("diagnostics") or []:
        where = f"{diagnostic['urn'].rsplit('::', 1)[-1]}: " if diagnostic.get("urn") else ""
        lines.append(f"{where}{diagnostic.get('message', '').rstrip()}")  # the message starts with its severity
    counts = digest.get("changeSummary") or {}
    lines.append("Resources: " + (", ".join(f"{n} {op}" for op, n in sorted(counts.items())) or "no changes"))
    return lines


def preview(pulumi: Pulumi, render_root: Path) -> None:
    """One preview (the program runs once): the JSON digest saved, the human diff printed from it."""
    pulumi.select_or_init()
    machine = pulumi.run(["preview", "--json"], capture=True, check=False)
    if machine.returncode != 0 and not machine.stdout.strip().startswith("{"):
        sys.stderr.write(machine.stdout + machine.stderr)
        raise subprocess.CalledProcessError(machine.returncode, machine.args)
    render_root.mkdir(parents=True, exist_ok=True)
    target = render_root / "preview.json"
    target.write_text(machine.stdout)
    sys.stderr.write(machine.stderr)
    print("\n".join(human_diff(json.loads(machine.stdout))))
    print(f"\nJSON preview saved to {shown(target)}")
    if machine.returncode != 0:
        raise subprocess.CalledProcessError(machine.returncode, machine.args)


def destroy(pulumi: Pulumi, render_root: Path) -> None:
    pulumi.select_or_init()
    before = state(pulumi)  # once destroyed, the state no longer names what was retained
    pulumi.run(["destroy", "--yes"])
    print_released(before, {}, render_root)


def print_saved_diff(render_root: Path) -> int:
    """`diff`: the human diff of the preview saved in `render_root`; 1 when there is none to read."""
    saved = render_root / "preview.json"
    try:
        digest = json.loads(saved.read_text())
    except (OSError, json.JSONDecodeError) as err:
        print(f"tools/stack: no readable preview at {shown(saved)} ({err}); run `pulumi preview --json` "
              f"(or make preview) first", file=sys.stderr)
        return 1
    print("\n".join(human_diff(digest)))
    return 0


COMMANDS = {"up": up, "preview": preview, "destroy": destroy}
# Commands that read what a command above saved: no engine, no toolchain.
SAVED = {"diff": print_saved_diff}


def main(argv: list[str]) -> int:
    if len(argv) != 2 or argv[0] not in {**COMMANDS, **SAVED}:
        print(f"usage: tools/stack {{{'|'.join([*COMMANDS, *SAVED])}}} <stack>", file=sys.stderr)
        return 2
    command, stack = argv
    if command in SAVED:
        return SAVED[command](REPO / "out" / stack)
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
