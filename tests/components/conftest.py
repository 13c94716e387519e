"""Fixtures: the dev stack and a generated 20-site federation, each declared once under mocks."""

from __future__ import annotations

from typing import Any

import pytest

from components.config import FederationConfig, parse

from component_harness import Deployment, deploy, dev_raw_config, large_raw_config


@pytest.fixture(scope="session")
def dev_config() -> FederationConfig:
    return parse(dev_raw_config())


@pytest.fixture(scope="session")
def dev(dev_config: FederationConfig) -> Deployment:
    return deploy(dev_config)


@pytest.fixture(scope="session")
def large_config() -> FederationConfig:
    return parse(large_raw_config())


@pytest.fixture(scope="session")
def large(large_config: FederationConfig) -> Deployment:
    return deploy(large_config)


def variant_raw_config() -> dict[str, Any]:
    """The dev stack with every optional knob turned away from its default."""
    raw = dev_raw_config()
    raw["images"].update(pullPolicy="Always", pullSecrets=["regcred"])
    raw["server"].update(serviceType="LoadBalancer", loadBalancerIP="203.0.113.7", publicPort=8443,
                         serviceAnnotations={"example.org/lb": "internal"}, endpointCidrs=["203.0.113.7/32"],
                         waitForAddress=False, pendingTimeout=120, nodePort=31443)
    raw["sites"][2]["pendingTimeout"] = 45
    raw["dataSafety"] = {"retainOnDelete": False, "protect": True}
    # hub: NodeLocal DNSCache and a DNS server by address next to CoreDNS under its own labels.
    raw["clusters"]["hub"]["dns"] = {"nodeLocalCache": True, "cidrs": ["10.96.0.53/32"], "namespace": "dns",
                                     "podLabels": {"app": "coredns"}}
    return raw


@pytest.fixture(scope="session")
def variant() -> Deployment:
    return deploy(parse(variant_raw_config()))


@pytest.fixture(scope="session")
def grown() -> Deployment:
    """The dev stack after unrelated edits: a GPU count changed and a site added."""
    raw = dev_raw_config()
    raw["sites"][0]["gpus"] = 4
    raw["sites"].append({"name": "clinic-d", "cluster": "hub"})
    return deploy(parse(raw))
