"""The staging template previews against live API servers, its kubeconfigs swapped in by `make cluster`."""

from __future__ import annotations

import json

import pytest

from federate.ports import is_listening
from tests.live.conftest import live_stack
from tools.live.plane import pid_alive

pytestmark = pytest.mark.live


def test_the_staging_template_previews_cleanly_against_live_clusters(tmp_path_factory: pytest.TempPathFactory) -> None:
    with live_stack(tmp_path_factory.mktemp("staging"), "staging") as live:
        result = live.copy.pulumi.run(["preview", "--json"], capture=True, check=False)
        assert result.returncode == 0, result.stdout[-3000:] + result.stderr
        steps = json.loads(result.stdout)["steps"]
        kinds = {step["urn"].split("::")[2].split("$")[-1] for step in steps}
        assert {step["op"] for step in steps} == {"create"}
        assert {"kubernetes:apps/v1:Deployment", "kubernetes:core/v1:Namespace",
                "kubernetes:core/v1:PersistentVolumeClaim", "kubernetes:batch/v1:Job"} <= kinds
        providers = [s for s in steps if s["urn"].split("::")[2].split("$")[-1] == "pulumi:providers:kubernetes"]
        assert len(providers) == len(live.planes) == 2
        ports = [port for plane in live.planes.values() for port in plane.ports().numbers()]
        pids = [pid for plane in live.planes.values() for pid in plane.pids().values()]
        roots = [plane.root for plane in live.planes.values()]
    # make cluster-down: exactly the processes it started are gone, their data too, nothing listens.
    assert len(pids) == 10 and not any(pid_alive(pid) for pid in pids)
    assert not any(root.exists() for root in roots)
    assert not any(is_listening(port) for port in ports)
