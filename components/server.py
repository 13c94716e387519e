"""ServerSite: SuperLink behind its nginx L7 filter, the ServerApp executor, and SuperNode registration."""

from __future__ import annotations

import hashlib
import json
import textwrap
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import pulumi
import pulumi_kubernetes as k8s
import yaml

from components import kube, naming, superexec
from components.config import FederationConfig
from components.fleet_filter import nginx_conf
from components.pki_resources import CertificateAuthority, ServerCertificate

TYPE = "flowerbed:index:ServerSite"

SUPERLINK = "superlink"
EXECUTOR = "serverapp-executor"
TASK = "serverapp-task"
REGISTRAR = "register-supernodes"
CA_SECRET = "federation-ca"
ARTIFACTS_CLAIM = "serverapp-artifacts"

_STATE_DIR = "/var/lib/flowerbed"
_NGINX_CONF_DIR = "/etc/flowerbed/nginx"
_NGINX_RUN_DIR = "/run/nginx"
_KEYS_DIR = "/etc/flowerbed/supernode-keys"
_FLWR_CONF_DIR = "/etc/flowerbed/flwr"

_SUPERLINK_SIZING = kube.Sizing("250m", "512Mi", "2", "2Gi")
_NGINX_SIZING = kube.Sizing("50m", "64Mi", "500m", "256Mi")
_REGISTRAR_SIZING = kube.Sizing("100m", "128Mi", "500m", "256Mi")


@dataclass(frozen=True)
class ServerSiteArgs:
    config: FederationConfig
    ca: CertificateAuthority
    # site name -> its SuperNode's OpenSSH public key, registered with SuperLink by a Job
    supernode_public_keys: Mapping[str, pulumi.Input[str]]


def executor_config(config: FederationConfig) -> dict[str, Any]:
    """The Flower Kubernetes executor's config for ServerApp task pods."""
    server = config.server
    app = server.server_app
    return superexec.executor_config(
        namespace=server.namespace, images=config.images, federation=config.federation, task_role=TASK,
        resources=superexec.task_resources(app.cpu, app.memory, app.gpus),
        volumes=[{"name": "artifacts", "persistentVolumeClaim": {"claimName": ARTIFACTS_CLAIM}}],
        volume_mounts=[{"name": "artifacts", "mountPath": naming.ARTIFACTS_DIR}])


def registration_script() -> str:
    """Register every mounted public key; keys SuperLink already knows count as done (reruns are safe)."""
    return textwrap.dedent(f"""\
        set -eu
        mkdir -p "$FLWR_HOME"
        cp {_FLWR_CONF_DIR}/config.toml "$FLWR_HOME/config.toml"
        for key in {_KEYS_DIR}/*.pub; do
          site=$(basename "$key" .pub)
          if out=$(flwr supernode register --name "$site" "$key" federation 2>&1); then
            echo "$site: registered"
          elif printf '%s' "$out" | grep -q 'already in use'; then
            echo "$site: already registered"
          else
            printf '%s\\n' "$out" >&2
            exit 1
          fi
        done
        """)


class ServerSite(pulumi.ComponentResource):
    """The aggregator: everything in the server cluster's federation namespace."""

    namespace: pulumi.Output[str]
    endpoint: pulumi.Output[str]

    def __init__(self, name: str, args: ServerSiteArgs, opts: pulumi.ResourceOptions | None = None) -> None:
        super().__init__(TYPE, name, None, opts)
        config = args.config
        server = config.server
        fed = config.federation
        ns_name = server.namespace
        child = pulumi.ResourceOptions(parent=self)
        data_opts = pulumi.ResourceOptions(parent=self, retain_on_delete=config.data_safety.retain_on_delete,
                                           protect=config.data_safety.protect)

        def meta(obj_name: str, role: str, annotations: Mapping[str, str] | None = None) -> k8s.meta.v1.ObjectMetaArgs:
            return kube.metadata(obj_name, ns_name, kube.labels(fed, role), annotations)

        ns = kube.namespace(f"{name}-namespace", ns_name, kube.labels(fed, "server"), child)
        in_ns = pulumi.ResourceOptions(parent=self, depends_on=[ns])
        data_opts = pulumi.ResourceOptions.merge(data_opts, pulumi.ResourceOptions(depends_on=[ns]))

        # --- TLS: the SuperLink certificate (only nginx and SuperLink see its key) and the CA for clients.
        certificate = ServerCertificate(
            f"{name}-certificate", ca=args.ca,
            dns_names=naming.server_certificate_names(server.endpoint, ns_name),
            validity_days=config.pki.validity_days, renew_before_days=config.pki.renew_before_days,
            opts=child)
        tls_secret = k8s.core.v1.Secret(f"{name}-tls", metadata=meta("superlink-tls", SUPERLINK),
                                        type="kubernetes.io/tls", string_data={
                                            "tls.crt": certificate.cert_pem, "tls.key": certificate.key_pem,
                                            "ca.crt": args.ca.cert_pem}, opts=in_ns)
        ca_secret = k8s.core.v1.Secret(f"{name}-ca", metadata=meta(CA_SECRET, "server"),
                                       string_data={"ca.crt": args.ca.cert_pem}, opts=in_ns)

        # --- state that must survive: SuperLink's database and the ServerApp's artifacts.
        state = kube.claim(f"{name}-state", meta("superlink-state", SUPERLINK), server.state_storage.size,
                           server.state_storage.storage_class, data_opts)
        artifacts = kube.claim(f"{name}-artifacts", meta(ARTIFACTS_CLAIM, TASK),
                               server.artifacts_storage.size, server.artifacts_storage.storage_class, data_opts)

        # --- SuperLink + nginx sidecar.
        nginx = k8s.core.v1.ConfigMap(f"{name}-nginx", metadata=meta("superlink-nginx", SUPERLINK), data={
            "nginx.conf": nginx_conf(
                superlink_port=naming.SUPERLINK_PORT, fleet_port=naming.FLEET_PORT,
                runtime_port=naming.RUNTIME_PORT, control_port=naming.CONTROL_PORT,
                cert_file=f"{naming.TLS_DIR}/tls.crt", key_file=f"{naming.TLS_DIR}/tls.key",
                ca_file=f"{naming.TLS_DIR}/ca.crt", superlink_server_name="localhost",
                runtime_dir=_NGINX_RUN_DIR)}, opts=in_ns)
        superlink_args = [
            "--isolation", "process",
            "--ssl-certfile", f"{naming.TLS_DIR}/tls.crt",
            "--ssl-keyfile", f"{naming.TLS_DIR}/tls.key",
            "--ssl-ca-certfile", f"{naming.TLS_DIR}/ca.crt",
            "--enable-supernode-auth",
            "--database", f"{_STATE_DIR}/state.db",
            "--disable-runtime-dependency-installation",
            # All interfaces so kubelet probes reach it; NetworkPolicy admits only nginx's ports.
            "--host", "0.0.0.0",
            "--port", str(naming.SUPERLINK_PORT),
        ]
        superlink_container = kube.container(
            "superlink", config.images.platform, config.images, command=["flower-superlink"], args=superlink_args,
            sizing=_SUPERLINK_SIZING, env={"FLWR_HOME": f"{_STATE_DIR}/flwr-home"},
            ports=[k8s.core.v1.ContainerPortArgs(name="superlink", container_port=naming.SUPERLINK_PORT)],
            mounts=[kube.mount("tls", naming.TLS_DIR), kube.mount("state", _STATE_DIR, read_only=False)],
            probe=kube.https_probe(naming.SUPERLINK_PORT))
        nginx_container = kube.container(
            "fleet-filter", config.images.platform, config.images,
            command=["nginx"], args=["-e", "stderr", "-c", f"{_NGINX_CONF_DIR}/nginx.conf"], sizing=_NGINX_SIZING,
            ports=[k8s.core.v1.ContainerPortArgs(name=n, container_port=p) for n, p in (
                ("fleet", naming.FLEET_PORT), ("runtime", naming.RUNTIME_PORT), ("control", naming.CONTROL_PORT))],
            mounts=[kube.mount("tls", naming.TLS_DIR), kube.mount("nginx-conf", _NGINX_CONF_DIR),
                    kube.mount("nginx-run", _NGINX_RUN_DIR, read_only=False)],
            probe=k8s.core.v1.ProbeArgs(tcp_socket=k8s.core.v1.TCPSocketActionArgs(port=naming.FLEET_PORT),
                                        period_seconds=10, failure_threshold=6))
        superlink_selector = kube.selector(fed, SUPERLINK)
        superlink = k8s.apps.v1.Deployment(f"{name}-superlink", metadata=meta("superlink", SUPERLINK),
                                           spec=k8s.apps.v1.DeploymentSpecArgs(
            replicas=1,
            # One SQLite database on a ReadWriteOnce volume: never two SuperLinks at once.
            strategy=k8s.apps.v1.DeploymentStrategyArgs(type="Recreate"),
            selector=k8s.meta.v1.LabelSelectorArgs(match_labels=superlink_selector),
            template=k8s.core.v1.PodTemplateSpecArgs(
                metadata=k8s.meta.v1.ObjectMetaArgs(labels=kube.labels(fed, SUPERLINK)),
                spec=kube.pod_spec(config.images, [superlink_container, nginx_container], [
                    kube.secret_volume("tls", "superlink-tls"),
                    kube.config_volume("nginx-conf", "superlink-nginx"),
                    kube.claim_volume("state", "superlink-state"),
                    k8s.core.v1.VolumeArgs(name="nginx-run", empty_dir=k8s.core.v1.EmptyDirVolumeSourceArgs(
                        size_limit="256Mi")),
                ]))), opts=pulumi.ResourceOptions(parent=self, depends_on=[tls_secret, nginx, state]))

        # --- Services: public Fleet, internal Runtime and Control.
        fleet = k8s.core.v1.Service(f"{name}-fleet", metadata=meta(
            naming.FLEET_SERVICE, SUPERLINK, server.service_annotations), spec=k8s.core.v1.ServiceSpecArgs(
            type=server.service_type, selector=superlink_selector, load_balancer_ip=server.load_balancer_ip,
            ports=[k8s.core.v1.ServicePortArgs(name="fleet", port=server.public_port, target_port="fleet",
                                               protocol="TCP")]), opts=in_ns)
        internal = [k8s.core.v1.Service(f"{name}-{api}", metadata=meta(service, SUPERLINK),
                                        spec=k8s.core.v1.ServiceSpecArgs(
            type="ClusterIP", selector=superlink_selector,
            ports=[k8s.core.v1.ServicePortArgs(name=api, port=port, target_port=api, protocol="TCP")]), opts=in_ns)
            for api, service, port in (("runtime", naming.RUNTIME_SERVICE, naming.RUNTIME_PORT),
                                       ("control", naming.CONTROL_SERVICE, naming.CONTROL_PORT))]

        # --- ServerApp executor: SuperExec launching one pod per ServerApp run.
        executor_sa = kube.service_account(f"{name}-executor-sa", meta(EXECUTOR, EXECUTOR), config.images,
                                           automount=True, opts=in_ns)
        task_sa = kube.service_account(f"{name}-task-sa", meta(TASK, TASK), config.images, automount=False,
                                       opts=in_ns)
        rbac = kube.executor_rbac(f"{name}-executor", meta(EXECUTOR, EXECUTOR), EXECUTOR, ns_name, in_ns)
        executor_map = k8s.core.v1.ConfigMap(f"{name}-executor-config", metadata=meta(EXECUTOR, EXECUTOR), data={
            "executor.yaml": yaml.safe_dump(executor_config(config), sort_keys=True)}, opts=in_ns)
        runtime_address = naming.service_address(naming.RUNTIME_SERVICE, ns_name, naming.RUNTIME_PORT)
        executor = k8s.apps.v1.Deployment(f"{name}-executor", metadata=meta(EXECUTOR, EXECUTOR),
                                          spec=superexec.deployment_spec(
            federation=fed, role=EXECUTOR, images=config.images, runtime_address=runtime_address,
            ca_secret=CA_SECRET), opts=pulumi.ResourceOptions(
            parent=self, depends_on=[executor_sa, task_sa, *rbac, executor_map, ca_secret, artifacts]))

        # --- SuperNode registration: a Job per set of keys, so adding a site runs it again.
        keys_map = k8s.core.v1.ConfigMap(f"{name}-supernode-keys", metadata=meta("supernode-public-keys", REGISTRAR),
                                         data={f"{site}.pub": key for site, key in
                                               sorted(args.supernode_public_keys.items())}, opts=in_ns)
        flwr_map = k8s.core.v1.ConfigMap(f"{name}-registrar-flwr", metadata=meta("registrar-flwr", REGISTRAR), data={
            "config.toml": naming.flwr_connection(
                "federation", f"{naming.CA_DIR}/ca.crt",
                naming.service_address(naming.CONTROL_SERVICE, ns_name, naming.CONTROL_PORT))}, opts=in_ns)
        keys_digest = pulumi.Output.all(*[args.supernode_public_keys[s] for s in sorted(args.supernode_public_keys)])
        job_name = keys_digest.apply(lambda keys: f"{REGISTRAR}-{_digest(keys)}")
        job = k8s.batch.v1.Job(f"{name}-registrar", metadata=k8s.meta.v1.ObjectMetaArgs(
            name=job_name, namespace=ns_name, labels=kube.labels(fed, REGISTRAR)), spec=k8s.batch.v1.JobSpecArgs(
            backoff_limit=10, active_deadline_seconds=1800,
            template=k8s.core.v1.PodTemplateSpecArgs(
                metadata=k8s.meta.v1.ObjectMetaArgs(labels=kube.labels(fed, REGISTRAR)),
                spec=kube.pod_spec(config.images, [kube.container(
                    "register", config.images.platform, config.images, command=["sh", "-c"],
                    args=[registration_script()], sizing=_REGISTRAR_SIZING, env=naming.TASK_ENV,
                    mounts=[kube.mount("ca", naming.CA_DIR), kube.mount("keys", _KEYS_DIR),
                            kube.mount("flwr", _FLWR_CONF_DIR)])],
                    [kube.secret_volume("ca", CA_SECRET), kube.config_volume("keys", "supernode-public-keys"),
                     kube.config_volume("flwr", "registrar-flwr")], restart_policy="OnFailure"))),
            opts=pulumi.ResourceOptions(parent=self, depends_on=[keys_map, flwr_map, ca_secret, superlink, *internal]))

        # --- NetworkPolicies: deny everything, then exactly the flows above.
        policies = kube.baseline_policies(name, ns_name, kube.labels(fed, "server"), in_ns)
        everyone_here: dict[str, str] = {}
        runtime_clients = [kube.selector(fed, EXECUTOR), kube.selector(fed, TASK)]
        policies.append(kube.network_policy(f"{name}-superlink-policy", meta("superlink", SUPERLINK),
                                            superlink_selector, ingress=[
            kube.Flow(ports=(naming.FLEET_PORT,), anywhere=True),
            *[kube.Flow(ports=(naming.RUNTIME_PORT,), pods=pods) for pods in runtime_clients],
            # Control: any pod in this namespace; administrators come through port-forward (kubelet).
            kube.Flow(ports=(naming.CONTROL_PORT,), pods=everyone_here),
        ], opts=in_ns))
        to_runtime = kube.Flow(ports=(naming.RUNTIME_PORT,), pods=superlink_selector)
        api_server = kube.Flow(ports=(443, 6443), cidrs=config.clusters[server.cluster].api_server_cidrs)
        policies.append(kube.network_policy(f"{name}-executor-policy", meta(EXECUTOR, EXECUTOR),
                                            kube.selector(fed, EXECUTOR), egress=[to_runtime, api_server], opts=in_ns))
        policies.append(kube.network_policy(f"{name}-task-policy", meta(TASK, TASK), kube.selector(fed, TASK),
                                            egress=[to_runtime], opts=in_ns))
        policies.append(kube.network_policy(f"{name}-registrar-policy", meta(REGISTRAR, REGISTRAR),
                                            kube.selector(fed, REGISTRAR), egress=[
            kube.Flow(ports=(naming.CONTROL_PORT,), pods=superlink_selector)], opts=in_ns))

        self.namespace = ns.metadata.name
        self.endpoint = pulumi.Output.from_input(f"{server.endpoint}:{server.public_port}")
        self.fleet_service = fleet
        self.job = job
        self.executor = executor
        self.register_outputs({"namespace": self.namespace, "endpoint": self.endpoint})


def _digest(values: list[str]) -> str:
    return hashlib.sha256(json.dumps(values).encode()).hexdigest()[:10]
