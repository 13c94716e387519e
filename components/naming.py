"""Names, ports and small texts that several components and the outputs must agree on (pure)."""

from __future__ import annotations

import json
from collections.abc import Sequence

# SuperLink serves Fleet, Runtime and Control on one TLS port; in the pod only nginx dials it.
SUPERLINK_PORT = 8000
# The nginx sidecar's listeners (components/fleet_filter.py), one per audience.
FLEET_PORT = 9092
RUNTIME_PORT = 9091
CONTROL_PORT = 9093
# SuperNode's Runtime API (Flower's default), dialled by the site's SuperExec and its task pods.
SUPERNODE_RUNTIME_PORT = 9094
# Plain-text gRPC health service of SuperExec (`--health-server-address`), for kubelet probes.
SUPEREXEC_HEALTH_PORT = 8081

# The SuperLink Deployment's name and its pods' role (server.py; the same-cluster SuperNodes' egress).
SUPERLINK = "superlink"
FLEET_SERVICE = "superlink-fleet"
RUNTIME_SERVICE = "superlink-runtime"
CONTROL_SERVICE = "superlink-control"
SUPERNODE_SERVICE = "supernode-runtime"
# The SuperLink's state volume (its database, and the backups components/state_backup.py makes there).
SUPERLINK_STATE_CLAIM = "superlink-state"
SUPERLINK_STATE_DIR = "/var/lib/flowerbed"
SUPERLINK_DATABASE = f"{SUPERLINK_STATE_DIR}/state.db"

# Where things live inside the pods.
TLS_DIR = "/etc/flowerbed/tls"
CA_DIR = "/etc/flowerbed/ca"
# The Secret holding the federation CA certificate, under this name in every namespace.
CA_SECRET = "federation-ca"
# In a consortium member's site namespaces instead: the certificate of the site stack's own CA, which
# signs its SuperNodes' Runtime API certificates (components/supernode.SiteTrust).
RUNTIME_CA_SECRET = "site-runtime-ca"
DATA_ROOT = "/data"
ARTIFACTS_DIR = "/artifacts"
SCRATCH_DIR = "/scratch"
# A site's state volume (ClientApp pods): the DP ledger, SCAFFOLD's c_i, the top-k residual,
# per federation and run (training/flowerbed_training/site_state.py).
STATE_DIR = "/state"
STATE_CLAIM = "clientapp-state"
# Task pods have a read-only root filesystem: Flower and Python write under /tmp.
TASK_ENV = {"HOME": "/tmp", "FLWR_HOME": "/tmp/.flwr", "XDG_CACHE_HOME": "/tmp/.cache", "MPLCONFIGDIR": "/tmp/.mpl"}
# SuperExec asks its Runtime API for a new task every second by default, so each launched task (the
# ServerApp, every ClientApp message) waits 0.5 s on average before it starts. Flower allows
# 0.01-60 s through this variable (flwr 1.42, flwr/supercore/superexec/run_superexec.py); 0.2 s is
# five cheap local calls a second per SuperExec.
TASK_POLL_INTERVAL_ENV = "FLWR_SUPEREXEC_TASK_POLL_INTERVAL"
SUPEREXEC_ENV = {TASK_POLL_INTERVAL_ENV: "0.2"}

# Names that resolve to the control listener from an administrator's machine via port-forward.
_LOCAL_NAMES = ("localhost",)


def service_dns_names(service: str, namespace: str) -> list[str]:
    """The in-cluster DNS names of a Service (short and fully qualified)."""
    return [f"{service}.{namespace}.svc", f"{service}.{namespace}.svc.cluster.local"]


def service_address(service: str, namespace: str, port: int) -> str:
    return f"{service}.{namespace}.svc:{port}"


def server_certificate_names(endpoint: str, namespace: str) -> list[str]:
    """SuperLink certificate SANs: the public endpoint, every in-cluster Service name, localhost.

    Depends on nothing but the endpoint and the namespace, so unrelated config changes never
    re-issue the certificate. `localhost` serves `kubectl port-forward` and the nginx upstream hop.
    """
    names = [endpoint]
    for service in (FLEET_SERVICE, RUNTIME_SERVICE, CONTROL_SERVICE):
        names += service_dns_names(service, namespace)
    return names + list(_LOCAL_NAMES)


def supernode_runtime_names(namespace: str) -> list[str]:
    return service_dns_names(SUPERNODE_SERVICE, namespace)


def node_config(site: str, federation: str, data_root: str = DATA_ROOT, state_dir: str = STATE_DIR) -> str:
    """The SuperNode's `--node-config` (TOML values; read by the ClientApp as context.node_config).

    Only facts of this site (and the federation's name, which keys its state): nothing here
    may depend on the other sites, or adding a site would restart every SuperNode (built-in
    demo data is split by the ServerApp at run time).
    """
    values = {"site-name": site, "data-root": data_root, "state-dir": state_dir, "federation": federation}
    return " ".join(f"{key}={json.dumps(value)}" for key, value in values.items())


def study_mount_path(study: str, dataset: str) -> str:
    return f"{DATA_ROOT}/{study}/{dataset}"


def study_claim_name(study: str, dataset: str) -> str:
    return f"study-{study}-{dataset}"


def flwr_connection(federation: str, ca_file: str, address: str = f"localhost:{CONTROL_PORT}") -> str:
    """A `$FLWR_HOME/config.toml` entry for administrators (through `kubectl port-forward`)."""
    return (f"[superlink.{federation}]\n"
            f"address = {json.dumps(address)}\n"
            f"root-certificates = {json.dumps(ca_file)}\n")


def port_forward_command(namespace: str, context: str | None = None) -> str:
    flags: Sequence[str] = [f"--context {context}"] if context else []
    return " ".join(["kubectl", *flags, "-n", namespace, "port-forward", f"svc/{CONTROL_SERVICE}",
                     f"{CONTROL_PORT}:{CONTROL_PORT}"])
