"""Fixtures: the dev stack and a generated 20-site federation, each declared once under mocks."""

from __future__ import annotations

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
