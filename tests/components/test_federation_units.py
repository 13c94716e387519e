"""Invariants of what the Federation declares (Pulumi mocks; one invariant per test)."""

from __future__ import annotations

import json
import tomllib
from typing import Any

import pytest
import yaml
from cryptography import x509

from component_harness import ROOT, Declared, Deployment, deploy_raw, dev_raw_config, large_raw_config
from components import kube, naming, registration
from components.config import FederationConfig
from components.fleet_filter import nginx_conf
from tests.flower import TASK_POLL_INTERVAL, launched_pod, parse_config_args, task_poll_interval

SERVER_NS = "demo-server"
SITE_NS = {"hospital-a": "demo-hospital-a", "hospital-b": "demo-hospital-b", "lab-c": "demo-lab-c"}
# Each SuperNode lives in a namespace of its own, away from the executor (components/supernode.py).
NODE_NS = {site: f"{namespace}-supernode" for site, namespace in SITE_NS.items()}


def containers(deployment: Declared) -> list[dict[str, Any]]:
    return deployment.manifest()["spec"]["template"]["spec"]["containers"]


def container(deployment: Declared, name: str) -> dict[str, Any]:
    return next(c for c in containers(deployment) if c["name"] == name)


def strings(value: Any) -> list[str]:
    """Every string anywhere inside a nested value."""
    if isinstance(value, str):
        return [value]
    items = value.values() if isinstance(value, dict) else value if isinstance(value, list) else []
    return [s for item in items for s in strings(item)]


def flag(args: list[str], name: str) -> str:
    assert name in args, f"{name} missing from {args}"
    return args[args.index(name) + 1]


def executor_yaml(dev: Deployment, namespace: str, name: str) -> dict[str, Any]:
    return yaml.safe_load(dev.one("ConfigMap", name, namespace).inputs["data"]["executor.yaml"])


def site_pod(dev: Deployment, site: str) -> dict[str, Any]:
    ns = SITE_NS[site]
    text = dev.one("ConfigMap", "clientapp-executor", ns).inputs["data"]["executor.yaml"]
    return launched_pod(text, "flwr-clientapp", f"supernode-runtime.{NODE_NS[site]}.svc:9094")


# --- providers ----------------------------------------------------------------------------


def test_one_provider_per_cluster_rendering_to_its_directory(dev: Deployment) -> None:
    rendered = {p.name: p.inputs.get("renderYamlToDirectory") for p in dev.providers()}
    assert rendered == {"demo-hub": "out/dev/hub", "demo-hospitals": "out/dev/hospitals"}


def test_a_real_cluster_gets_its_kubeconfig_as_a_secret_and_its_context(large: Deployment) -> None:
    real = [p for p in large.providers() if "kubeconfig" in p.inputs]
    assert len(real) == 1
    assert "kubeconfig" in real[0].secret_inputs
    assert real[0].inputs["context"] == "prod"


def test_every_kubernetes_object_uses_its_clusters_provider(dev: Deployment, dev_config: FederationConfig) -> None:
    cluster_of = {SERVER_NS: dev_config.server.cluster, **{s.namespace: s.cluster for s in dev_config.sites},
                  **{s.supernode_namespace: s.cluster for s in dev_config.sites}}
    for resource in dev.kubernetes():
        namespace = resource.namespace or resource.k8s_name  # a Namespace names itself
        assert f"::demo-{cluster_of[namespace]}::" in resource.provider, (resource.name, resource.provider)


def test_the_dev_stack_disables_the_default_kubernetes_provider() -> None:
    stack = yaml.safe_load((ROOT / "Pulumi.dev.yaml").read_text())["config"]
    assert "kubernetes" in stack["pulumi:disable-default-providers"]


def test_kubernetes_objects_belong_to_a_site_component(dev: Deployment) -> None:
    for resource in dev.kubernetes():
        assert resource.parent.split("::")[-2].endswith(("flowerbed:index:ServerSite", "flowerbed:index:ClientSite"))


# --- namespaces and security ----------------------------------------------------------------


def test_every_namespace_enforces_restricted_pod_security(dev: Deployment) -> None:
    namespaces = dev.objects("Namespace")
    assert {n.k8s_name for n in namespaces} == {SERVER_NS, *SITE_NS.values(), *NODE_NS.values()}
    for ns in namespaces:
        labels = ns.inputs["metadata"]["labels"]
        assert labels["pod-security.kubernetes.io/enforce"] == "restricted"


def test_every_container_runs_as_flowers_app_user_hardened(dev: Deployment) -> None:
    pods = [d.manifest()["spec"]["template"]["spec"] for d in dev.objects("Deployment") + dev.objects("Job")]
    # superlink, serverapp executor, registration job; per site: supernode, executor
    assert len(pods) == 3 + 2 * len(SITE_NS)
    for pod in pods:
        for c in pod["containers"]:
            ctx = c["securityContext"]
            assert (ctx["runAsUser"], ctx["runAsGroup"], ctx["runAsNonRoot"]) == (49999, 49999, True)
            assert ctx["readOnlyRootFilesystem"] is True and ctx["allowPrivilegeEscalation"] is False
            assert ctx["capabilities"] == {"drop": ["ALL"]}
            assert ctx["seccompProfile"] == {"type": "RuntimeDefault"}


def test_every_container_has_requests_and_limits(dev: Deployment) -> None:
    for d in dev.objects("Deployment") + dev.objects("Job"):
        for c in containers(d):
            assert set(c["resources"]["requests"]) >= {"cpu", "memory"}
            assert set(c["resources"]["limits"]) >= {"cpu", "memory"}


def test_image_pull_policy_follows_the_config(variant: Deployment) -> None:
    for d in variant.objects("Deployment") + variant.objects("Job"):
        assert {c["imagePullPolicy"] for c in containers(d)} == {"Always"}
    assert executor_yaml(variant, "demo-lab-c", "clientapp-executor")["image-pull-policy"] == "Always"


def test_pull_secrets_reach_every_pod_and_the_task_service_accounts(variant: Deployment) -> None:
    for d in variant.objects("Deployment") + variant.objects("Job"):
        assert d.manifest()["spec"]["template"]["spec"]["imagePullSecrets"] == [{"name": "regcred"}]
    # The executor has no pull-secret key: launched pods inherit them from their ServiceAccount.
    for sa in variant.objects("ServiceAccount"):
        assert sa.inputs["imagePullSecrets"] == [{"name": "regcred"}]


def test_only_executors_get_a_service_account_token(dev: Deployment) -> None:
    for d in dev.objects("Deployment") + dev.objects("Job"):
        spec = d.manifest()["spec"]["template"]["spec"]
        assert spec["automountServiceAccountToken"] is d.k8s_name.endswith("-executor"), d.k8s_name
    for sa in dev.objects("ServiceAccount"):
        assert sa.inputs["automountServiceAccountToken"] is sa.k8s_name.endswith("-executor")


# --- server: SuperLink, filter, services ------------------------------------------------


def test_superlink_runs_with_the_required_flags(dev: Deployment) -> None:
    superlink = container(dev.one("Deployment", "superlink", SERVER_NS), "superlink")
    args = superlink["args"]
    assert superlink["command"] == ["flower-superlink"]
    assert flag(args, "--isolation") == "process"
    assert flag(args, "--host") == "0.0.0.0"
    assert {"--enable-supernode-auth", "--disable-runtime-dependency-installation"} <= set(args)
    assert "--insecure" not in args
    for option, file in (("--ssl-certfile", "tls.crt"), ("--ssl-keyfile", "tls.key"), ("--ssl-ca-certfile", "ca.crt")):
        assert flag(args, option) == f"{naming.TLS_DIR}/{file}"


def test_superlink_keeps_its_database_on_the_state_volume(dev: Deployment) -> None:
    deployment = dev.one("Deployment", "superlink", SERVER_NS)
    superlink = container(deployment, "superlink")
    mount = next(m for m in superlink["volumeMounts"] if m["name"] == "state")
    assert flag(superlink["args"], "--database").startswith(mount["mountPath"] + "/")
    volume = next(v for v in deployment.manifest()["spec"]["template"]["spec"]["volumes"] if v["name"] == "state")
    assert volume["persistentVolumeClaim"]["claimName"] == "superlink-state"
    assert deployment.manifest()["spec"]["strategy"]["type"] == "Recreate"


def test_the_sidecar_runs_the_rendered_filter_config(dev: Deployment) -> None:
    sidecar = container(dev.one("Deployment", "superlink", SERVER_NS), "fleet-filter")
    conf_path = flag(sidecar["args"], "-c")
    mount = next(m for m in sidecar["volumeMounts"] if conf_path.startswith(m["mountPath"] + "/"))
    conf = dev.one("ConfigMap", "superlink-nginx", SERVER_NS).inputs["data"]["nginx.conf"]
    run_dir = next(m["mountPath"] for m in sidecar["volumeMounts"] if m["name"] == "nginx-run")
    assert mount["name"] == "nginx-conf"
    assert conf == nginx_conf(superlink_port=8000, fleet_port=9092, runtime_port=9091, control_port=9093,
                              cert_file=f"{naming.TLS_DIR}/tls.crt", key_file=f"{naming.TLS_DIR}/tls.key",
                              ca_file=f"{naming.TLS_DIR}/ca.crt", superlink_server_name="localhost",
                              runtime_dir=run_dir)


def test_the_control_api_is_never_on_a_public_service(large: Deployment) -> None:
    sidecar_ports = {p["name"]: p["containerPort"] for p in container(
        large.one("Deployment", "superlink", "demo-server"), "fleet-filter")["ports"]}
    assert sidecar_ports["fleet"] == naming.FLEET_PORT
    exposed = [s for s in large.objects("Service") if s.inputs["spec"]["type"] != "ClusterIP"]
    assert [s.k8s_name for s in exposed] == ["superlink-fleet"]
    assert [p["targetPort"] for p in exposed[0].inputs["spec"]["ports"]] == ["fleet"]


def test_runtime_and_control_services_are_cluster_internal(dev: Deployment) -> None:
    for name, port in (("superlink-runtime", naming.RUNTIME_PORT), ("superlink-control", naming.CONTROL_PORT)):
        spec = dev.one("Service", name, SERVER_NS).manifest()["spec"]
        assert spec["type"] == "ClusterIP"
        assert [(p["port"], p["targetPort"]) for p in spec["ports"]] == [(port, name.split("-")[1])]


def test_public_service_follows_type_port_annotations_and_ip(variant: Deployment) -> None:
    spec = variant.one("Service", "superlink-fleet", SERVER_NS)
    # waitForAddress: false -> the provider does not wait for a load-balancer address
    assert spec.inputs["metadata"]["annotations"] == {"example.org/lb": "internal", "pulumi.com/skipAwait": "true"}
    assert spec.inputs["spec"]["loadBalancerIP"] == "203.0.113.7"
    assert spec.manifest()["spec"]["ports"][0]["port"] == 8443
    assert spec.manifest()["spec"]["ports"][0]["nodePort"] == 31443


def test_kubernetes_picks_the_node_port_unless_the_config_fixes_it(dev: Deployment) -> None:
    assert "nodePort" not in dev.one("Service", "superlink-fleet", SERVER_NS).manifest()["spec"]["ports"][0]


def test_a_load_balancer_is_awaited_by_default(dev: Deployment) -> None:
    annotations = dev.one("Service", "superlink-fleet", SERVER_NS).inputs["metadata"].get("annotations") or {}
    assert "pulumi.com/skipAwait" not in annotations


def test_server_certificate_names_endpoint_and_services(dev: Deployment) -> None:
    cert = next(r for r in dev.of_type("pulumi-python:dynamic/flowerbed:ServerCertificate")
                if r.name == "demo-server-certificate")
    assert cert.inputs["dns_names"] == naming.server_certificate_names("fl.demo.example.org", SERVER_NS)
    issued = x509.load_pem_x509_certificate(cert.outputs["cert_pem"].encode())
    sans = issued.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert "superlink-runtime.demo-server.svc" in sans.get_values_for_type(x509.DNSName)


def test_tls_secret_carries_the_issued_certificate_and_the_ca(dev: Deployment) -> None:
    secret = dev.one("Secret", "superlink-tls", SERVER_NS)
    cert = next(r for r in dev.resources if r.name == "demo-server-certificate")
    ca = next(r for r in dev.resources if r.name == "demo-ca")
    assert secret.inputs["stringData"] == {"tls.crt": cert.outputs["cert_pem"], "tls.key": cert.outputs["key_pem"],
                                           "ca.crt": ca.outputs["cert_pem"]}
    assert "stringData" in secret.secret_inputs


def test_unrelated_changes_keep_the_server_certificate_inputs(dev: Deployment, grown: Deployment) -> None:
    def cert_inputs(d: Deployment) -> dict[str, Any]:
        cert = next(r for r in d.resources if r.name == "demo-server-certificate")
        return {k: v for k, v in cert.inputs.items() if not k.startswith(("__", "ca_"))}

    assert cert_inputs(dev) == cert_inputs(grown)


def test_adding_a_site_keeps_the_other_sites_key_inputs(dev: Deployment, grown: Deployment) -> None:
    def key_inputs(d: Deployment) -> dict[str, Any]:
        return {r.name: {k: v for k, v in r.inputs.items() if not k.startswith("__")}
                for r in d.of_type("pulumi-python:dynamic/flowerbed:SupernodeKey")}

    before, after = key_inputs(dev), key_inputs(grown)
    assert set(after) - set(before) == {"demo-clinic-d-supernode-key"}
    assert {name: after[name] for name in before} == before


# --- server: ServerApp executor, RBAC, registration ------------------------------------------


def test_serverapp_executor_runs_the_kubernetes_executor_on_the_runtime_service(dev: Deployment) -> None:
    superexec = container(dev.one("Deployment", "serverapp-executor", SERVER_NS), "superexec")
    args = superexec["args"]
    assert flag(args, "--executor") == "kubernetes"
    assert flag(args, "--runtime-api-address") == "superlink-runtime.demo-server.svc:9091"
    assert flag(args, "--root-certificates") == f"{naming.CA_DIR}/ca.crt"
    assert flag(args, "--executor-config") == "/etc/flowerbed/executor/executor.yaml"


def test_serverapp_pods_use_the_job_image_and_write_artifacts_to_the_volume(dev: Deployment) -> None:
    text = dev.one("ConfigMap", "serverapp-executor", SERVER_NS).inputs["data"]["executor.yaml"]
    pod = launched_pod(text, "flwr-serverapp", "superlink-runtime.demo-server.svc:9091")
    task = pod["spec"]["containers"][0]
    assert task["image"] == "registry.example.org/flowerbed/job:0.1.0-flwr1.42.0"
    assert task["command"] == ["flwr-serverapp"]
    mount = next(m for m in task["volumeMounts"] if m["mountPath"] == naming.ARTIFACTS_DIR)
    volume = next(v for v in pod["spec"]["volumes"] if v["name"] == mount["name"])
    assert volume["persistentVolumeClaim"]["claimName"] == "serverapp-artifacts"
    assert not mount.get("readOnly")


def test_serverapp_pods_get_the_configured_resources(dev: Deployment) -> None:
    resources = executor_yaml(dev, SERVER_NS, "serverapp-executor")["resources"]
    assert resources == {"requests": {"cpu": "2", "memory": "4Gi"}, "limits": {"cpu": "2", "memory": "4Gi"}}


@pytest.mark.parametrize("namespace", [SERVER_NS, *SITE_NS.values()])
def test_executor_rbac_is_exactly_the_executors_calls(dev: Deployment, namespace: str) -> None:
    [role] = dev.objects("Role", namespace)
    rules = {(tuple(r["apiGroups"]), tuple(r["resources"])): sorted(r["verbs"]) for r in role.inputs["rules"]}
    # Flower's executor's calls, and the Event its pending reaper records.
    assert rules == {(("",), ("pods",)): ["create", "delete", "list"],
                     (("",), ("secrets",)): ["create", "delete", "list"],
                     (("",), ("events",)): ["create"]}
    [binding] = dev.objects("RoleBinding", namespace)
    assert binding.inputs["roleRef"] == {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role",
                                         "name": role.k8s_name}
    executor = next(d.k8s_name for d in dev.objects("Deployment", namespace) if d.k8s_name.endswith("-executor"))
    assert binding.inputs["subjects"] == [{"kind": "ServiceAccount", "name": executor, "namespace": namespace}]


@pytest.mark.parametrize(("namespace", "role", "timeout"), [
    (SERVER_NS, "serverapp", "120"), ("demo-hospital-a", "clientapp", "600"), ("demo-lab-c", "clientapp", "45")])
def test_each_executor_pod_runs_the_pending_reaper_on_exactly_its_task_pods(
        variant: Deployment, namespace: str, role: str, timeout: str) -> None:
    """Same pod, so same ServiceAccount as SuperExec; the script mounted from its ConfigMap."""
    deployment = variant.one("Deployment", f"{role}-executor", namespace)
    reaper = container(deployment, "pending-reaper")
    assert reaper["image"] == container(deployment, "superexec")["image"]
    assert reaper["command"] == ["python"]
    script = "/etc/flowerbed/reaper/pending_reaper.py"
    assert reaper["args"][0] == script
    assert flag(reaper["args"], "--namespace") == namespace
    assert flag(reaper["args"], "--selector") == f"flowerbed.dev/federation=demo,flowerbed.dev/role={role}-task"
    assert flag(reaper["args"], "--timeout") == timeout
    assert deployment.manifest()["spec"]["template"]["spec"]["serviceAccountName"] == f"{role}-executor"
    # The selector matches the labels Flower's executor puts on the pods it launches.
    config = yaml.safe_load(variant.one("ConfigMap", f"{role}-executor", namespace).inputs["data"]["executor.yaml"])
    selected = dict(term.split("=") for term in flag(reaper["args"], "--selector").split(","))
    assert selected.items() <= config["labels"].items()
    data = variant.one("ConfigMap", "pending-reaper", namespace).inputs["data"]
    assert data == {"pending_reaper.py": (ROOT / "components" / "pending_reaper.py").read_text()}


def test_no_cluster_wide_rbac(dev: Deployment) -> None:
    assert not dev.objects("ClusterRole") and not dev.objects("ClusterRoleBinding")


def test_no_executor_can_read_a_supernode_key(large: Deployment) -> None:
    """flwr 1.42's executor lists Secrets by label, which RBAC cannot narrow: keys live where no Role reaches."""
    reachable = {role.namespace for role in large.objects("Role")
                 if any("secrets" in rule["resources"] for rule in role.inputs["rules"])}
    keys = {secret.namespace for secret in large.objects("Secret") if secret.k8s_name == "supernode-auth"}
    assert len(keys) == 20 and len(reachable) == 21
    assert not keys & reachable
    # Nothing binds any subject to anything in a SuperNode's namespace.
    assert not {binding.namespace for binding in large.objects("RoleBinding")} & keys


def registration_job(d: Deployment) -> Declared:
    [job] = d.objects("Job", SERVER_NS)
    return job


def test_one_registration_job_syncs_every_sites_key_with_the_registry_script(dev: Deployment) -> None:
    issued = {r.inputs["site"]: r.outputs["public_openssh"]
              for r in dev.of_type("pulumi-python:dynamic/flowerbed:SupernodeKey")}
    job = registration_job(dev)
    pod = job.manifest()["spec"]["template"]["spec"]
    [keys] = [v for v in pod["volumes"] if v["name"] == "keys"]
    mounted = {}
    for source in keys["projected"]["sources"]:
        mounted.update(dev.one("ConfigMap", source["configMap"]["name"], SERVER_NS).inputs["data"])
    assert mounted == {f"{site}.pub": key for site, key in issued.items()}
    [script] = [v["configMap"]["name"] for v in pod["volumes"] if v["name"] == "script"]
    assert dev.one("ConfigMap", script, SERVER_NS).inputs["data"] == {
        "supernode_registry.py": (ROOT / "components" / "supernode_registry.py").read_text()}
    register = container(job, "register")
    assert [*register["command"], *register["args"]] == registration.command("superlink-control.demo-server.svc:9093")
    assert job.k8s_name == registration.job_name(registration.SCRIPT.read_text(), issued)


def test_the_registration_job_dials_the_control_service_with_the_federation_ca(dev: Deployment) -> None:
    args = container(registration_job(dev), "register")["args"]
    assert flag(args, "--superlink") == "superlink-control.demo-server.svc:9093"
    ca_dir = next(m["mountPath"] for m in container(registration_job(dev), "register")["volumeMounts"]
                  if m["name"] == "ca")
    assert flag(args, "--root-certificates") == f"{ca_dir}/ca.crt"


def test_the_registration_runs_again_exactly_when_the_sites_keys_change() -> None:
    # The Job's name is its identity in Kubernetes: a new name is a new run, the same name none.
    script, keys = registration.SCRIPT.read_text(), {"a": "ecdsa-sha2-nistp384 AAAA1", "b": "ecdsa-sha2-nistp384 BBBB"}
    name = registration.job_name(script, keys)
    assert registration.job_name(script, dict(reversed(keys.items()))) == name
    assert registration.job_name(script, {"a": keys["a"]}) != name  # a site removed
    assert registration.job_name(script, {**keys, "c": "ecdsa-sha2-nistp384 CCCC"}) != name  # a site added
    assert registration.job_name(script, {**keys, "b": "ecdsa-sha2-nistp384 B2"}) != name  # a key re-issued
    assert registration.job_name(script + "\n", keys) != name  # the script changed


# --- client sites ---------------------------------------------------------------------------


@pytest.mark.parametrize("site", ["hospital-a", "hospital-b", "lab-c"])
def test_supernode_dials_the_endpoint_with_its_key_and_node_config(dev: Deployment, site: str) -> None:
    supernode = container(dev.one("Deployment", "supernode", NODE_NS[site]), "supernode")
    args = supernode["args"]
    assert flag(args, "--superlink") == "fl.demo.example.org:443"
    assert flag(args, "--root-certificates") == f"{naming.CA_DIR}/ca.crt"
    assert flag(args, "--isolation") == "process"
    key_dir = next(m["mountPath"] for m in supernode["volumeMounts"] if m["name"] == "auth")
    assert flag(args, "--auth-supernode-private-key") == f"{key_dir}/supernode.key"
    assert parse_config_args([flag(args, "--node-config")]) == {
        "site-name": site, "data-root": "/data", "state-dir": naming.STATE_DIR, "federation": "demo"}


def test_supernode_home_is_a_writable_volume(dev: Deployment) -> None:
    supernode = container(dev.one("Deployment", "supernode", NODE_NS["lab-c"]), "supernode")
    home = next(e["value"] for e in supernode["env"] if e["name"] == "FLWR_HOME")
    mount = next(m for m in supernode["volumeMounts"] if home.startswith(m["mountPath"]))
    assert mount["readOnly"] is False


def test_the_supernode_key_is_secret_and_only_in_its_supernodes_namespace(dev: Deployment) -> None:
    secret = dev.one("Secret", "supernode-auth", NODE_NS["hospital-a"])
    key = next(r for r in dev.resources if r.name == "demo-hospital-a-supernode-key")
    assert secret.inputs["stringData"] == {"supernode.key": key.outputs["private_openssh"]}
    assert "stringData" in secret.secret_inputs
    holders = [r for r in dev.kubernetes() if key.outputs["private_openssh"] in strings(r.inputs)]
    assert holders == [secret]


@pytest.mark.parametrize(("site", "gpus"), [("hospital-a", 1), ("hospital-b", 0), ("lab-c", 0)])
def test_launched_clientapp_pods_get_the_sites_gpus(dev: Deployment, site: str, gpus: int) -> None:
    limits = site_pod(dev, site)["spec"]["containers"][0]["resources"]["limits"]
    assert limits.get("nvidia.com/gpu", 0) == gpus


def test_launched_clientapp_pods_get_cpu_memory_placement(dev: Deployment) -> None:
    pod = site_pod(dev, "hospital-a")
    assert pod["spec"]["containers"][0]["resources"]["requests"] == {"cpu": "4", "memory": "16Gi"}
    assert pod["spec"]["nodeSelector"] == {"nvidia.com/gpu.present": "true"}
    assert pod["spec"]["tolerations"] == [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}]
    assert pod["spec"]["serviceAccountName"] == "clientapp-task"


def test_study_data_is_mounted_read_only_unless_rw(large: Deployment) -> None:
    text = large.one("ConfigMap", "clientapp-executor", "demo-site-03").inputs["data"]["executor.yaml"]
    pod = launched_pod(text, "flwr-clientapp", "supernode-runtime.demo-site-03.svc:9094")
    mounts = {m["mountPath"]: m for m in pod["spec"]["containers"][0]["volumeMounts"]}
    volumes = {v["name"]: v for v in pod["spec"]["volumes"]}
    ro, rw = mounts["/data/default/tabular"], mounts["/data/imaging/scans"]
    assert ro["readOnly"] is True and volumes[ro["name"]]["persistentVolumeClaim"]["readOnly"] is True
    assert rw["readOnly"] is False and volumes[rw["name"]]["persistentVolumeClaim"] == {
        "claimName": "pacs-3", "readOnly": False}


@pytest.mark.parametrize("site", ["hospital-a", "lab-c"])
def test_clientapp_pods_mount_the_sites_state_claim_writable_where_node_config_says(dev: Deployment, site: str) -> None:
    pod = site_pod(dev, site)
    state = next(m for m in pod["spec"]["containers"][0]["volumeMounts"] if m["mountPath"] == naming.STATE_DIR)
    volume = next(v for v in pod["spec"]["volumes"] if v["name"] == state["name"])
    assert volume["persistentVolumeClaim"] == {"claimName": naming.STATE_CLAIM}
    assert not state.get("readOnly")
    [claim] = [c for c in dev.objects("PersistentVolumeClaim", SITE_NS[site]) if c.k8s_name == naming.STATE_CLAIM]
    assert claim.manifest()["spec"]["resources"]["requests"]["storage"] == "1Gi"  # stateStorage's default size


def test_scratch_is_a_size_limited_empty_dir(dev: Deployment) -> None:
    pod = site_pod(dev, "hospital-b")
    scratch = next(m for m in pod["spec"]["containers"][0]["volumeMounts"] if m["mountPath"] == naming.SCRATCH_DIR)
    volume = next(v for v in pod["spec"]["volumes"] if v["name"] == scratch["name"])
    assert volume == {"name": scratch["name"], "emptyDir": {"sizeLimit": "10Gi"}}


def test_max_concurrent_tasks_is_the_active_pod_budget(large: Deployment) -> None:
    assert executor_yaml(large, "demo-site-00", "clientapp-executor")["active-pod-budget"] == 1
    assert executor_yaml(large, "demo-site-01", "clientapp-executor")["active-pod-budget"] == 2


def test_clientapp_executor_dials_its_supernode_runtime(dev: Deployment) -> None:
    args = container(dev.one("Deployment", "clientapp-executor", "demo-lab-c"), "superexec")["args"]
    assert flag(args, "--runtime-api-address") == "supernode-runtime.demo-lab-c-supernode.svc:9094"
    assert flag(args, "--executor") == "kubernetes"


def test_every_superexec_polls_for_tasks_at_an_interval_flower_accepts(dev: Deployment) -> None:
    for namespace, name in ((SERVER_NS, "serverapp-executor"), ("demo-lab-c", "clientapp-executor")):
        env = {e["name"]: e["value"] for e in container(dev.one("Deployment", name, namespace), "superexec")["env"]}
        # Flower's own parser; its default is 1 s.
        assert task_poll_interval(env[TASK_POLL_INTERVAL]) == 0.2


def test_supernode_runtime_api_is_tls_with_a_certificate_for_its_service(dev: Deployment) -> None:
    args = container(dev.one("Deployment", "supernode", NODE_NS["lab-c"]), "supernode")["args"]
    assert flag(args, "--ssl-certfile") == f"{naming.TLS_DIR}/tls.crt"
    cert = next(r for r in dev.resources if r.name == "demo-lab-c-runtime-certificate")
    assert cert.inputs["dns_names"] == naming.supernode_runtime_names(NODE_NS["lab-c"])


def test_existing_claims_are_referenced_not_created(large: Deployment) -> None:
    claims = {c.k8s_name for c in large.objects("PersistentVolumeClaim", "demo-site-03")}
    assert claims == {"study-default-tabular", "clientapp-state"}  # the state claim is always managed


# --- data safety ----------------------------------------------------------------------------


def test_state_and_study_volumes_are_retained_on_delete(dev: Deployment) -> None:
    claims = dev.objects("PersistentVolumeClaim")
    assert {(c.namespace, c.k8s_name) for c in claims} == {
        (SERVER_NS, "superlink-state"), (SERVER_NS, "serverapp-artifacts"),
        ("demo-hospital-a", "study-default-tabular"), ("demo-hospital-b", "study-default-tabular"),
        *((f"demo-{site}", "clientapp-state") for site in ("hospital-a", "hospital-b", "lab-c"))}
    assert all(c.retain_on_delete and not c.protect for c in claims)


def test_namespaces_holding_retained_claims_are_retained_so_deleting_them_cannot_delete_the_claims(
        dev: Deployment) -> None:
    # Kubernetes deletes every claim of a deleted namespace, retained or not.
    retained = {(r.kind, r.k8s_name) for r in dev.kubernetes()
                if r.retain_on_delete and r.kind != "PersistentVolumeClaim"}
    assert retained == {("Namespace", SERVER_NS), ("Namespace", "demo-hospital-a"), ("Namespace", "demo-hospital-b"),
                        ("Namespace", "demo-lab-c")}  # lab-c holds no study data, but its state volume
    assert not any(r.protect for r in dev.kubernetes())


def test_claims_skip_the_providers_await_so_growing_one_cannot_hang_up(large: Deployment) -> None:
    claims = large.objects("PersistentVolumeClaim")
    assert claims
    for claim in claims:
        assert claim.inputs["metadata"]["annotations"] == {"pulumi.com/skipAwait": "true"}, claim.k8s_name
    assert not [r for r in large.kubernetes() if r.kind != "PersistentVolumeClaim"
                and "pulumi.com/skipAwait" in (r.inputs["metadata"].get("annotations") or {})]


def test_data_safety_is_configurable(variant: Deployment) -> None:
    claims = variant.objects("PersistentVolumeClaim")
    assert claims and all(c.protect and not c.retain_on_delete for c in claims)
    holders = {c.namespace for c in claims}
    for ns in variant.objects("Namespace"):
        assert (ns.protect, ns.retain_on_delete) == (ns.k8s_name in holders, False), ns.k8s_name


def test_a_namespace_holding_existing_claims_is_always_retained() -> None:
    raw = large_raw_config(sites=2, clusters=1)
    raw["dataSafety"] = {"retainOnDelete": False}
    raw["sites"][1]["studyData"] = [d for d in raw["sites"][1]["studyData"] if "existingClaim" in d]
    namespaces = {ns.k8s_name: ns for ns in deploy_raw(raw).objects("Namespace")}
    # site-00 holds a managed claim (deleted as configured) and an existing one (never ours to delete).
    assert namespaces["demo-site-00"].retain_on_delete and namespaces["demo-site-01"].retain_on_delete
    assert not namespaces["demo-server"].retain_on_delete


@pytest.fixture(scope="module")
def existing_namespaces() -> Deployment:
    raw = dev_raw_config()
    raw["server"]["namespace"] = {"name": "shared-server", "existing": True}
    raw["sites"][2]["namespace"] = {"name": "lab-team", "existing": True}
    return deploy_raw(raw)


def test_existing_namespaces_are_used_never_declared(existing_namespaces: Deployment) -> None:
    declared = {ns.k8s_name for ns in existing_namespaces.objects("Namespace")}
    # A SuperNode's namespace is always the program's, also next to an existing site namespace.
    assert declared == {"demo-hospital-a", "demo-hospital-b", NODE_NS["hospital-a"], NODE_NS["hospital-b"],
                        "lab-team-supernode"}
    assert existing_namespaces.one("Deployment", "superlink", "shared-server")
    assert existing_namespaces.one("Deployment", "clientapp-executor", "lab-team")
    assert existing_namespaces.stack_outputs["serverNamespace"] == "shared-server"


@pytest.mark.parametrize("namespace", ["shared-server", "lab-team"])
def test_in_an_existing_namespace_the_baseline_policies_cover_only_the_federations_pods(
        existing_namespaces: Deployment, namespace: str) -> None:
    for name in ("default-deny", "allow-dns"):
        spec = existing_namespaces.one("NetworkPolicy", name, namespace).manifest()["spec"]
        assert spec["podSelector"] == {"matchLabels": {"flowerbed.dev/federation": "demo"}}, name


# --- network policies ---------------------------------------------------------------------


def policies(dev: Deployment, namespace: str) -> dict[str, dict[str, Any]]:
    return {p.k8s_name: p.manifest()["spec"] for p in dev.objects("NetworkPolicy", namespace)}


@pytest.mark.parametrize("namespace", [SERVER_NS, *SITE_NS.values()])
def test_every_namespace_denies_by_default(dev: Deployment, namespace: str) -> None:
    deny = policies(dev, namespace)["default-deny"]
    assert deny == {"podSelector": {}, "policyTypes": ["Ingress", "Egress"]}


def test_superlink_admits_fleet_from_anywhere_runtime_from_executors_control_from_namespace(dev: Deployment) -> None:
    spec = policies(dev, SERVER_NS)["superlink"]
    rules = sorted(json.dumps([r["ports"], r.get("from")], sort_keys=True) for r in spec["ingress"])

    def pods(**labels: str) -> list[dict[str, Any]]:
        return [{"podSelector": {"matchLabels": labels}}]

    executor = {"flowerbed.dev/federation": "demo", "flowerbed.dev/role": "serverapp-executor"}
    task = {**executor, "flowerbed.dev/role": "serverapp-task"}
    expected = [([{"port": 9092, "protocol": "TCP"}], None),
                ([{"port": 9091, "protocol": "TCP"}], pods(**executor)),
                ([{"port": 9091, "protocol": "TCP"}], pods(**task)),
                ([{"port": 9093, "protocol": "TCP"}], pods())]
    assert rules == sorted(json.dumps(list(rule), sort_keys=True) for rule in expected)
    assert "Egress" not in spec["policyTypes"]


def test_no_policy_admits_superlinks_own_port(large: Deployment) -> None:
    for policy in large.objects("NetworkPolicy"):
        for rule in policy.manifest()["spec"].get("ingress", []):
            assert naming.SUPERLINK_PORT not in [p["port"] for p in rule["ports"]]


@pytest.mark.parametrize("site", SITE_NS)
def test_client_sites_leave_only_for_the_server_endpoint(dev: Deployment, site: str) -> None:
    def to_outside(namespace: str) -> dict[str, list[dict[str, Any]]]:
        return {name: [rule for rule in spec.get("egress", []) if any("ipBlock" in peer for peer in rule["to"])]
                for name, spec in policies(dev, namespace).items()}

    site_rules = {name: rules for name, rules in to_outside(SITE_NS[site]).items() if rules}
    assert list(site_rules) == ["clientapp-executor"]  # the Kubernetes API only
    assert {p["port"] for rule in site_rules["clientapp-executor"] for p in rule["ports"]} == {443, 6443}
    node_rules = {name: rules for name, rules in to_outside(NODE_NS[site]).items() if rules}
    assert node_rules == {"supernode": [{"to": [{"ipBlock": {"cidr": "0.0.0.0/0"}}],
                                         "ports": [{"port": 443, "protocol": "TCP"}]}]}


@pytest.mark.parametrize("site", SITE_NS)
def test_client_sites_admit_nothing_from_outside_the_site(dev: Deployment, site: str) -> None:
    assert not [rule for spec in policies(dev, SITE_NS[site]).values() for rule in spec.get("ingress", [])]
    # The SuperNode's Runtime API: the site's executor and task pods, from the site's namespace only.
    [spec] = [spec for name, spec in policies(dev, NODE_NS[site]).items() if spec.get("ingress")]
    peers = [peer for rule in spec["ingress"] for peer in rule["from"]]
    assert {peer["podSelector"]["matchLabels"]["flowerbed.dev/role"] for peer in peers} == {
        "clientapp-executor", "clientapp-task"}
    assert all(peer["namespaceSelector"] == {"matchLabels": {"kubernetes.io/metadata.name": SITE_NS[site]}}
               for peer in peers)


@pytest.mark.parametrize("site", SITE_NS)
def test_the_sites_pods_reach_only_their_own_supernode(dev: Deployment, site: str) -> None:
    expected = {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": NODE_NS[site]}},
                "podSelector": {"matchLabels": {"flowerbed.dev/federation": "demo", "flowerbed.dev/role": "supernode"}}}
    for name in ("clientapp-executor", "clientapp-task"):
        rules = policies(dev, SITE_NS[site])[name]["egress"]
        assert [rule["to"] for rule in rules if rule["ports"] == [{"port": 9094, "protocol": "TCP"}]] == [[expected]]


def test_dns_is_the_only_other_egress(dev: Deployment) -> None:
    dns = policies(dev, "demo-lab-c")["allow-dns"]
    assert dns["podSelector"] == {} and dns["policyTypes"] == ["Egress"]
    [rule] = dns["egress"]
    assert rule["to"] == [{"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "kube-system"}},
                           "podSelector": {"matchLabels": {"k8s-app": "kube-dns"}}}]
    assert sorted((p["port"], p["protocol"]) for p in rule["ports"]) == [(53, "TCP"), (53, "UDP")]


@pytest.mark.parametrize("namespace", [SERVER_NS, "demo-lab-c"])  # both on cluster hub
def test_dns_admits_node_local_dns_cache_and_the_configured_dns_service(variant: Deployment, namespace: str) -> None:
    [rule] = policies(variant, namespace)["allow-dns"]["egress"]
    assert rule["to"] == [{"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "dns"}},
                           "podSelector": {"matchLabels": {"app": "coredns"}}},
                          {"ipBlock": {"cidr": "169.254.20.10/32"}}, {"ipBlock": {"cidr": "10.96.0.53/32"}}]
    # The other cluster keeps its own (default) DNS.
    [other] = policies(variant, "demo-hospital-a")["allow-dns"]["egress"]
    assert [peer["podSelector"]["matchLabels"] for peer in other["to"]] == [{"k8s-app": "kube-dns"}]


def test_endpoint_cidrs_and_port_restrict_supernode_egress(variant: Deployment) -> None:
    endpoint = {"to": [{"ipBlock": {"cidr": "203.0.113.7/32"}}], "ports": [{"port": 8443, "protocol": "TCP"}]}
    assert policies(variant, NODE_NS["hospital-a"])["supernode"]["egress"] == [endpoint]
    # On the server's own cluster kube-proxy turns the endpoint into the SuperLink pod before the policy
    # sees it: the SuperLink pods' fleet listener is admitted too (found on real nodes, tests/pods).
    assert policies(variant, NODE_NS["lab-c"])["supernode"]["egress"] == [endpoint, {
        "to": [{"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": SERVER_NS}},
                "podSelector": {"matchLabels": {"flowerbed.dev/federation": "demo", "flowerbed.dev/role": "superlink"}}}],
        "ports": [{"port": naming.FLEET_PORT, "protocol": "TCP"}]}]


# --- outputs --------------------------------------------------------------------------------


def test_outputs_name_endpoint_and_every_site(dev: Deployment) -> None:
    assert dev.stack_outputs["endpoint"] == "fl.demo.example.org:443"
    assert dev.stack_outputs["sites"] == {
        site: {"namespace": SITE_NS[site], "supernodeNamespace": NODE_NS[site], "cluster": cluster}
        for site, cluster in (("hospital-a", "hospitals"), ("hospital-b", "hospitals"), ("lab-c", "hub"))}


def test_outputs_carry_the_ca_and_a_working_flwr_connection(dev: Deployment) -> None:
    ca = next(r for r in dev.resources if r.name == "demo-ca")
    assert dev.stack_outputs["caCertificate"] == ca.outputs["cert_pem"]
    connection = tomllib.loads(dev.stack_outputs["flwrConnection"])["superlink"]["demo"]
    assert connection["address"] == f"localhost:{naming.CONTROL_PORT}"
    assert dev.stack_outputs["controlPortForward"] == (
        "kubectl -n demo-server port-forward svc/superlink-control 9093:9093")


# --- renewal reaches the processes ------------------------------------------------------------


def mounted(d: Declared) -> dict[str, str]:
    """Volume name -> "<Kind>/<name>" of each Secret and ConfigMap a Deployment's pods mount."""
    found = {}
    for volume in d.manifest()["spec"]["template"]["spec"]["volumes"]:
        if "secret" in volume:
            found[volume["name"]] = f"Secret/{volume['secret']['secretName']}"
        elif "configMap" in volume:
            found[volume["name"]] = f"ConfigMap/{volume['configMap']['name']}"
    return found


def declared_data(dev: Deployment, key: str, namespace: str) -> dict[str, str]:
    kind, name = key.split("/")
    obj = dev.one(kind, name, namespace)
    return obj.inputs["stringData"] if kind == "Secret" else obj.inputs["data"]


def test_every_pod_template_carries_the_digest_of_exactly_the_objects_it_mounts(dev: Deployment) -> None:
    deployments = dev.objects("Deployment")
    assert len(deployments) == 2 + 2 * len(SITE_NS)
    for d in deployments:
        contents = {key: declared_data(dev, key, d.namespace) for key in mounted(d).values()}
        annotations = d.manifest()["spec"]["template"]["metadata"]["annotations"]
        assert annotations == {kube.MOUNTED_DIGEST_ANNOTATION: kube.digest(contents)}, (d.namespace, d.k8s_name)
        assert "spec" not in d.secret_inputs  # a digest reveals nothing of the keys it covers


@pytest.mark.parametrize(("name", "reads"), [
    # A server certificate renewal rolls SuperLink (and its filter) only; a site's Runtime API
    # certificate its SuperNode only; a CA change everything that trusts it; a config its reader.
    ("superlink", {"Secret/superlink-tls", "ConfigMap/superlink-nginx", "ConfigMap/superlink-state-backup"}),
    ("serverapp-executor", {"Secret/federation-ca", "ConfigMap/serverapp-executor", "ConfigMap/pending-reaper"}),
    ("supernode", {"Secret/federation-ca", "Secret/supernode-auth", "Secret/supernode-runtime-tls"}),
    ("clientapp-executor", {"Secret/federation-ca", "ConfigMap/clientapp-executor", "ConfigMap/pending-reaper"}),
])
def test_each_pod_mounts_only_what_its_processes_read(dev: Deployment, name: str, reads: set[str]) -> None:
    for d in dev.objects("Deployment"):
        if d.k8s_name == name:
            assert set(mounted(d).values()) == reads, d.namespace


def test_a_pod_template_refuses_to_mount_an_object_it_cannot_digest() -> None:
    import pulumi_kubernetes as k8s

    spec = k8s.core.v1.PodSpecArgs(containers=[], volumes=[kube.secret_volume("tls", "unknown-tls")])
    with pytest.raises(KeyError, match="Secret/unknown-tls"):
        kube.pod_template({}, spec, {"Secret/known": {"a": "b"}})


def test_fleet_address_reads_what_the_api_server_assigned() -> None:
    from types import SimpleNamespace as Obj

    from components.server import fleet_address

    node_port = Obj(ports=[Obj(node_port=31443)])
    assert fleet_address("NodePort", node_port, None) == "<any node address>:31443"
    assert fleet_address("NodePort", Obj(ports=[Obj(node_port=None)]), None).startswith("node port not known")
    lb = Obj(load_balancer=Obj(ingress=[Obj(hostname=None, ip="203.0.113.9")]))
    assert fleet_address("LoadBalancer", None, lb) == "203.0.113.9"
    named = Obj(load_balancer=Obj(ingress=[Obj(hostname="abc.elb.example.com", ip=None)]))
    assert fleet_address("LoadBalancer", None, named) == "abc.elb.example.com"
    assert fleet_address("LoadBalancer", None, Obj(load_balancer=Obj(ingress=None))).startswith("pending")
    assert fleet_address("ClusterIP", None, None).startswith("in-cluster only")
    # The same facts as plain mappings with the API's camelCase keys
    assert fleet_address("NodePort", {"ports": [{"nodePort": 30001}]}, None) == "<any node address>:30001"
    assert fleet_address("LoadBalancer", None, {"loadBalancer": {"ingress": [{"ip": "198.51.100.4"}]}}) == "198.51.100.4"
