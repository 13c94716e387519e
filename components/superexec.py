"""A SuperExec with Flower's Kubernetes executor: its Deployment and its executor config.

Both sites run one: the server's launches ServerApp pods, each client site's
launches ClientApp pods. The executor config's keys are flwr 1.42's
(flwr/supercore/superexec/executor/factory.py); the executor takes the pod and
container security contexts verbatim, so the launched pods get the same
hardening as every container flowerbed declares itself.

Next to SuperExec, in the same pod and as the same ServiceAccount, runs the pending reaper
(components/pending_reaper.py, mounted from a ConfigMap): it deletes the executor's task pods that
have not started within the configured `pendingTimeout`, which Flower's executor never does.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import pulumi
import pulumi_kubernetes as k8s
import yaml

from components import kube, naming
from components.config import Images

CONFIG_DIR = "/etc/flowerbed/executor"
CONFIG_FILE = "executor.yaml"
_SIZING = kube.Sizing("100m", "256Mi", "500m", "512Mi")
REAPER_CONFIG = "pending-reaper"
REAPER_SCRIPT = Path(__file__).with_name("pending_reaper.py")
_REAPER_DIR = "/etc/flowerbed/reaper"
# Python with the `kubernetes` client, one list every 10 s: about 70 MB resident (tests/live/test_stuck_task_pods.py).
_REAPER_SIZING = kube.Sizing("10m", "96Mi", "100m", "192Mi")


def executor_config(*, namespace: str, images: Images, federation: str, task_role: str,
                    resources: Mapping[str, Any], volumes: Sequence[Mapping[str, Any]],
                    volume_mounts: Sequence[Mapping[str, Any]], **extra: Any) -> dict[str, Any]:
    """Config for launched task pods; `extra` adds optional executor keys (kebab-case)."""
    return {
        "namespace": namespace,
        "image": images.job,
        "image-pull-policy": images.pull_policy,
        # The task ServiceAccount carries the pull secrets (the executor has no imagePullSecrets key)
        # and mounts no API token.
        "service-account-name": task_role,
        # Flower's executor, not Pulumi, manages these pods.
        "labels": {k: v for k, v in kube.labels(federation, task_role).items() if k != kube.MANAGED_BY_LABEL},
        "resources": dict(resources),
        "pod-security-context": kube.pod_security_context(),
        "container-security-context": kube.container_security_context(),
        "env": [{"name": k, "value": v} for k, v in sorted(naming.TASK_ENV.items())],
        "volumes": [*volumes, {"name": kube.TMP_VOLUME, "emptyDir": {"sizeLimit": "4Gi"}}],
        "volume-mounts": [*volume_mounts, {"name": kube.TMP_VOLUME, "mountPath": "/tmp"}],
        **extra,
    }


def task_resources(cpu: str, memory: str, gpus: int) -> dict[str, Any]:
    limits: dict[str, Any] = {"cpu": cpu, "memory": memory}
    if gpus:
        # Extended resources are limits only (the request defaults to the limit).
        limits["nvidia.com/gpu"] = gpus
    return {"requests": {"cpu": cpu, "memory": memory}, "limits": limits}


def reaper_command(config: Mapping[str, Any], pending_timeout: int) -> list[str]:
    """The reaper's command: exactly the pods the executor `config` launches (its federation and task
    role labels), in its namespace."""
    selector = ",".join(f"{key}={config['labels'][key]}" for key in (kube.FEDERATION_LABEL, kube.ROLE_LABEL))
    return ["python", f"{_REAPER_DIR}/{REAPER_SCRIPT.name}", "--namespace", config["namespace"],
            "--selector", selector, "--timeout", str(pending_timeout)]


def deployment_spec(*, federation: str, role: str, images: Images, runtime_address: str, reaper: Sequence[str],
                    contents: kube.Contents, ca_secret: str = naming.CA_SECRET) -> k8s.apps.v1.DeploymentSpecArgs:
    """SuperExec dialling `runtime_address` over TLS (trusting the CA in Secret `ca_secret`), and the
    reaper running `reaper`; their ServiceAccount and SuperExec's config are named `role`.

    SuperExec reads its executor config and the CA once at start, Python the reaper's script, so
    the pod template carries their digest (`contents` holds them): a changed config (a site's GPUs,
    say), CA or script rolls the Deployment instead of going unnoticed.
    """
    container = kube.container(
        "superexec", images.platform, images, command=["flower-superexec"], args=[
            "--runtime-api-address", runtime_address,
            "--root-certificates", f"{naming.CA_DIR}/ca.crt",
            "--executor", "kubernetes",
            "--executor-config", f"{CONFIG_DIR}/{CONFIG_FILE}",
            "--health-server-address", f"0.0.0.0:{naming.SUPEREXEC_HEALTH_PORT}",
        ], sizing=_SIZING, env={"HOME": "/tmp", **naming.SUPEREXEC_ENV},
        ports=[k8s.core.v1.ContainerPortArgs(name="health", container_port=naming.SUPEREXEC_HEALTH_PORT)],
        mounts=[kube.mount("ca", naming.CA_DIR), kube.mount("executor", CONFIG_DIR)],
        probe=kube.grpc_probe(naming.SUPEREXEC_HEALTH_PORT))
    reaper_container = kube.container("pending-reaper", images.platform, images, command=reaper[:1],
                                      args=reaper[1:], sizing=_REAPER_SIZING, env=naming.TASK_ENV,
                                      mounts=[kube.mount("reaper", _REAPER_DIR)])
    return k8s.apps.v1.DeploymentSpecArgs(
        replicas=1,
        selector=k8s.meta.v1.LabelSelectorArgs(match_labels=kube.selector(federation, role)),
        template=kube.pod_template(kube.labels(federation, role), kube.pod_spec(images, [
            container, reaper_container], [
            kube.secret_volume("ca", ca_secret), kube.config_volume("executor", role),
            kube.config_volume("reaper", REAPER_CONFIG)], service_account=role), contents))


def declare(prefix: str, *, meta: Callable[[str], k8s.meta.v1.ObjectMetaArgs], federation: str,
            namespace: str, images: Images, executor_role: str, task_role: str, config: Mapping[str, Any],
            runtime_address: str, pending_timeout: int, contents: kube.Contents, opts: pulumi.ResourceOptions,
            depends_on: Sequence[pulumi.Resource], ca_secret: str = naming.CA_SECRET) -> k8s.apps.v1.Deployment:
    """A SuperExec with what it needs: its and its task pods' ServiceAccounts, RBAC, executor config,
    and the reaper of its task pods that do not start within `pending_timeout` seconds.

    `meta(role)` gives the metadata of the object named `role` (each site labels its own objects);
    `contents` the data of the namespace's Secrets (the CA, named `ca_secret`) the SuperExec mounts.
    """
    executor_sa = kube.service_account(f"{prefix}-executor-sa", meta(executor_role), images,
                                       automount=True, opts=opts)
    task_sa = kube.service_account(f"{prefix}-task-sa", meta(task_role), images, automount=False, opts=opts)
    rbac = kube.executor_rbac(f"{prefix}-executor", meta(executor_role), executor_role, namespace, opts)
    config_data = {CONFIG_FILE: yaml.safe_dump(dict(config), sort_keys=True)}
    config_map = k8s.core.v1.ConfigMap(f"{prefix}-executor-config", metadata=meta(executor_role),
                                       data=config_data, opts=opts)
    reaper_data = {REAPER_SCRIPT.name: REAPER_SCRIPT.read_text()}
    reaper_map = k8s.core.v1.ConfigMap(f"{prefix}-pending-reaper", metadata=meta(REAPER_CONFIG),
                                       data=reaper_data, opts=opts)
    after = pulumi.ResourceOptions.merge(opts, pulumi.ResourceOptions(
        depends_on=[*depends_on, executor_sa, task_sa, *rbac, config_map, reaper_map]))
    return k8s.apps.v1.Deployment(f"{prefix}-executor", metadata=meta(executor_role), spec=deployment_spec(
        federation=federation, role=executor_role, images=images, runtime_address=runtime_address,
        reaper=reaper_command(config, pending_timeout), ca_secret=ca_secret,
        contents={**contents, kube.content_key("ConfigMap", executor_role): config_data,
                  kube.content_key("ConfigMap", REAPER_CONFIG): reaper_data}), opts=after)
