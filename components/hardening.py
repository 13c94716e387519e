"""The labels and security contexts of every pod flowerbed runs, as plain dicts (no Pulumi).

The components put them on what they declare (components/kube.py); Flower's Kubernetes executor
takes the contexts verbatim in its YAML config for the pods it launches; the day-2 tools
(tools/ops) give them to the short-lived pods they start, so those pass Pod Security
`restricted` as the federation's own do.
"""

from __future__ import annotations

from typing import Any

# Flower's official images run as `app` (uid/gid 49999); flowerbed's images keep that uid.
APP_UID = 49999
ROLE_LABEL = "flowerbed.dev/role"
FEDERATION_LABEL = "flowerbed.dev/federation"
SITE_LABEL = "flowerbed.dev/site"
MANAGED_BY_LABEL = "app.kubernetes.io/managed-by"


def labels(federation: str, role: str, site: str | None = None) -> dict[str, str]:
    """Labels of every object; `role` also selects pods (the Flower executor owns app.kubernetes.io/*)."""
    result = {
        "app.kubernetes.io/part-of": "flowerbed",
        MANAGED_BY_LABEL: "pulumi",
        FEDERATION_LABEL: federation,
        ROLE_LABEL: role,
    }
    if site is not None:
        result[SITE_LABEL] = site
    return result


def selector(federation: str, role: str) -> dict[str, str]:
    return {FEDERATION_LABEL: federation, ROLE_LABEL: role}


# Security contexts: camelCase dicts, which Pulumi accepts as inputs too.


def pod_security_context() -> dict[str, Any]:
    return {
        "runAsNonRoot": True,
        "runAsUser": APP_UID,
        "runAsGroup": APP_UID,
        "fsGroup": APP_UID,
        "seccompProfile": {"type": "RuntimeDefault"},
    }


def container_security_context() -> dict[str, Any]:
    return {
        "runAsNonRoot": True,
        "runAsUser": APP_UID,
        "runAsGroup": APP_UID,
        "allowPrivilegeEscalation": False,
        "readOnlyRootFilesystem": True,
        "capabilities": {"drop": ["ALL"]},
        "seccompProfile": {"type": "RuntimeDefault"},
    }
