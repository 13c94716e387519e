"""The images, built here with buildah (`make images`), and every container the program declares,
started from them with runc exactly as the rendered manifests say.

The manifests come from a real `pulumi up` of the dev stack (render mode): the commands, arguments,
environment, volumes (the stack's own certificates, keys and configs) and security contexts are
the program's output, not retyped here; the only substitution is the image, which becomes the one
`make images` built. Every container runs as uid 49999 on a read-only root filesystem with only
the writable mounts its pod gives it, in a network namespace of the test's own.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from containers import Sandbox
from imagefiles import REPO
from components.flower_release import FLOWER_RELEASE
from tests.live.conftest import wait_for
from tools.images import buildah
from tools.images.buildah import BuildahError
from tools.images.recipe import PLATFORM_DOCKERFILE, Recipe

pytestmark = [pytest.mark.images, pytest.mark.engine]

SERVER_NS = "demo-server"
SITE = "hospital-a"
SITE_NS = f"demo-{SITE}"
SUPERNODE_NS = f"{SITE_NS}-supernode"
ENDPOINT = "fl.demo.example.org"


def _deployment_pod(objects: list[dict], name: str, namespace: str) -> dict:
    return next(o for o in objects if o["kind"] in ("Deployment", "Job") and o["metadata"]["namespace"] == namespace
                and (o["metadata"]["name"] == name or o["metadata"]["name"].startswith(f"{name}-"))
                )["spec"]["template"]["spec"]


def _https_get(sandbox: Sandbox, port: int, path: str, ca: Path, server_name: str) -> int:
    """The HTTP status of GET `path` on 127.0.0.1:`port` in the sandbox, over TLS verified against `ca`
    for `server_name` (0 if nothing answers)."""
    script = textwrap.dedent(f"""
        import socket, ssl
        context = ssl.create_default_context(cafile={str(ca)!r})
        with socket.create_connection(("127.0.0.1", {port}), 5) as raw, \\
                context.wrap_socket(raw, server_hostname={server_name!r}) as tls:
            tls.sendall(b"GET {path} HTTP/1.1\\r\\nHost: {server_name}\\r\\nConnection: close\\r\\n\\r\\n")
            print(tls.recv(64).split()[1].decode())
    """)
    result = sandbox.exec(sys.executable, "-c", script, check=False)
    return int(result.stdout.strip()) if result.returncode == 0 and result.stdout.strip().isdigit() else 0


@pytest.fixture(scope="module")
def federation(built, rendered_dev, tmp_path_factory):
    """SuperLink with its filter, the registration Job and hospital-a's SuperNode and the server's SuperExec,
    from the platform image, in one sandbox whose /etc/hosts gives the Services' names."""
    objects = rendered_dev
    services = [f"{o['metadata']['name']}.{o['metadata']['namespace']}.svc" for o in objects if o["kind"] == "Service"]
    sandbox = Sandbox(tmp_path_factory.mktemp("platform-containers"), objects, hosts=[ENDPOINT, *services])
    try:
        # The Fleet Service maps the public port (443) to the filter's fleet listener (9092).
        fleet = next(o for o in objects if o["kind"] == "Service" and o["metadata"]["name"] == "superlink-fleet")
        sandbox.redirect(fleet["spec"]["ports"][0]["port"], 9092)
        yield sandbox
    finally:
        sandbox.close()


@pytest.fixture(scope="module")
def server_ca(rendered_dev, tmp_path_factory) -> Path:
    import base64

    secret = next(o for o in rendered_dev if o["kind"] == "Secret" and o["metadata"]["name"] == "federation-ca"
                  and o["metadata"]["namespace"] == SERVER_NS)
    path = tmp_path_factory.mktemp("ca") / "ca.crt"
    data = secret.get("stringData") or {k: base64.b64decode(v).decode() for k, v in secret["data"].items()}
    path.write_text(data["ca.crt"])
    return path


def test_superlink_serves_tls_with_the_stacks_certificate_and_answers_health(federation, built, rendered_dev,
                                                                           server_ca):
    pod = _deployment_pod(rendered_dev, "superlink", SERVER_NS)
    # Its init container first, as the kubelet runs it: a new federation's state volume has no database yet.
    [init] = pod["initContainers"]
    backup = federation.run(built.platform, pod, init["name"], namespace=SERVER_NS)
    wait_for(lambda: backup.exited() is not None, 60, "the state-backup init container")
    assert backup.exited() == 0, backup.output()[-2000:]
    assert f"state-backup: state.db: none yet; Flower {FLOWER_RELEASE} creates it" in backup.output()
    superlink = federation.run(built.platform, pod, "superlink", namespace=SERVER_NS)
    federation.run(built.platform, pod, "fleet-filter", namespace=SERVER_NS)
    wait_for(lambda: _https_get(federation, 8000, "/health", server_ca, "localhost") == 200
             or superlink.exited() is not None, 90, "SuperLink's /health (its readiness probe)")
    assert superlink.exited() is None, superlink.output()[-2000:]


def test_the_fleet_filter_serves_the_public_port_with_its_generated_config(federation, server_ca):
    # Through the Fleet Service's port, TLS with the server certificate for the public name: the
    # filter forwards /health (load balancers probe it) and the Fleet API, and refuses the rest.
    status = wait_for(lambda: _https_get(federation, 443, "/health", server_ca, ENDPOINT), 60,
                      "the filter's fleet listener")
    assert status == 200
    assert _https_get(federation, 443, "/v1/control/list-runs", server_ca, ENDPOINT) == 404


def test_the_registration_job_registers_every_sites_key(federation, built, rendered_dev):
    pod = _deployment_pod(rendered_dev, "register-supernodes", SERVER_NS)
    job = federation.run(built.platform, pod, "register", namespace=SERVER_NS)
    assert federation.wait(job, 120) == 0, job.output()[-2000:]
    assert {line.split(":")[0] for line in job.output().splitlines() if line.endswith("registered")} == {
        "hospital-a", "hospital-b", "lab-c"}


# The nodes SuperLink knows, by the name the registration gave their key, with their status: through
# the Control API on the filter's control listener, with the client the registration script uses.
LIST_NODES = textwrap.dedent("""
    import json, sys
    from flwr.cli.typing import SuperLinkConnection
    from flwr.cli.utils import init_http_client_from_connection
    from flwr.proto.control_pb2 import ListNodesRequest
    client = init_http_client_from_connection(SuperLinkConnection(
        name="demo", address="localhost:9093", root_certificates=sys.argv[1]))
    print(json.dumps({info.name: info.status for info in client.ListNodes(ListNodesRequest()).nodes_info}))
""")


def _nodes(sandbox: Sandbox, ca: Path) -> dict[str, str]:
    result = sandbox.exec(sys.executable, "-c", LIST_NODES, str(ca), check=False)
    lines = result.stdout.strip().splitlines()
    try:
        return json.loads(lines[-1]) if result.returncode == 0 and lines else {}
    except ValueError:
        return {}  # SuperLink not answering yet


def test_a_supernode_connects_to_that_superlink_with_node_auth(federation, built, rendered_dev, server_ca):
    pod = _deployment_pod(rendered_dev, "supernode", SUPERNODE_NS)
    supernode = federation.run(built.platform, pod, "supernode", namespace=SUPERNODE_NS)
    nodes = wait_for(lambda: _nodes(federation, server_ca).get(SITE) == "online" and _nodes(federation, server_ca)
                     or supernode.exited() is not None, 90, "hospital-a's SuperNode online at the SuperLink")
    assert supernode.exited() is None, supernode.output()[-2000:]
    # Its key is the one the registration Job registered for hospital-a; the other sites' are not in use.
    assert nodes == {"hospital-a": "online", "hospital-b": "registered", "lab-c": "registered"}


def test_the_server_superexec_starts_and_answers_its_health_probe(federation, built, rendered_dev):
    pod = _deployment_pod(rendered_dev, "serverapp-executor", SERVER_NS)
    superexec = federation.run(built.platform, pod, "superexec", namespace=SERVER_NS)
    probe = ("import grpc, sys; from grpc_health.v1 import health_pb2, health_pb2_grpc; "
             "c = health_pb2_grpc.HealthStub(grpc.insecure_channel('127.0.0.1:8081')); "
             "print(health_pb2.HealthCheckResponse.ServingStatus.Name(c.Check(health_pb2.HealthCheckRequest(), "
             "timeout=3).status))")
    status = wait_for(lambda: federation.exec(sys.executable, "-c", probe, check=False).stdout.strip()
                      or superexec.exited() is not None, 90, "SuperExec's gRPC health probe")
    assert superexec.exited() is None, superexec.output()[-2000:]
    assert status == "SERVING"


# --- the job image ----------------------------------------------------------------------------------


def _task_pod(rendered_dev) -> dict:
    """A ClientApp task pod as hospital-a's executor launches it: its config's volumes, env and contexts."""
    import yaml

    config_map = next(o for o in rendered_dev if o["kind"] == "ConfigMap" and o["metadata"]["namespace"] == SITE_NS
                      and o["metadata"]["name"] == "clientapp-executor")
    config = yaml.safe_load(config_map["data"]["executor.yaml"])
    return {"securityContext": config["pod-security-context"], "volumes": config["volumes"],
            "containers": [{"name": "clientapp", "env": config["env"], "volumeMounts": config["volume-mounts"],
                            "securityContext": config["container-security-context"]}]}


@pytest.fixture
def task_sandbox(tmp_path, rendered_dev):
    sandbox = Sandbox(tmp_path / "task", rendered_dev)
    try:
        yield sandbox
    finally:
        sandbox.close()


def _in_task_pod(sandbox: Sandbox, image: str, pod: dict, *command: str, timeout: float = 300) -> str:
    pod = json.loads(json.dumps(pod))
    pod["containers"][0]["command"] = list(command)
    running = sandbox.run(image, pod, "clientapp", namespace=SITE_NS)
    code = sandbox.wait(running, timeout)
    assert code == 0, running.output()[-3000:]
    return running.output()


@pytest.mark.parametrize("command", ["flwr-clientapp", "flwr-serverapp"])
def test_the_job_image_runs_flowers_task_entry_points(task_sandbox, built, rendered_dev, command):
    out = _in_task_pod(task_sandbox, built.jobs[0], _task_pod(rendered_dev), command, "--help")
    assert "--runtime-api-address" in out


# One SGD step of the training app's MLP on a batch of scikit-learn's breast-cancer data (shipped in the image).
TRAIN_ONE_STEP = textwrap.dedent("""
    import numpy, torch
    from flowerbed_training.common import builtin_data, data, models, task
    print("torch", torch.__version__, "cuda", torch.cuda.is_available())
    batch = data.subset(builtin_data.load_builtin("breast-cancer"), numpy.arange(32))
    model = models.build_model("mlp", batch.spec)
    stats = task.train(model, task.loader(batch, 32, True), task.sgd(model, 0.1), 1, torch.device("cpu"))
    print("steps", stats.steps, "loss", round(stats.loss, 4))
""")


def test_the_job_image_trains_one_local_step_on_builtin_data_on_cpu(task_sandbox, built, rendered_dev):
    out = _in_task_pod(task_sandbox, built.jobs[0], _task_pod(rendered_dev), "python", "-c", TRAIN_ONE_STEP)
    assert "torch 2.13.0+cu130 cuda False" in out
    assert "steps 1 loss" in out


# --- any Flower App's job image ---------------------------------------------------------------------

# A ClientApp called as Flower calls it: a train Message in, its reply out (flwr-clientapp does this
# with a message from the SuperNode; here the message is made in place).
RUN_CLIENTAPP = textwrap.dedent("""
    import sys, uuid, numpy as np
    from flwr.app import ArrayRecord, ConfigRecord, Context, Message, RecordDict
    from flwr.common.serde import message_from_proto, message_to_proto
    from flwr.supercore.object_ref import load_app
    from flwr.supercore.task_identity import TaskIdentity
    app = load_app(sys.argv[1], ImportError, "/opt/flowerbed/app")
    TaskIdentity.run_id, TaskIdentity.node_id, TaskIdentity.task_id = 1, 0, 1
    message = Message(RecordDict({"arrays": ArrayRecord([np.zeros(4)]), "config": ConfigRecord({})}), 1, "train")
    message.metadata.__dict__["_message_id"] = str(uuid.uuid4())
    reply = app(message_from_proto(message_to_proto(message)),
                Context(1, 1, {"site-name": "site-x"}, RecordDict(), {"target": 2.0}))
    print("trained:", reply.content["arrays"].to_numpy_ndarrays()[0].tolist())
""")


def _diff_ids(image: str) -> list[str]:
    return json.loads(buildah.buildah("inspect", "--type", "image", image).stdout)["OCIv1"]["rootfs"]["diff_ids"]


def test_another_apps_job_image_runs_its_clientapp(own_app_image, task_sandbox, rendered_dev):
    out = _in_task_pod(task_sandbox, own_app_image, _task_pod(rendered_dev), "python", "-c", RUN_CLIENTAPP,
                       "message_app.client_app:app")
    assert "trained: [1.0, 1.0, 1.0, 1.0]" in out  # half-way from 0 to the run config's target 2.0
    out = _in_task_pod(task_sandbox, own_app_image, _task_pod(rendered_dev), "flwr-clientapp", "--help")
    assert "--runtime-api-address" in out


def test_a_change_to_the_apps_code_rebuilds_only_the_layers_it_touches(own_app, own_app_image, tmp_path):
    from tools.images.build import build_with_buildah
    from tools.images.settings import Settings

    changed = shutil.copytree(own_app, tmp_path / "ownapp-changed")
    client = changed / "message_app" / "client_app.py"
    client.write_text(client.read_text().replace("0.5 * (target - weights)", "0.25 * (target - weights)"))
    rebuilt = build_with_buildah(Settings("localhost/flowerbed", "local", ("cuda",), changed, False, "buildah"))
    before, after = _diff_ids(own_app_image), _diff_ids(rebuilt.jobs[0])
    # Everything below the app (the base, Python, the venv with flwr and numpy) is the same layer;
    # only the app's files and the build's load check on top of them are new.
    assert after[:-2] == before[:-2]
    assert after[-2:] != before[-2:]


def test_an_unchanged_image_is_tagged_again_instead_of_built(built):
    result = subprocess.run([REPO / "tools" / "build-images"], env={**os.environ, "BUILDER": "buildah", "TAG": "local"},
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr
    for image in ("platform", "job"):
        name = f"localhost:5000/flowerbed/{image}:local-flwr{FLOWER_RELEASE}"
        assert f"{name}: inputs unchanged since its last build; tagged again" in result.stdout
    assert "building" not in result.stdout


# --- builds that cannot work -----------------------------------------------------------------------


def test_an_app_pinning_another_flower_fails_in_one_line_naming_the_change(tmp_path):
    from tests.federate.apps import message_api_app

    app = message_api_app(tmp_path / "pinned")
    pyproject = app / "pyproject.toml"
    pyproject.write_text(pyproject.read_text().replace(f'"flwr=={FLOWER_RELEASE}"', '"flwr==1.40.0"'))
    result = subprocess.run([REPO / "tools" / "build-images"], capture_output=True, text=True, timeout=900,
                            env={**os.environ, "BUILDER": "buildah", "TAG": "t1", "APP": str(app)})
    assert result.returncode == 1
    [line] = result.stderr.strip().splitlines()
    name = f"localhost:5000/flowerbed/job-pinned:t1-flwr{FLOWER_RELEASE}"
    assert line.startswith(f"build-images: {name}: check_flower: ")
    assert f"asks for 'flwr==1.40.0', but the platform runs flwr {FLOWER_RELEASE}" in line
    assert f"Change the requirement to 'flwr=={FLOWER_RELEASE}'" in line
    assert buildah.image_id(name) is None  # nothing passes for built
    assert buildah.buildah("containers", "--quiet").stdout.strip() == ""  # no working container left


def test_a_debian_pin_the_mirror_no_longer_has_fails_in_one_line_naming_the_change(built, tmp_path):
    stale = Recipe("localhost/flowerbed/platform:stale-pin", PLATFORM_DOCKERFILE,
                   {"NGINX_VERSION": "1.22.1-9+deb12u11"})
    with pytest.raises(BuildahError) as failed:
        with buildah.store_lock():
            buildah.build(stale, {}, tmp_path / "build.log")
    message = str(failed.value)
    assert "check_nginx: NGINX_VERSION 1.22.1-9+deb12u11 is not on the Debian mirror, which has nginx-light " \
           "1.22.1-9+deb12u12; set NGINX_VERSION in images/platform/Dockerfile to it" in message
    assert buildah.image_id("localhost/flowerbed/platform:stale-pin") is None
    assert buildah.buildah("containers", "--quiet").stdout.strip() == ""
