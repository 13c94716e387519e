"""tools/engine/kept.py: what `make destroy` says it kept, read from a state export (no engine needed)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from tools.engine.kept import Kept, kept_objects, released, report

FEDERATION = "urn:pulumi:prod::flowerbed::flowerbed:index:Federation"


def provider(name: str, **inputs: Any) -> dict[str, Any]:
    return {"urn": f"{FEDERATION}$pulumi:providers:kubernetes::{name}", "id": f"{name}-id",
            "type": "pulumi:providers:kubernetes", "inputs": inputs}


def k8s(kind: str, name: str, namespace: str | None, on: str, *, retained: bool) -> dict[str, Any]:
    meta = {"name": name, **({"namespace": namespace} if namespace else {})}
    resource_name = f"{namespace}-{name}" if namespace else name  # the program's names are unique
    resource = {"urn": f"{FEDERATION}$kubernetes:core/v1:{kind}::{resource_name}", "type": f"kubernetes:core/v1:{kind}",
                "provider": f"{FEDERATION}$pulumi:providers:kubernetes::{on}::{on}-id",
                "outputs": {"kind": kind, "metadata": meta}}
    return {**resource, "retainOnDelete": True} if retained else resource


STATE = {"resources": [
    provider("demo-hub", context="prod-hub",
             kubeconfig={"4dabf18193072939515e22adb298388d": "1b47061264138c4ac30d75fd1eb44270", "ciphertext": "x"}),
    provider("demo-hospitals", renderYamlToDirectory="out/prod/hospitals"),
    k8s("Namespace", "demo-server", None, "demo-hub", retained=True),
    k8s("PersistentVolumeClaim", "superlink-state", "demo-server", "demo-hub", retained=True),
    k8s("PersistentVolumeClaim", "serverapp-artifacts", "demo-server", "demo-hub", retained=True),
    # a claim in an existing namespace the program never owned
    k8s("PersistentVolumeClaim", "study-default-tabular", "pacs", "demo-hub", retained=True),
    k8s("Deployment", "superlink", "demo-server", "demo-hub", retained=False),
    k8s("Namespace", "demo-hospital-a", None, "demo-hospitals", retained=True),
    k8s("PersistentVolumeClaim", "study-default-tabular", "demo-hospital-a", "demo-hospitals", retained=True),
    k8s("Namespace", "demo-lab-c", None, "demo-hospitals", retained=False),
]}


def test_kept_objects_are_the_retained_kubernetes_objects_with_their_cluster() -> None:
    kept = kept_objects(STATE)
    assert [(k.provider, k.kind, k.namespace, k.name) for k in kept] == [
        ("demo-hospitals", "Namespace", "", "demo-hospital-a"),
        ("demo-hospitals", "PersistentVolumeClaim", "demo-hospital-a", "study-default-tabular"),
        ("demo-hub", "Namespace", "", "demo-server"),
        ("demo-hub", "PersistentVolumeClaim", "demo-server", "serverapp-artifacts"),
        ("demo-hub", "PersistentVolumeClaim", "demo-server", "superlink-state"),
        ("demo-hub", "PersistentVolumeClaim", "pacs", "study-default-tabular"),
    ]
    assert {(k.provider, k.context, k.render_dir) for k in kept} == {
        ("demo-hub", "prod-hub", None), ("demo-hospitals", None, "out/prod/hospitals")}


def test_report_names_every_kept_object_and_the_exact_commands_that_delete_it() -> None:
    rendered = [(Path("out/prod/hospitals/1-manifest/v1-namespace-demo-hospital-a.yaml"),
                 {"kind": "Namespace", "metadata": {"name": "demo-hospital-a"}}),
                (Path("out/prod/hospitals/1-manifest/v1-pvc.yaml"),
                 {"kind": "PersistentVolumeClaim",
                  "metadata": {"name": "study-default-tabular", "namespace": "demo-hospital-a"}})]
    lines = report(kept_objects(STATE), rendered)
    text = "\n".join(lines)
    for shown in ("Namespace demo-server", "PersistentVolumeClaim demo-server/superlink-state",
                  "PersistentVolumeClaim pacs/study-default-tabular", "Namespace demo-hospital-a"):
        assert f"    {shown}" in lines, shown
    commands = lines[lines.index("to delete them on purpose (this deletes the data for good):") + 1:]
    assert commands == [
        # render mode: the files the user applied; claims before the namespace that holds them
        "  kubectl delete -f out/prod/hospitals/1-manifest/v1-pvc.yaml",
        "  kubectl delete -f out/prod/hospitals/1-manifest/v1-namespace-demo-hospital-a.yaml",
        "  kubectl --context prod-hub -n demo-server delete persistentvolumeclaim serverapp-artifacts superlink-state",
        "  kubectl --context prod-hub -n pacs delete persistentvolumeclaim study-default-tabular",
        "  kubectl --context prod-hub delete namespace demo-server",
    ]
    assert "kubectl context prod-hub" in text and "render mode" in text
    assert "ciphertext" not in text and "demo-lab-c" not in text and "superlink\n" not in text


def test_a_stack_without_retained_objects_says_nothing_was_kept() -> None:
    assert report(kept_objects({"resources": []})) == ["kept: nothing (no retained data volumes)"]
    assert report([Kept("urn:x", "Namespace", "", "x", "demo-hub", None, None)])[1] == (
        "  cluster demo-hub (use this cluster's kubeconfig)")


def test_released_objects_are_the_retained_ones_the_new_state_no_longer_holds() -> None:
    # An `up` that removed hospital-a: its namespace and claim stay in the cluster, out of the state.
    after = {"resources": [r for r in STATE["resources"] if "hospital-a" not in r["urn"]]}
    assert [(k.kind, k.name) for k in released(STATE, after)] == [
        ("Namespace", "demo-hospital-a"), ("PersistentVolumeClaim", "study-default-tabular")]
    assert released(STATE, STATE) == []
    assert released(STATE, {}) == kept_objects(STATE)  # destroy
