"""The registration Job: keeps SuperLink's registered SuperNode keys equal to the stack's sites.

One Job for all sites runs components/supernode_registry.py, which unregisters the keys of
removed sites (locking them out) and registers new ones. The Job is named by the digest of the
keys and the script, so any change of the site set (a site added or removed, a key re-issued)
runs it again, and an `up` without such a change leaves it alone.

The keys reach the Job as files of ConfigMaps: one per site in a one-stack federation (a site's
removal deletes only its own), all in one for a consortium's hub, whose 1,000 members would
otherwise be 1,000 resources and a projected volume of 1,000 sources.
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
ALL_KEYS_CONFIG = "supernode-public-keys"
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


# A hub that admits no site (yet, or any more) must unregister every key. The script refuses an
# empty key directory (in a one-stack federation that can only be a broken mount), so this calls its
# `synchronize` with no key desired; the script itself stays as it is, and so does every existing
# stack's registration Job, which is named by its text.
_UNREGISTER_ALL = ("import sys; from pathlib import Path; sys.path.insert(0, sys.argv[1]); "
                   "from supernode_registry import synchronize; "
                   "sys.stdout.writelines(line + chr(10) for line in synchronize(sys.argv[2], Path(sys.argv[3]), {}))")


def unregister_all_command(control_address: str) -> list[str]:
    """The Job's command when no site is admitted: every registered key is unregistered."""
    return ["python", "-c", _UNREGISTER_ALL, _SCRIPT_DIR, control_address, f"{naming.CA_DIR}/ca.crt"]


def job_name(script: str, public_keys: Mapping[str, str]) -> str:
    digest = hashlib.sha256(json.dumps([script, sorted(public_keys.items())]).encode()).hexdigest()[:10]
    return f"{ROLE}-{digest}"


def _key_maps(prefix: str, meta: Callable[[str], k8s.meta.v1.ObjectMetaArgs],
              public_keys: Mapping[str, pulumi.Input[str]], one_config_map: bool,
              opts: pulumi.ResourceOptions) -> dict[str, k8s.core.v1.ConfigMap]:
    """The ConfigMaps holding `<site>.pub` files, by name: one per site, or (`one_config_map`) one for all."""
    if not one_config_map:
        return {keys_config(site): k8s.core.v1.ConfigMap(
            f"{prefix}-{site}-supernode-key", metadata=meta(keys_config(site)), data={f"{site}.pub": key}, opts=opts)
            for site, key in sorted(public_keys.items())}
    if not public_keys:
        return {}
    return {ALL_KEYS_CONFIG: k8s.core.v1.ConfigMap(f"{prefix}-supernode-keys", metadata=meta(ALL_KEYS_CONFIG), data={
        f"{site}.pub": key for site, key in sorted(public_keys.items())}, opts=opts)}


def declare(prefix: str, *, meta: Callable[[str], k8s.meta.v1.ObjectMetaArgs], labels: Mapping[str, str],
            namespace: str, images: Images, public_keys: Mapping[str, pulumi.Input[str]], control_address: str,
            opts: pulumi.ResourceOptions, depends_on: Sequence[pulumi.Resource],
            one_config_map: bool = False) -> k8s.batch.v1.Job:
    """The ConfigMaps of the sites' public keys (`_key_maps`) and the Job that mounts them all as one
    directory of `<site>.pub` files; with no key at all, a Job that unregisters every key."""
    script = SCRIPT.read_text()
    script_map = k8s.core.v1.ConfigMap(f"{prefix}-registry-script", metadata=meta(SCRIPT_CONFIG),
                                       data={SCRIPT.name: script}, opts=opts)
    key_maps = _key_maps(prefix, meta, public_keys, one_config_map, opts)
    keys_volume = k8s.core.v1.VolumeArgs(name="keys", projected=k8s.core.v1.ProjectedVolumeSourceArgs(
        default_mode=0o444, sources=[k8s.core.v1.VolumeProjectionArgs(
            config_map=k8s.core.v1.ConfigMapProjectionArgs(name=map_name)) for map_name in key_maps]))
    name = (pulumi.Output.all(**public_keys).apply(lambda keys: job_name(script, keys)) if public_keys
            else pulumi.Output.from_input(job_name(script, {})))
    argv = command(control_address) if public_keys else unregister_all_command(control_address)
    keys = [kube.mount("keys", _KEYS_DIR)] if public_keys else []
    container = kube.container(
        "register", images.platform, images, command=argv[:1], args=argv[1:], sizing=_SIZING, env=naming.TASK_ENV,
        mounts=[kube.mount("ca", naming.CA_DIR), *keys, kube.mount("script", _SCRIPT_DIR)])
    return k8s.batch.v1.Job(f"{prefix}-registrar", metadata=k8s.meta.v1.ObjectMetaArgs(
        name=name, namespace=namespace, labels=dict(labels)), spec=k8s.batch.v1.JobSpecArgs(
        # SuperLink may still be starting: retry rather than fail the update.
        backoff_limit=10, active_deadline_seconds=1800,
        template=k8s.core.v1.PodTemplateSpecArgs(
            metadata=k8s.meta.v1.ObjectMetaArgs(labels=dict(labels)),
            spec=kube.pod_spec(images, [container], [
                kube.secret_volume("ca", naming.CA_SECRET), *([keys_volume] if public_keys else []),
                kube.config_volume("script", SCRIPT_CONFIG)], restart_policy="OnFailure"))),
        opts=pulumi.ResourceOptions.merge(opts, pulumi.ResourceOptions(
            depends_on=[*depends_on, script_map, *key_maps.values()])))
