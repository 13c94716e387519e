"""The images and the components agree on who runs and where Flower writes.

Here rather than in tests/images because the components import the Pulumi SDK, which lives in
the program environment (requirements/program.in); the Dockerfiles are read as tests/images reads them.
"""

from __future__ import annotations

import pytest

from components import kube, superexec
from components.config import Images
from tests.images.imagefiles import DOCKERFILES, parse_dockerfile


@pytest.mark.parametrize("image", sorted(DOCKERFILES))
def test_runs_as_the_uid_the_components_security_contexts_demand(image: str) -> None:
    for context in (kube.pod_security_context(), kube.container_security_context()):
        assert context["runAsNonRoot"] is True
        assert context["runAsUser"] == context["runAsGroup"] == kube.APP_UID
    runtime = parse_dockerfile(DOCKERFILES[image]).final
    # Numeric, so the kubelet can check runAsNonRoot without reading /etc/passwd.
    assert runtime.values("USER") == [f"{kube.APP_UID}:{kube.APP_UID}"]
    assert f"--uid {kube.APP_UID} --gid {kube.APP_UID}" in " ".join(runtime.values("RUN"))


def test_launched_pods_have_flower_home_on_a_writable_volume() -> None:
    """The job image writes the submitted app under FLWR_HOME; its root filesystem is read-only."""
    config = superexec.executor_config(
        namespace="ns", images=Images(platform="platform:t-flwr1.42.0", job="job:t-flwr1.42.0", pullPolicy="IfNotPresent"),
        federation="demo",
        task_role="task", resources={}, volumes=[], volume_mounts=[])
    assert config["container-security-context"]["readOnlyRootFilesystem"] is True
    env = {e["name"]: e["value"] for e in config["env"]}
    flwr_home = env.get("FLWR_HOME") or f"{env['HOME']}/.flwr"
    writable = [m["mountPath"] for m in config["volume-mounts"] if not m.get("readOnly")]
    assert any(flwr_home == path or flwr_home.startswith(f"{path}/") for path in writable), (flwr_home, writable)
