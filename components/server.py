"""ServerSite: SuperLink behind its nginx L7 filter, the ServerApp executor, and SuperNode registration."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import pulumi
import pulumi_kubernetes as k8s

from components import kube, naming, registration, superexec, superlink_state
from components.config import FederationConfig
from components.fleet_filter import nginx_conf
from components.pki_resources import CertificateAuthority, ServerCertificate

TYPE = "flowerbed:index:ServerSite"

SUPERLINK = naming.SUPERLINK
EXECUTOR = "serverapp-executor"
TASK = "serverapp-task"
TLS_SECRET = "superlink-tls"
STATE_CLAIM = naming.SUPERLINK_STATE_CLAIM
ARTIFACTS_CLAIM = "serverapp-artifacts"
NGINX_CONFIG = "superlink-nginx"

_STATE_DIR = naming.SUPERLINK_STATE_DIR
_NGINX_CONF_DIR = "/etc/flowerbed/nginx"
_NGINX_RUN_DIR = "/run/nginx"

_SUPERLINK_SIZING = kube.Sizing("250m", "512Mi", "2", "2Gi")
_NGINX_SIZING = kube.Sizing("50m", "64Mi", "500m", "256Mi")


@dataclass(frozen=True)
class ServerSiteArgs:
    config: FederationConfig
    ca: CertificateAuthority
    # site name -> its SuperNode's OpenSSH public key, registered with SuperLink by a Job
    supernode_public_keys: Mapping[str, pulumi.Input[str]]
    # A consortium's hub: every key in one ConfigMap (registration.py)
    one_key_config_map: bool = False


def executor_config(config: FederationConfig) -> dict[str, Any]:
    """The Flower Kubernetes executor's config for ServerApp task pods."""
    server = config.server
    app = server.server_app
    return superexec.executor_config(
        namespace=server.namespace, images=config.images, federation=config.federation, task_role=TASK,
        resources=superexec.task_resources(app.cpu, app.memory, app.gpus),
        volumes=[{"name": "artifacts", "persistentVolumeClaim": {"claimName": ARTIFACTS_CLAIM}}],
        volume_mounts=[{"name": "artifacts", "mountPath": naming.ARTIFACTS_DIR}])


def superlink_args() -> list[str]:
    return [
        "--isolation", "process",
        "--ssl-certfile", f"{naming.TLS_DIR}/tls.crt",
        "--ssl-keyfile", f"{naming.TLS_DIR}/tls.key",
        "--ssl-ca-certfile", f"{naming.TLS_DIR}/ca.crt",
        "--enable-supernode-auth",
        "--database", naming.SUPERLINK_DATABASE,
        "--disable-runtime-dependency-installation",
        # All interfaces so kubelet probes reach it; NetworkPolicy admits only nginx's ports.
        "--host", "0.0.0.0",
        "--port", str(naming.SUPERLINK_PORT),
    ]


class ServerSite(pulumi.ComponentResource):
    """The aggregator: everything in the server cluster's federation namespace."""

    namespace: pulumi.Output[str]
    endpoint: pulumi.Output[str]
    fleet_address: pulumi.Output[str]

    def __init__(self, name: str, args: ServerSiteArgs, opts: pulumi.ResourceOptions | None = None) -> None:
        super().__init__(TYPE, name, None, opts)
        self._name = name
        self._config = args.config
        server = args.config.server
        self._ns = server.namespace
        # The data of this namespace's Secrets and ConfigMaps, for the pod templates' digests.
        self._contents: dict[str, Mapping[str, pulumi.Input[str]]] = {}
        # SuperLink's state and the artifacts are claims this program manages.
        self._in_ns, self.namespace = kube.namespace(
            f"{name}-namespace", self._ns, self._labels("server"), existing=server.existing_namespace,
            keep=args.config.data_safety.namespace_options(managed_claims=True, existing_claims=False), parent=self)

        tls_secret, ca_secret = self._tls(args.ca)
        state, artifacts = self._volumes()
        superlink = self._superlink(depends_on=[tls_secret, state])
        internal_services = self._services()
        self._executor(depends_on=[ca_secret, artifacts])
        self._registration(args, depends_on=[ca_secret, superlink, *internal_services])
        self._network_policies()

        self.endpoint = pulumi.Output.from_input(f"{server.endpoint}:{server.public_port}")
        self.register_outputs({"namespace": self.namespace, "endpoint": self.endpoint,
                               "fleetAddress": self.fleet_address})

    def _labels(self, role: str) -> dict[str, str]:
        return kube.labels(self._config.federation, role)

    def _meta(self, obj_name: str, role: str,
              annotations: Mapping[str, str] | None = None) -> k8s.meta.v1.ObjectMetaArgs:
        return kube.metadata(obj_name, self._ns, self._labels(role), annotations)

    def _after(self, depends_on: Sequence[pulumi.Resource]) -> pulumi.ResourceOptions:
        return pulumi.ResourceOptions.merge(self._in_ns, pulumi.ResourceOptions(depends_on=list(depends_on)))

    def _tls(self, ca: CertificateAuthority) -> tuple[k8s.core.v1.Secret, k8s.core.v1.Secret]:
        """The SuperLink certificate (only SuperLink and nginx see its key) and the CA for in-cluster clients."""
        pki = self._config.pki
        certificate = ServerCertificate(
            f"{self._name}-certificate", ca=ca,
            dns_names=naming.server_certificate_names(self._config.server.endpoint, self._ns),
            validity_days=pki.validity_days, renew_before_days=pki.renew_before_days,
            opts=pulumi.ResourceOptions(parent=self))
        tls_data = {"tls.crt": certificate.cert_pem, "tls.key": certificate.key_pem, "ca.crt": ca.cert_pem}
        ca_data = {"ca.crt": ca.cert_pem}
        self._contents.update({kube.content_key("Secret", TLS_SECRET): tls_data,
                               kube.content_key("Secret", naming.CA_SECRET): ca_data})
        tls_secret = k8s.core.v1.Secret(f"{self._name}-tls", metadata=self._meta(TLS_SECRET, SUPERLINK),
                                        type="kubernetes.io/tls", string_data=tls_data, opts=self._in_ns)
        ca_secret = k8s.core.v1.Secret(f"{self._name}-ca", metadata=self._meta(naming.CA_SECRET, "server"),
                                       string_data=ca_data, opts=self._in_ns)
        return tls_secret, ca_secret

    def _volumes(self) -> tuple[k8s.core.v1.PersistentVolumeClaim, k8s.core.v1.PersistentVolumeClaim]:
        """State that must survive: SuperLink's database and the ServerApp's artifacts."""
        server, safety = self._config.server, self._config.data_safety
        opts = pulumi.ResourceOptions.merge(self._in_ns, pulumi.ResourceOptions(
            retain_on_delete=safety.retain_on_delete, protect=safety.protect))
        state = kube.claim(f"{self._name}-state", STATE_CLAIM, self._ns, self._labels(SUPERLINK),
                           server.state_storage.size, server.state_storage.storage_class, opts)
        artifacts = kube.claim(f"{self._name}-artifacts", ARTIFACTS_CLAIM, self._ns, self._labels(TASK),
                               server.artifacts_storage.size, server.artifacts_storage.storage_class, opts)
        return state, artifacts

    def _superlink(self, depends_on: Sequence[pulumi.Resource]) -> k8s.apps.v1.Deployment:
        """SuperLink, reachable only through the nginx sidecar's three listeners."""
        images = self._config.images
        nginx_data = {
            "nginx.conf": nginx_conf(
                superlink_port=naming.SUPERLINK_PORT, fleet_port=naming.FLEET_PORT,
                runtime_port=naming.RUNTIME_PORT, control_port=naming.CONTROL_PORT,
                cert_file=f"{naming.TLS_DIR}/tls.crt", key_file=f"{naming.TLS_DIR}/tls.key",
                ca_file=f"{naming.TLS_DIR}/ca.crt", superlink_server_name="localhost",
                runtime_dir=_NGINX_RUN_DIR)}
        self._contents[kube.content_key("ConfigMap", NGINX_CONFIG)] = nginx_data
        nginx = k8s.core.v1.ConfigMap(f"{self._name}-nginx", metadata=self._meta(NGINX_CONFIG, SUPERLINK),
                                      data=nginx_data, opts=self._in_ns)
        self._contents[kube.content_key("ConfigMap", superlink_state.SCRIPT_CONFIG)] = superlink_state.script_data()
        backup_script = superlink_state.declare(self._name, self._meta(superlink_state.SCRIPT_CONFIG, SUPERLINK),
                                                self._in_ns)
        state_mount = kube.mount("state", _STATE_DIR, read_only=False)
        superlink = kube.container(
            "superlink", images.platform, images, command=["flower-superlink"], args=superlink_args(),
            sizing=_SUPERLINK_SIZING, env={"FLWR_HOME": f"{_STATE_DIR}/flwr-home"},
            ports=[k8s.core.v1.ContainerPortArgs(name="superlink", container_port=naming.SUPERLINK_PORT)],
            mounts=[kube.mount("tls", naming.TLS_DIR), state_mount], probe=kube.https_probe(naming.SUPERLINK_PORT))
        fleet_filter = kube.container(
            "fleet-filter", images.platform, images,
            command=["nginx"], args=["-e", "stderr", "-c", f"{_NGINX_CONF_DIR}/nginx.conf"], sizing=_NGINX_SIZING,
            ports=[k8s.core.v1.ContainerPortArgs(name=n, container_port=p) for n, p in (
                ("fleet", naming.FLEET_PORT), ("runtime", naming.RUNTIME_PORT), ("control", naming.CONTROL_PORT))],
            mounts=[kube.mount("tls", naming.TLS_DIR), kube.mount("nginx-conf", _NGINX_CONF_DIR),
                    kube.mount("nginx-run", _NGINX_RUN_DIR, read_only=False)],
            # TCP, not /health: a SuperLink restart must not restart the filter too.
            probe=k8s.core.v1.ProbeArgs(tcp_socket=k8s.core.v1.TCPSocketActionArgs(port=naming.FLEET_PORT),
                                        period_seconds=10, failure_threshold=6))
        return k8s.apps.v1.Deployment(f"{self._name}-superlink", metadata=self._meta(SUPERLINK, SUPERLINK),
                                      spec=k8s.apps.v1.DeploymentSpecArgs(
            replicas=1,
            # One SQLite database on a ReadWriteOnce volume: never two SuperLinks at once.
            strategy=k8s.apps.v1.DeploymentStrategyArgs(type="Recreate"),
            selector=k8s.meta.v1.LabelSelectorArgs(match_labels=self._superlink_pods()),
            template=kube.pod_template(self._labels(SUPERLINK), kube.pod_spec(images, [superlink, fleet_filter], [
                kube.secret_volume("tls", TLS_SECRET),
                kube.config_volume("nginx-conf", NGINX_CONFIG),
                kube.config_volume("state-backup", superlink_state.SCRIPT_CONFIG),
                kube.claim_volume("state", STATE_CLAIM),
                k8s.core.v1.VolumeArgs(name="nginx-run", empty_dir=k8s.core.v1.EmptyDirVolumeSourceArgs(
                    size_limit="256Mi")),
            ], init_containers=[superlink_state.init_container(images, naming.SUPERLINK_DATABASE, state_mount,
                                                               "state-backup")]),
                self._contents)), opts=self._after([*depends_on, nginx, backup_script]))

    def _superlink_pods(self) -> dict[str, str]:
        return kube.selector(self._config.federation, SUPERLINK)

    def _services(self) -> list[k8s.core.v1.Service]:
        """The public Fleet Service (fleet listener only) and the internal Runtime and Control Services."""
        server = self._config.server
        annotations = dict(server.service_annotations)
        if server.service_type == "LoadBalancer" and not server.wait_for_address:
            # The provider otherwise waits ~10 minutes for an address that a cluster without a
            # load-balancer controller never assigns, then fails the update.
            annotations.update(kube.SKIP_AWAIT)
        fleet = k8s.core.v1.Service(f"{self._name}-fleet", metadata=self._meta(
            naming.FLEET_SERVICE, SUPERLINK, annotations), spec=k8s.core.v1.ServiceSpecArgs(
            type=server.service_type, selector=self._superlink_pods(), load_balancer_ip=server.load_balancer_ip,
            ports=[k8s.core.v1.ServicePortArgs(name="fleet", port=server.public_port, target_port="fleet",
                                               node_port=server.node_port, protocol="TCP")]), opts=self._in_ns)
        self.fleet_address = pulumi.Output.all(fleet.spec, fleet.status).apply(
            lambda parts: fleet_address(server.service_type, *parts))
        return [k8s.core.v1.Service(f"{self._name}-{api}", metadata=self._meta(service, SUPERLINK),
                                    spec=k8s.core.v1.ServiceSpecArgs(
            type="ClusterIP", selector=self._superlink_pods(),
            ports=[k8s.core.v1.ServicePortArgs(name=api, port=port, target_port=api, protocol="TCP")]),
            opts=self._in_ns)
            for api, service, port in (("runtime", naming.RUNTIME_SERVICE, naming.RUNTIME_PORT),
                                       ("control", naming.CONTROL_SERVICE, naming.CONTROL_PORT))]

    def _executor(self, depends_on: Sequence[pulumi.Resource]) -> None:
        """SuperExec launching one ServerApp pod per run, with its ServiceAccounts and RBAC."""
        config = self._config
        superexec.declare(
            self._name, meta=lambda role: self._meta(role, role), federation=config.federation, namespace=self._ns,
            images=config.images, executor_role=EXECUTOR, task_role=TASK, config=executor_config(config),
            runtime_address=naming.service_address(naming.RUNTIME_SERVICE, self._ns, naming.RUNTIME_PORT),
            pending_timeout=config.server.pending_timeout, contents=self._contents, opts=self._in_ns,
            depends_on=depends_on)

    def _registration(self, args: ServerSiteArgs, depends_on: Sequence[pulumi.Resource]) -> None:
        """The Job keeping SuperLink's registered keys equal to the sites (components/registration.py)."""
        registration.declare(
            self._name, meta=lambda obj_name: self._meta(obj_name, registration.ROLE),
            labels=self._labels(registration.ROLE), namespace=self._ns, images=self._config.images,
            public_keys=args.supernode_public_keys, control_address=naming.service_address(
                naming.CONTROL_SERVICE, self._ns, naming.CONTROL_PORT), opts=self._in_ns, depends_on=depends_on,
            one_config_map=args.one_key_config_map)

    def _network_policies(self) -> None:
        """Deny everything in the namespace, then allow exactly the flows above."""
        config, name, fed = self._config, self._name, self._config.federation
        kube.baseline_policies(name, self._ns, self._labels("server"), config.clusters[config.server.cluster].dns,
                               kube.baseline_scope(fed, config.server.existing_namespace), self._in_ns)
        everyone_here: dict[str, str] = {}
        kube.network_policy(f"{name}-superlink-policy", self._meta(SUPERLINK, SUPERLINK), self._superlink_pods(),
                            ingress=[
            kube.Flow(ports=(naming.FLEET_PORT,), anywhere=True),
            *[kube.Flow(ports=(naming.RUNTIME_PORT,), pods=kube.selector(fed, role)) for role in (EXECUTOR, TASK)],
            # Control: pods of this namespace; administrators arrive through port-forward (the kubelet).
            kube.Flow(ports=(naming.CONTROL_PORT,), pods=everyone_here),
        ], opts=self._in_ns)
        to_runtime = kube.Flow(ports=(naming.RUNTIME_PORT,), pods=self._superlink_pods())
        api_server = kube.Flow(ports=kube.API_SERVER_PORTS,
                               cidrs=config.clusters[config.server.cluster].api_server_cidrs)
        kube.network_policy(f"{name}-executor-policy", self._meta(EXECUTOR, EXECUTOR), kube.selector(fed, EXECUTOR),
                            egress=[to_runtime, api_server], opts=self._in_ns)
        kube.network_policy(f"{name}-task-policy", self._meta(TASK, TASK), kube.selector(fed, TASK),
                            egress=[to_runtime], opts=self._in_ns)
        kube.network_policy(f"{name}-registrar-policy", self._meta(registration.ROLE, registration.ROLE),
                            kube.selector(fed, registration.ROLE),
                            egress=[kube.Flow(ports=(naming.CONTROL_PORT,), pods=self._superlink_pods())],
                            opts=self._in_ns)


def fleet_address(service_type: str, spec: Any, status: Any) -> str:
    """Where the Fleet Service is reachable from outside, as the API server reports it.

    LoadBalancer: the first ingress hostname or IP (point `server.endpoint`'s DNS record at it);
    NodePort: `<any node address>:<nodePort>`; ClusterIP: in-cluster only. Render mode and an
    address not yet assigned say so instead of an empty string. `spec` and `status` are the
    Service's outputs, typed objects or plain mappings (camelCase), depending on the SDK path.
    """
    if service_type == "ClusterIP":
        return "in-cluster only (serviceType ClusterIP)"
    if service_type == "NodePort":
        ports = _field(spec, "ports") or []
        node_port = _field(ports[0], "node_port") if ports else None
        return f"<any node address>:{node_port}" if node_port else "node port not known (render mode)"
    for entry in _field(_field(status, "load_balancer"), "ingress") or []:
        address = _field(entry, "hostname") or _field(entry, "ip")
        if address:
            return address
    return f"pending: no load-balancer address yet (kubectl get service {naming.FLEET_SERVICE}, or pulumi refresh)"


def _field(value: Any, name: str) -> Any:
    """`value.name`, or `value["name"]` / `value["nAme"]` (camelCase) when it is a mapping."""
    if isinstance(value, Mapping):
        head, *rest = name.split("_")
        return value.get(name, value.get(head + "".join(part.title() for part in rest)))
    return getattr(value, name, None)
