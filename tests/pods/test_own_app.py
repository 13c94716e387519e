"""Another Flower App trains in the same pods: its own job image (`make images APP=`), sent to the
nodes by `make cluster APP=`, rolled out by `pulumi up`, run by `make run APP=`; then the training
app's job image again."""

from __future__ import annotations

import json
import time

import pytest

from tests.federate.apps import message_api_app
from tests.live.conftest import say
from tests.pods.conftest import SITES, PodsStack
from tools.live import cluster
from tools.ops.run import run

pytestmark = pytest.mark.pods


@pytest.fixture(scope="module")
def own_app_deployed(pods: PodsStack, tmp_path_factory, request):
    app = message_api_app(tmp_path_factory.mktemp("apps") / "ownapp")
    started = time.monotonic()
    cluster.up(pods.local, app)
    pods.copy.up()
    say(request, f"\nown app's job image built, sent, pulled and rolled out in {time.monotonic() - started:.0f} s")
    try:
        yield app
    finally:
        cluster.up(pods.local)
        pods.copy.up()


def test_another_flower_app_trains_in_pods_from_its_own_job_image(pods, own_app_deployed, tmp_path):
    job_image = pods.copy.read_config()["config"]["flowerbed:images"]["job"]
    assert "/flowerbed/job-ownapp:" in job_image
    for cluster_name, namespace in {(c, ns) for c, ns in SITES.values()}:
        config = pods.kubectl(cluster_name).json("get", "configmap", "clientapp-executor", "-n", namespace)
        assert f"image: {job_image}" in config["data"]["executor.yaml"]
    _, results = run(pods.deployment(), own_app_deployed, {}, 900, tmp_path)
    rounds = [json.loads(line) for line in (results / "metrics.jsonl").read_text().splitlines()]
    # The app pulls a vector half-way to its target (2.0) each round, on every site: 1.0, 1.5, 1.75.
    assert [r["round"] for r in rounds] == [1, 2, 3]
    assert [round(r["loss"], 4) for r in rounds] == [1.0, 0.5, 0.25]
