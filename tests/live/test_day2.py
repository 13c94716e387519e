"""Day 2 on live API servers (tests run in file order): certificate renewal, a growing claim,
a removed site, and destroy, with the data-safety promise checked by claim UIDs.

The local stack with two changes made before `up`: lab-c lives in an existing namespace the
program must not own (`partner-lab`, made here first), and SuperLink's state claim uses a
WaitForFirstConsumer StorageClass with expansion, the default kind on the big clouds.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
import yaml

from tests.live.conftest import LiveStack, condition, live_stack, say, wait_for
from tools.engine import stack as stack_commands

pytestmark = pytest.mark.live

SERVER_NS = "demo-server"
EXISTING_NS = "partner-lab"
LATE_BINDING = "late-binding"
MARKER = {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "data-marker"}, "data": {"written": "by hand"}}


def prepare(config: dict[str, Any]) -> None:
    lab_c = next(site for site in config["flowerbed:sites"] if site["name"] == "lab-c")
    lab_c["namespace"] = {"name": EXISTING_NS, "existing": True}
    config["flowerbed:server"]["stateStorage"] = {"size": "5Gi", "storageClass": LATE_BINDING}


def before_up(live: LiveStack) -> None:
    hub = live.kubectl("hub")
    hub.run("create", "namespace", EXISTING_NS)
    hub.run("label", "namespace", EXISTING_NS, "owner=partner")
    hub.run("apply", "-n", EXISTING_NS, "-f", "-", stdin=yaml.safe_dump(MARKER))
    # make cluster made the class binding at once; replace it with a late-binding one (classes are immutable).
    hub.run("delete", "storageclass", LATE_BINDING)
    hub.run("apply", "-f", "-", stdin=yaml.safe_dump({
        "apiVersion": "storage.k8s.io/v1", "kind": "StorageClass", "metadata": {"name": LATE_BINDING},
        "provisioner": "kubernetes.io/no-provisioner", "volumeBindingMode": "WaitForFirstConsumer",
        "allowVolumeExpansion": True}))


@pytest.fixture(scope="module")
def day2(tmp_path_factory: pytest.TempPathFactory, request: pytest.FixtureRequest) -> Iterator[LiveStack]:
    with live_stack(tmp_path_factory.mktemp("day2"), change=prepare, before_up=before_up) as live:
        say(request, f"\n`pulumi up` (day-2 stack): {live.up():.1f} s")
        yield live


def replica_sets(live: LiveStack) -> dict[tuple[str, str], set[str]]:
    """(namespace, Deployment) -> names of its ReplicaSets, on both clusters."""
    found: dict[tuple[str, str], set[str]] = {}
    for cluster in live.planes:
        for rs in live.kubectl(cluster).items("replicasets"):
            owner = next((o["name"] for o in rs["metadata"].get("ownerReferences", []) if o["kind"] == "Deployment"), None)
            if owner and rs["metadata"]["namespace"] != "kube-system":
                found.setdefault((rs["metadata"]["namespace"], owner), set()).add(rs["metadata"]["name"])
    return found


def claims(live: LiveStack) -> dict[tuple[str, str, str], str]:
    """(cluster, namespace, claim) -> UID of every claim not being deleted."""
    return {(cluster, c["metadata"]["namespace"], c["metadata"]["name"]): c["metadata"]["uid"]
            for cluster in live.planes for c in live.kubectl(cluster).items("pvc")
            if not c["metadata"].get("deletionTimestamp")}


def deletes_claim(printed: str, namespace: str, claim: str) -> bool:
    """Whether the printed kubectl commands delete `namespace/claim` on purpose."""
    return any(f"-n {namespace} delete persistentvolumeclaim" in line
               and claim in line.split("delete persistentvolumeclaim", 1)[1].split() for line in printed.splitlines())


def namespace_phase(live: LiveStack, cluster: str, name: str) -> str:
    result = live.kubectl(cluster).run("get", "namespace", name, "-o", "jsonpath={.status.phase}", check=False)
    return result.stdout if result.returncode == 0 else "absent"


def test_the_existing_namespace_is_used_not_owned(day2: LiveStack) -> None:
    hub = day2.kubectl("hub")
    labels = hub.json("get", "namespace", EXISTING_NS)["metadata"]["labels"]
    assert labels["owner"] == "partner" and "pod-security.kubernetes.io/enforce" not in labels
    deployments = {d["metadata"]["name"] for d in hub.items("deployments", EXISTING_NS)}
    assert deployments == {"clientapp-executor"}


def test_a_late_binding_claim_binds_when_superlink_is_scheduled(day2: LiveStack) -> None:
    claim = day2.kubectl("hub").json("get", "pvc", "superlink-state", "-n", SERVER_NS)
    assert claim["spec"]["storageClassName"] == LATE_BINDING and claim["status"]["phase"] == "Bound"


def test_renewal_rolls_exactly_the_pods_that_mount_a_renewed_certificate(day2: LiveStack) -> None:
    before = replica_sets(day2)
    # Inside the renewal window: every certificate has ~365 days left, renewal starts at 400.
    day2.copy.change_config(lambda config: config.__setitem__("flowerbed:pki", {"validityDays": 500, "renewBeforeDays": 400}))
    day2.up()
    after = replica_sets(day2)
    rolled = {key for key in after if after[key] != before.get(key)}
    # SuperLink (server certificate) and each SuperNode (its Runtime API certificate); the CA is unchanged,
    # so the executors, which mount only the CA and their config, keep their pods.
    assert rolled == {(SERVER_NS, "superlink"), *((f"{ns}-supernode", "supernode") for ns in (
        "demo-hospital-a", "demo-hospital-b", f"{EXISTING_NS}"))}
    for cluster in day2.planes:
        for deployment in day2.kubectl(cluster).items("deployments"):
            wait_for(lambda d=deployment, c=cluster: condition(day2.kubectl(c).json(
                "get", "deployment", d["metadata"]["name"], "-n", d["metadata"]["namespace"]), "Available") == "True",
                30, f"{deployment['metadata']['name']} Available after the roll")
    result = day2.copy.pulumi.run(["preview", "--expect-no-changes"], capture=True, check=False)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr


def test_growing_a_claim_on_a_late_binding_class_does_not_hang_up(day2: LiveStack) -> None:
    day2.copy.change_config(lambda config: config["flowerbed:server"]["stateStorage"].update(size="6Gi"))
    # The pinned provider, unpatched, waits 5 minutes here for a `Pending` the bound claim never shows, then fails.
    seconds = day2.up()
    assert seconds < 240, f"up took {seconds:.0f} s"
    claim = day2.kubectl("hub").json("get", "pvc", "superlink-state", "-n", SERVER_NS)
    assert claim["spec"]["resources"]["requests"]["storage"] == "6Gi"


def test_removing_a_site_keeps_its_data_and_namespace_and_drops_its_supernode(
        day2: LiveStack, capfd: pytest.CaptureFixture[str]) -> None:
    hospitals = day2.kubectl("hospitals")
    hospitals.run("apply", "-n", "demo-hospital-b", "-f", "-", stdin=yaml.safe_dump(MARKER))
    uid = hospitals.json("get", "pvc", "study-default-tabular", "-n", "demo-hospital-b")["metadata"]["uid"]
    job_before = {j["metadata"]["name"] for j in day2.kubectl("hub").items("jobs", SERVER_NS)}
    day2.copy.change_config(lambda config: config.__setitem__(
        "flowerbed:sites", [s for s in config["flowerbed:sites"] if s["name"] != "hospital-b"]))
    stack_commands.up(day2.copy.pulumi, day2.copy.render_root)
    printed = capfd.readouterr().out
    assert hospitals.json("get", "pvc", "study-default-tabular", "-n", "demo-hospital-b")["metadata"]["uid"] == uid
    assert namespace_phase(day2, "hospitals", "demo-hospital-b") == "Active"
    assert hospitals.json("get", "configmap", "data-marker", "-n", "demo-hospital-b")["data"] == MARKER["data"]
    assert namespace_phase(day2, "hospitals", "demo-hospital-b-supernode") in ("Terminating", "absent")
    assert deletes_claim(printed, "demo-hospital-b", "study-default-tabular"), printed
    jobs = {j["metadata"]["name"]: j for j in day2.kubectl("hub").items("jobs", SERVER_NS)}
    new = set(jobs) - job_before
    assert len(new) == 1 and condition(jobs[new.pop()], "Complete") == "True"


def test_destroy_keeps_every_retained_claim_and_the_namespaces_holding_them(
        day2: LiveStack, capfd: pytest.CaptureFixture[str]) -> None:
    before = claims(day2)
    # The SuperLink's state, the ServerApp's artifacts, hospital-a's and (removed) hospital-b's study
    # data, and every site's ClientApp state, removed hospital-b's included.
    assert set(before) == {
        ("hub", SERVER_NS, "superlink-state"), ("hub", SERVER_NS, "serverapp-artifacts"),
        ("hospitals", "demo-hospital-a", "study-default-tabular"),
        ("hospitals", "demo-hospital-b", "study-default-tabular"),
        ("hospitals", "demo-hospital-a", "clientapp-state"), ("hospitals", "demo-hospital-b", "clientapp-state"),
        ("hub", EXISTING_NS, "clientapp-state")}
    stack_commands.destroy(day2.copy.pulumi, day2.copy.render_root)
    printed = capfd.readouterr().out
    assert claims(day2) == before
    for cluster, ns in (("hub", SERVER_NS), ("hospitals", "demo-hospital-a"), ("hospitals", "demo-hospital-b"),
                        ("hub", EXISTING_NS)):
        assert namespace_phase(day2, cluster, ns) == "Active", ns
    for cluster, ns in (("hub", f"{EXISTING_NS}-supernode"), ("hospitals", "demo-hospital-a-supernode")):
        assert namespace_phase(day2, cluster, ns) in ("Terminating", "absent"), ns
    hub = day2.kubectl("hub")
    assert hub.json("get", "namespace", EXISTING_NS)["metadata"]["labels"]["owner"] == "partner"
    assert hub.json("get", "configmap", "data-marker", "-n", EXISTING_NS)["data"] == MARKER["data"]
    assert not [d for c in day2.planes for d in day2.kubectl(c).items("deployments")
                if d["metadata"]["namespace"] != "kube-system"], "destroy left workloads behind"
    for claim in ("superlink-state", "serverapp-artifacts"):
        assert deletes_claim(printed, SERVER_NS, claim), printed
