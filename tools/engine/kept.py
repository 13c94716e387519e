"""What `pulumi destroy` (or an `up` that removes a site) leaves in the clusters on purpose,
and the kubectl commands that delete it.

Read from the stack's state before and after: every Kubernetes object marked retain-on-delete
(data volumes and the namespaces holding them; see components/README.md, "Data safety") that
the state no longer holds. Pulumi forgets these without deleting them, so afterwards only this
list says they are still there.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

PROVIDER_TYPE_PREFIX = "pulumi:providers:"


@dataclass(frozen=True)
class Kept:
    """One object left in a cluster, and the provider (cluster) it lives on."""

    urn: str
    kind: str
    namespace: str  # "" for cluster-scoped objects (a Namespace)
    name: str
    provider: str  # the provider resource's name: the federation's cluster
    context: str | None  # the provider's kubeconfig context, when it names one
    render_dir: str | None  # render mode: where the YAML was written, nothing was applied


def kept_objects(deployment: Mapping[str, Any]) -> list[Kept]:
    """Kubernetes objects that a destroy of this `pulumi stack export` deployment retains."""
    resources = deployment.get("resources") or []
    providers = {f"{r['urn']}::{r.get('id', '')}": r for r in resources if r["type"].startswith(PROVIDER_TYPE_PREFIX)}
    kept = []
    for resource in resources:
        if not resource.get("retainOnDelete") or not resource["type"].startswith("kubernetes:"):
            continue
        obj = resource.get("outputs") or resource.get("inputs") or {}
        provider = providers.get(resource.get("provider", ""), {})
        settings = provider.get("inputs") or {}
        meta = obj.get("metadata") or {}
        kept.append(Kept(
            urn=resource["urn"], kind=obj.get("kind", resource["type"].rsplit(":", 1)[-1]),
            namespace=meta.get("namespace") or "", name=meta.get("name", ""),
            provider=provider.get("urn", "::unknown").rsplit("::", 1)[-1],
            context=_plain(settings.get("context")), render_dir=_plain(settings.get("renderYamlToDirectory"))))
    return sorted(kept, key=lambda k: (k.provider, k.kind != "Namespace", k.namespace, k.name))


def released(before: Mapping[str, Any], after: Mapping[str, Any]) -> list[Kept]:
    """Retained objects of the `before` deployment that the `after` deployment no longer manages."""
    still = {r["urn"] for r in after.get("resources") or []}
    return [k for k in kept_objects(before) if k.urn not in still]


def _plain(value: Any) -> str | None:
    """A provider setting as text; secret (encrypted) settings are not shown."""
    return value if isinstance(value, str) and value else None


def report(kept: Iterable[Kept], rendered: Iterable[tuple[Path, Mapping[str, Any]]] = ()) -> list[str]:
    """Lines naming every kept object, then the commands that delete them (and their data) on purpose."""
    kept = list(kept)
    if not kept:
        return ["kept: nothing (no retained data volumes)"]
    files = {(doc["kind"], doc["metadata"].get("namespace") or "", doc["metadata"]["name"]): path
             for path, doc in rendered}
    lines = [f"kept on purpose (retain-on-delete, dataSafety): {len(kept)} objects, with their data"]
    commands: list[str] = []
    for provider in sorted({k.provider for k in kept}):
        here = [k for k in kept if k.provider == provider]
        first = here[0]
        if first.render_dir is not None:
            lines.append(f"  cluster {provider} (render mode: the YAML in {first.render_dir} was never applied "
                         "by Pulumi; where you applied it, delete it with the commands below)")
        else:
            lines.append(f"  cluster {provider}" + (f" (kubectl context {first.context})" if first.context else
                                                    " (use this cluster's kubeconfig)"))
        lines += [f"    {k.kind} {k.namespace + '/' if k.namespace else ''}{k.name}" for k in here]
        commands += _delete_commands(here, files)
    return [*lines, "to delete them on purpose (this deletes the data for good):", *commands]


def _delete_commands(kept: list[Kept], files: Mapping[tuple[str, str, str], Path]) -> list[str]:
    """Claims first (one command per namespace), then the namespaces; rendered objects by their file."""
    kubectl = "kubectl" + (f" --context {kept[0].context}" if kept[0].context else "")
    commands = []
    claims: dict[str, list[str]] = {}
    for k in sorted(kept, key=lambda k: k.kind == "Namespace"):  # a namespace's deletion takes its claims
        if (k.kind, k.namespace, k.name) in files:
            commands.append(f"  kubectl delete -f {files[(k.kind, k.namespace, k.name)]}")
        elif k.kind == "PersistentVolumeClaim":
            claims.setdefault(k.namespace, []).append(k.name)
    commands += [f"  {kubectl} -n {namespace} delete persistentvolumeclaim {' '.join(names)}"
                 for namespace, names in sorted(claims.items())]
    commands += [f"  {kubectl} delete namespace {k.name}" for k in kept
                 if k.kind == "Namespace" and (k.kind, k.namespace, k.name) not in files]
    return commands
