"""The registration Job: keeps SuperLink's registered SuperNode keys equal to the stack's sites.

One Job for all sites runs components/supernode_registry.py, which unregisters the keys of
removed sites (locking them out) and registers new ones. The Job is named by the digest of the
keys and the script, so any change of the site set (a site added or removed, a key re-issued)
runs it again, and an `up` without such a change leaves it alone.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

import pulumi
import pulumi_kubernetes as k8s

from components import kube, naming
from components.config import Images

ROLE = "register-supernodes"
KEYS_CONFIG = "supernode-public-key"
SCRIPT_CONFIG = "supernode-registry"
SCRIPT = Path(__file__).with_name("supernode_registry.py")

_KEYS_DIR = "/etc/flowerbed/supernode-keys"
_SCRIPT_DIR = "/etc/flowerbed/registry"
_SIZING = kube.Sizing("100m", "128Mi", "500m", "256Mi")


def keys_config(site: str) -> str:
    return f"{KEYS_CONFIG}-{site}"[:63].rstrip("-")


def command(control_address: str) -> list[str]:
    """The Job's command: the platform image's Python runs the mounted script against the Control API."""
    return ["python", f"{_SCRIPT_DIR}/{SCRIPT.name}", "--superlink", control_address,
            "--root-certificates", f"{naming.CA_DIR}/ca.crt", "--keys", _KEYS_DIR]


def job_name(script: str, public_keys: Mapping[str, str]) -> str:
    digest = hashlib.sha256(json.dumps([script, sorted(public_keys.items())]).encode()).hexdigest()[:10]
    return f"{ROLE}-{digest}"


def declare(prefix: str, *, meta: Callable[[str], k8s.meta.v1.ObjectMetaArgs], labels: Mapping[str, str],
            namespace: str, images: Images, public_keys: Mapping[str, pulumi.Input[str]], control_address: str,
            opts: pulumi.ResourceOptions, depends_on: Sequence[pulumi.Resource]) -> k8s.batch.v1.Job:
    """Per site a ConfigMap with its public key (a site's removal deletes only its own), and the Job
    that mounts them all as one directory of `<site>.pub` files."""
    script = SCRIPT.read_text()
    script_map = k8s.core.v1.ConfigMap(f"{prefix}-registry-script", metadata=meta(SCRIPT_CONFIG),
                                       data={SCRIPT.name: script}, opts=opts)
    key_maps = [k8s.core.v1.ConfigMap(f"{prefix}-{site}-supernode-key", metadata=meta(keys_config(site)),
                                      data={f"{site}.pub": key}, opts=opts)
                for site, key in sorted(public_keys.items())]
    keys_volume = k8s.core.v1.VolumeArgs(name="keys", projected=k8s.core.v1.ProjectedVolumeSourceArgs(
        default_mode=0o444, sources=[k8s.core.v1.VolumeProjectionArgs(
            config_map=k8s.core.v1.ConfigMapProjectionArgs(name=keys_config(site))) for site in sorted(public_keys)]))
    name = pulumi.Output.all(**public_keys).apply(lambda keys: job_name(script, keys))
    container = kube.container(
        "register", images.platform, images, command=command(control_address)[:1], args=command(control_address)[1:],
        sizing=_SIZING, env=naming.TASK_ENV,
        mounts=[kube.mount("ca", naming.CA_DIR), kube.mount("keys", _KEYS_DIR), kube.mount("script", _SCRIPT_DIR)])
    return k8s.batch.v1.Job(f"{prefix}-registrar", metadata=k8s.meta.v1.ObjectMetaArgs(
        name=name, namespace=namespace, labels=dict(labels)), spec=k8s.batch.v1.JobSpecArgs(
        # SuperLink may still be starting: retry rather than fail the update.
        backoff_limit=10, active_deadline_seconds=1800,
        template=k8s.core.v1.PodTemplateSpecArgs(
            metadata=k8s.meta.v1.ObjectMetaArgs(labels=dict(labels)),
            spec=kube.pod_spec(images, [container], [
                kube.secret_volume("ca", naming.CA_SECRET), keys_volume,
                kube.config_volume("script", SCRIPT_CONFIG)], restart_policy="OnFailure"))),
        opts=pulumi.ResourceOptions.merge(opts, pulumi.ResourceOptions(
            depends_on=[*depends_on, script_map, *key_maps])))
