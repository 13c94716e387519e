"""components/config/: the dev stack parses; each config that cannot work names its field."""

from __future__ import annotations

import copy
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from component_harness import ROOT, dev_raw_config
from components.config import ConfigError, flowerbed_values, parse, stack_file

Raw = dict[str, Any]


def test_dev_stack_matches_the_shared_contract() -> None:
    config = parse(dev_raw_config())
    assert config.federation == "demo"
    assert {c.name: c.render_dir for c in config.clusters.values()} == {
        "hub": "out/dev/hub", "hospitals": "out/dev/hospitals"}
    assert (config.server.cluster, config.server.endpoint) == ("hub", "fl.demo.example.org")
    assert [(s.name, s.cluster, s.gpus) for s in config.sites] == [
        ("hospital-a", "hospitals", 1), ("hospital-b", "hospitals", 0), ("lab-c", "hub", 0)]


def test_namespaces_default_from_the_federation_name() -> None:
    config = parse(dev_raw_config())
    assert config.server.namespace == "demo-server"
    assert [s.namespace for s in config.sites] == ["demo-hospital-a", "demo-hospital-b", "demo-lab-c"]


def test_defaults_are_safe() -> None:
    raw = dev_raw_config()
    del raw["images"]["pullPolicy"]
    config = parse(raw)
    assert config.images.pull_policy == "IfNotPresent"
    assert config.data_safety.retain_on_delete is True
    assert config.pki.renew_before_days < config.pki.validity_days <= config.pki.ca_validity_days
    assert config.server.public_port == 443
    assert config.server.pending_timeout == 600 and all(s.pending_timeout == 600 for s in config.sites)
    assert all(d.mode == "ro" for s in config.sites for d in s.study_data)


def test_numeric_quantities_are_accepted_as_strings() -> None:
    raw = dev_raw_config()
    raw["sites"][0]["cpu"] = 4
    assert parse(raw).sites[0].cpu == "4"


def _set(path: str, value: Any) -> Callable[[Raw], None]:
    """A mutation that sets `path` (dots and [i]) in the raw config; `...` deletes it."""
    def mutate(raw: Raw) -> None:
        keys: list[Any] = [int(k) if k.isdigit() else k for k in path.replace("[", ".").replace("]", "").split(".")]
        node = raw
        for key in keys[:-1]:
            node = node[key]
        if value is ...:
            del node[keys[-1]]
        else:
            node[keys[-1]] = value
    return mutate


BAD_INPUTS = [
    # (mutation, the field the message must name, what the message must say is allowed)
    (_set("sites[1].cluster", "nowhere"), "sites[1].cluster", "hub, hospitals"),
    (_set("server.cluster", "nowhere"), "server.cluster", "configured clusters"),
    (_set("sites[2].name", "hospital-a"), "sites[2].name", "unique"),
    (_set("sites[1].name", "Hospital_A"), "sites[1].name", "DNS label"),
    (_set("sites[0].name", "a" * 64), "sites[0].name", "max 63"),
    (_set("sites[0].gpus", -1), "sites[0].gpus", "at least 0"),
    (_set("sites[0].gpus", 1.5), "sites[0].gpus", "integer"),
    (_set("server.endpoint", ...), "server.endpoint", "required"),
    (_set("server.endpoint", "fl demo"), "server.endpoint", "DNS name"),
    (_set("sites[0].studyData[0].mode", "readonly"), "sites[0].studyData[0].mode", "ro, rw"),
    (_set("sites[0].studyData[0].existingClaim", "pacs"), "sites[0].studyData[0]", "exactly one of size"),
    (_set("sites[1].studyData[0].size", ...), "sites[1].studyData[0]", "exactly one of size"),
    (_set("sites[0].cpu", "lots"), "sites[0].cpu", "Kubernetes quantity"),
    (_set("sites[0].maxConcurrentTasks", 0), "sites[0].maxConcurrentTasks", "at least 1"),
    (_set("sites[0].pendingTimeout", 29), "sites[0].pendingTimeout", "an integer of at least 30"),
    (_set("sites[1].pendingTimeout", "10m"), "sites[1].pendingTimeout", "an integer of at least 30"),
    (_set("server.pendingTimeout", 0), "server.pendingTimeout", "an integer of at least 30"),
    (_set("sites[0].gpu", 1), "sites[0].gpu", "allowed keys are"),
    (_set("sites[0].tolerations", [{"key": "x", "effekt": "NoSchedule"}]), "sites[0].tolerations[0].effekt",
     "allowed keys"),
    (_set("sites[0].nodeSelector", {"bad key!": "x"}), "sites[0].nodeSelector", "label keys"),
    (_set("sites[2].namespace", "demo-server"), "sites[2].namespace", "server.namespace"),
    (_set("sites[1].namespace", "demo-hospital-a"), "sites[1].namespace", "sites[0].namespace"),
    (_set("server.serviceType", "Ingress"), "server.serviceType", "LoadBalancer, NodePort, ClusterIP"),
    (_set("server.loadBalancerIP", "not-an-ip"), "server.loadBalancerIP", "IP address"),
    (_set("server.waitForAddress", "no"), "server.waitForAddress", "true or false"),
    (lambda raw: raw["server"].update(serviceType="NodePort", waitForAddress=False), "server.waitForAddress",
     "only allowed with serviceType LoadBalancer"),
    (_set("server.publicPort", 70000), "server.publicPort", "at most 65535"),
    (_set("server.nodePort", 443), "server.nodePort", "at least 30000 and at most 32767"),
    (lambda raw: raw["server"].update(serviceType="ClusterIP", nodePort=30443), "server.nodePort",
     "only allowed with serviceType NodePort or LoadBalancer"),
    (_set("server.endpointCidrs", ["10.0.0.0/33"]), "server.endpointCidrs[0]", "CIDR"),
    (_set("images.pullPolicy", "Sometimes"), "images.pullPolicy", "Always, IfNotPresent, Never"),
    (_set("images.job", ...), "images.job", "required"),
    (_set("clusters.hub.kubeconfig", "apiVersion: v1"), "clusters.hub", "exactly one of renderDir"),
    (_set("clusters.hub", {}), "clusters.hub", "make cluster STACK=<stack>"),
    (_set("clusters.hub.context", "x"), "clusters.hub.context", "only allowed with kubeconfig"),
    (_set("clusters.Hub", {"renderDir": "out"}), "clusters.Hub", "DNS label"),
    (_set("federation", "Demo"), "federation", "DNS label"),
    (_set("sites", []), "sites", "required"),
    (_set("pki", {"validityDays": 30, "renewBeforeDays": 30}), "pki.renewBeforeDays", "fewer days than"),
    (_set("pki", {"caValidityDays": 100, "validityDays": 365}), "pki.validityDays", "at most pki.caValidityDays"),
    (_set("dataSafety", {"retainOnDelete": "yes"}), "dataSafety.retainOnDelete", "true or false"),
    (_set("flavour", "vanilla"), "flavour", "allowed keys are"),
    (_set("sites[0].namespace", {"name": "pacs", "existing": "yes"}), "sites[0].namespace.existing", "true or false"),
    (_set("sites[0].namespace", {"existing": True}), "sites[0].namespace.name", "required"),
    (_set("sites[0].namespace", {"name": "pacs", "owned": False}), "sites[0].namespace.owned", "allowed keys"),
    (_set("server.namespace", {"name": "Shared", "existing": True}), "server.namespace.name", "DNS label"),
    (_set("sites[1].namespace", {"name": "demo-hospital-a", "existing": True}), "sites[1].namespace",
     "sites[0].namespace"),
    (_set("sites[0].namespace", "a" * 54), "sites[0].namespace", "at most 53 characters"),
    (_set("sites[1].namespace", "demo-hospital-a-supernode"), "sites[1].namespace",
     "sites[0].namespace (its SuperNode's)"),
    (_set("clusters.hub.dns", {"nodeLocal": True}), "clusters.hub.dns.nodeLocal", "allowed keys are"),
    (_set("clusters.hub.dns", {"nodeLocalCache": "yes"}), "clusters.hub.dns.nodeLocalCache", "true or false"),
    (_set("clusters.hub.dns", {"cidrs": []}), "clusters.hub.dns.cidrs", "non-empty list"),
    (_set("clusters.hub.dns", {"cidrs": "169.254.20.10/32"}), "clusters.hub.dns.cidrs", "list of CIDRs"),
    (_set("clusters.hub.dns", {"cidrs": ["dns.local"]}), "clusters.hub.dns.cidrs[0]", "CIDR"),
    (_set("clusters.hub.dns", {"podLabels": {}}), "clusters.hub.dns.podLabels", "at least one label"),
    (_set("clusters.hub.dns", {"namespace": "Kube_System"}), "clusters.hub.dns.namespace", "DNS label"),
]


@pytest.mark.parametrize(("mutate", "field", "allowed"), BAD_INPUTS,
                         ids=[f"{field}:{allowed}" for _, field, allowed in BAD_INPUTS])
def test_bad_input_names_the_field_and_what_is_allowed(mutate: Callable[[Raw], None], field: str,
                                                       allowed: str) -> None:
    raw = copy.deepcopy(dev_raw_config())
    mutate(raw)
    with pytest.raises(ConfigError) as err:
        parse(raw)
    message = str(err.value)
    assert message.startswith(f"{field}:") or message.startswith(f"{field}."), message
    assert allowed in message, message


def test_study_data_may_not_repeat_a_dataset() -> None:
    raw = dev_raw_config()
    raw["sites"][0]["studyData"].append(dict(raw["sites"][0]["studyData"][0]))
    with pytest.raises(ConfigError, match=r"sites\[0\]\.studyData\[1\]: default/tabular is listed twice"):
        parse(raw)


def test_dns_defaults_to_kube_dns_and_admits_node_local_dns_cache_when_asked() -> None:
    raw = dev_raw_config()
    raw["clusters"]["hub"]["dns"] = {"nodeLocalCache": True, "cidrs": ["10.96.0.53/32", "169.254.20.10/32"]}
    clusters = parse(raw).clusters
    default = clusters["hospitals"].dns
    assert (default.namespace, dict(default.pod_labels), default.cidrs) == ("kube-system", {"k8s-app": "kube-dns"}, ())
    assert clusters["hub"].dns.cidrs == ("169.254.20.10/32", "10.96.0.53/32")


def test_a_namespace_may_be_an_existing_one_the_program_does_not_own() -> None:
    raw = dev_raw_config()
    raw["sites"][0]["namespace"] = {"name": "pacs", "existing": True}
    raw["sites"][1]["namespace"] = {"name": "radiology"}
    raw["server"]["namespace"] = "fl-server"
    config = parse(raw)
    assert [(s.namespace, s.existing_namespace) for s in config.sites] == [
        ("pacs", True), ("radiology", False), ("demo-lab-c", False)]
    assert (config.server.namespace, config.server.existing_namespace) == ("fl-server", False)


def test_a_stack_file_is_read_as_the_engine_hands_it_and_a_bad_one_is_named(tmp_path: Path) -> None:
    """What tools read without the engine (make cluster; a stack file may be gone after `pulumi stack rm`)."""
    config = stack_file(ROOT / "Pulumi.dev.yaml")
    assert config["pulumi:disable-default-providers"] == ["kubernetes"]
    assert flowerbed_values(config) == dev_raw_config()
    with pytest.raises(ConfigError, match=r"^Pulumi\.gone\.yaml: no such stack file in .*`pulumi stack rm` deletes it"):
        stack_file(tmp_path / "Pulumi.gone.yaml")
    (tmp_path / "Pulumi.list.yaml").write_text("- config\n")
    with pytest.raises(ConfigError, match=r"^Pulumi\.list\.yaml: not a stack file \(expected a mapping with a config:"):
        stack_file(tmp_path / "Pulumi.list.yaml")
    (tmp_path / "Pulumi.empty.yaml").write_text("")
    assert stack_file(tmp_path / "Pulumi.empty.yaml") == {}
