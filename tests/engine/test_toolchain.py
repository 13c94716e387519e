"""`make toolchain`: what it installed matches what the pinned Python packages ask for."""

from __future__ import annotations

import json
import subprocess
from importlib import metadata

import pytest

from tools.engine.offline import REPO, TOOLCHAIN_BIN, offline_env
from tools.engine.toolchain import non_local_replaces, wanted_versions

pytestmark = pytest.mark.engine


def test_only_replaces_pointing_at_other_module_versions_are_repeated() -> None:
    go_mod = """module example.com/m

replace github.com/x/sdk/v3 => ../sdk

replace github.com/atotto/clipboard => github.com/tgummerer/clipboard v0.0.0-20241001131231-d02d263e614e

replace (
	github.com/a/b => ./b // local
	github.com/c/d v1.0.0 => github.com/e/d v1.2.0
)
"""
    assert non_local_replaces(go_mod) == [
        "github.com/atotto/clipboard => github.com/tgummerer/clipboard v0.0.0-20241001131231-d02d263e614e",
        "github.com/c/d v1.0.0 => github.com/e/d v1.2.0",
    ]


def test_plugin_versions_are_read_from_the_provider_wheels() -> None:
    wheel_spec = json.loads((metadata.distribution("pulumi_kubernetes").locate_file(
        "pulumi_kubernetes/pulumi-plugin.json")).read_text())
    assert wanted_versions().plugins["kubernetes"] == wheel_spec["version"]


def test_cli_reports_the_python_sdk_version(toolchain: None) -> None:
    result = subprocess.run([str(TOOLCHAIN_BIN / "pulumi"), "version"], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == f"v{metadata.version('pulumi')}"


def test_kubernetes_plugin_is_installed_offline_at_the_sdk_version(toolchain: None) -> None:
    result = subprocess.run([str(TOOLCHAIN_BIN / "pulumi"), "plugin", "ls", "--json"], capture_output=True,
                            text=True, check=True, env=offline_env(REPO))
    installed = {(p["name"], p["kind"], p["version"]) for p in json.loads(result.stdout)}
    assert ("kubernetes", "resource", wanted_versions().plugins["kubernetes"]) in installed
