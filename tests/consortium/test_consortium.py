"""make consortium: a hub and two hospital site stacks, each with its own state in its own backend,
exchanging only public files (tools/engine/consortium.py, examples/consortium/).

One run of the example serves every test here (the real engine, render mode): the audit of each
decrypted state, the diff the coordinator reviews to admit the hospitals, and real Flower processes
set up from what the stacks rendered: SuperNodes with the keys the hospitals' stacks made join a
SuperLink with the hub's certificate, train a round, and are refused once removed or rotated.
"""

from __future__ import annotations

import json
import re
import subprocess
import time
from pathlib import Path

import pytest
import yaml

from components import naming, pki
from federate.flwr_cli import BIN_DIR, FlwrCli, flower_env
from federate.job import MetricsFollower, follow, submit
from federate.ports import free_port, wait_until_listening
from federate.processes import ManagedProcess, Supervisor
from tests.consortium.conftest import Rendered, rendered, written
from tests.federate.conftest import REPO, wait_for_exit
from tests.flower import relocate
from tools.engine.consortium import (HOSPITALS, HUB, MEMBERS_DIR, Consortium, Party, audit, commit_join_requests,
                                     private_keys, resource_strings)
from tools.engine.stack import up

pytestmark = [pytest.mark.engine, pytest.mark.e2e]

FEDERATION = "consortium"
SERVER_NS = f"{FEDERATION}-server"
ENDPOINT = "fl.consortium.example.org:443"
RETRIES = 2  # a refused SuperNode gives up after this many attempts instead of retrying forever
GIVE_UP_S = 90.0
STARTUP_S = 120.0


def supernode_ns(site: str) -> str:
    return f"{FEDERATION}-{site}-supernode"


def state_text(example: Consortium, party: str) -> str:
    return "\n".join(s for r in example.states[party].get("resources") or [] for s in resource_strings(r))


# --- who holds what: each state, decrypted ----------------------------------------------------


def test_the_hubs_state_holds_the_federation_ca_and_the_superlink_keys_and_no_supernode_key(
        example: Consortium) -> None:
    keys = private_keys(example.states[HUB])
    assert sorted(key.made_by for key in keys.values()) == [
        'CA "flowerbed consortium federation CA"', "TLS key of fl.consortium.example.org"]
    hub = state_text(example, HUB)
    assert "OPENSSH PRIVATE KEY" not in hub
    for hospital in HOSPITALS:
        [supernode_key] = [k for k, v in private_keys(example.states[hospital]).items() if "SuperNode" in v.made_by]
        assert supernode_key not in hub


@pytest.mark.parametrize("hospital", HOSPITALS)
def test_a_hospitals_state_holds_its_own_keys_and_nothing_of_the_federation_ca_or_the_other_hospital(
        example: Consortium, hospital: str) -> None:
    keys = private_keys(example.states[hospital])
    assert sorted(key.made_by for key in keys.values()) == [
        f'CA "flowerbed consortium runtime CA of {hospital}"', f"SuperNode key of {hospital}",
        f"TLS key of supernode-runtime.{supernode_ns(hospital)}.svc"]
    [federation_ca] = [k for k, v in private_keys(example.states[HUB]).items() if "federation CA" in v.made_by]
    text = state_text(example, hospital)
    assert federation_ca not in text
    # It does hold the federation CA's certificate (from the bundle), to trust SuperLink by it.
    bundle = yaml.safe_load((example.hub.out / "join-bundle.yaml").read_text())
    assert bundle["caCertificate"] in text
    other = next(h for h in HOSPITALS if h != hospital)
    assert other not in text


def test_no_private_key_is_in_two_states(example: Consortium) -> None:
    held = {party: set(private_keys(state)) for party, state in example.states.items()}
    assert sum(len(keys) for keys in held.values()) == len(set().union(*held.values())) == 2 + 3 * len(HOSPITALS)
    assert audit(example.states) == []


def test_admitting_the_join_requests_adds_their_keys_and_reruns_the_job_and_restarts_nothing(
        example: Consortium) -> None:
    steps = [line for line in example.admission_diff if re.match(r" ?[-+~]{1,2} ", line)]  # one per changed resource
    assert steps == [" + create   kubernetes:core/v1:ConfigMap  consortium-server-supernode-keys",
                     "+- replace  kubernetes:batch/v1:Job  consortium-server-registrar"], example.admission_diff
    assert example.admission_diff[-1].startswith("Resources: 1 create, 1 replace, ")


def test_a_site_stack_in_the_hubs_backend_reads_the_bundle_from_the_hub_stack(example: Consortium) -> None:
    """`bundle: {stack: hub}`: the hub stack's joinBundle output instead of a file (one backend for both)."""
    hub = example.hub.root
    document = yaml.safe_load((example.hospitals["hospital-a"].root / "Pulumi.hospital-a.yaml").read_text())
    document["config"]["flowerbed:bundle"] = {"stack": HUB}
    (hub / "Pulumi.hospital-a.yaml").write_text(yaml.safe_dump(document, sort_keys=False))
    beside = Party("hospital-a", hub)
    beside.pulumi.select_or_init()
    try:
        digest = json.loads(beside.pulumi.run(["preview", "--json"], capture=True).stdout)
    finally:
        beside.pulumi.run(["stack", "rm", "--force", "--yes"], capture=True)  # its stack file goes with it
    [supernode] = [step for step in digest["steps"] if step["urn"].endswith("Deployment::consortium-hospital-a-supernode")]
    args = supernode["newState"]["inputs"]["spec"]["template"]["spec"]["containers"][0]["args"]
    assert args[args.index("--superlink") + 1] == ENDPOINT
    [ca] = [step for step in digest["steps"] if step["urn"].endswith("Secret::consortium-hospital-a-supernode-ca")]
    assert digest["changeSummary"] == {"create": len(digest["steps"])} and ca["op"] == "create"


# --- real processes from what the stacks rendered ----------------------------------------------


class LocalConsortium:
    """The hub's SuperLink and the hospitals' SuperNodes as local processes, run with the arguments, keys and
    certificates their stacks rendered; only paths, ports and the endpoint's host are moved to this machine.

    The SuperNodes' Runtime API (their SuperExec's side) gets throwaway certificates for localhost: the ones
    a site stack issues name its in-cluster Service.
    """

    def __init__(self, supervisor: Supervisor, workdir: Path) -> None:
        self.supervisor, self.workdir = supervisor, workdir
        self.port = free_port()
        self.address = f"localhost:{self.port}"  # the hub's certificate names localhost (for port-forwards)
        runtime_ca = pki.new_ca("local Runtime API CA", 1)
        runtime = pki.new_server_certificate(runtime_ca, ["localhost"], valid_days=1)
        self.runtime_tls = workdir / "runtime-tls"
        for name, text in (("ca.crt", runtime_ca.cert_pem), ("tls.crt", runtime.cert_pem), ("tls.key", runtime.key_pem)):
            written(self.runtime_tls / name, text, 0o600)

    def start_server(self, hub: Rendered) -> FlwrCli:
        """SuperLink with the hub's certificate and key, and the SuperExec for its ServerApp tasks."""
        tls = self.workdir / "superlink-tls"
        for name, text in hub.data("Secret", "superlink-tls", SERVER_NS).items():
            written(tls / name, text, 0o600)
        self.ca = tls / "ca.crt"
        superlink = hub.container("superlink", SERVER_NS, "superlink")
        args = with_port(relocate(superlink["args"], {naming.TLS_DIR: str(tls), "0.0.0.0": "127.0.0.1",
                                                      "/var/lib/flowerbed": str(self.workdir / "state")}), self.port)
        (self.workdir / "state").mkdir()
        self.supervisor.start("superlink", [str(BIN_DIR / superlink["command"][0]), *args],
                              flower_env(self.workdir / "state" / "flwr-home"))
        wait_until_listening(self.port, STARTUP_S, self.supervisor.check)
        self._superexec("superexec-serverapp", self.address, self.ca)
        self.cli = FlwrCli.configure(self.workdir / "operator", FEDERATION, self.address, self.ca)
        return self.cli

    def register(self, hub: Rendered) -> list[str]:
        """The hub's registration Job as rendered: its script against the Control API, the admitted keys."""
        keys = self.workdir / "job-keys"
        for old in keys.glob("*.pub"):
            old.unlink()
        for name, key in hub.data("ConfigMap", "supernode-public-keys", SERVER_NS).items():
            written(keys / name, key)
        script = self.workdir / "registry"
        for name, text in hub.data("ConfigMap", "supernode-registry", SERVER_NS).items():
            written(script / name, text)
        job = hub.job_container(SERVER_NS)
        argv = relocate([*job["command"], *job["args"]], {
            "/etc/flowerbed/registry": str(script), f"superlink-control.{SERVER_NS}.svc:{naming.CONTROL_PORT}": self.address,
            f"{naming.CA_DIR}/ca.crt": str(self.ca), "/etc/flowerbed/supernode-keys": str(keys)})
        done = subprocess.run([str(BIN_DIR / "python"), *argv[1:]], env=flower_env(self.workdir / "job-home"),
                              capture_output=True, text=True, timeout=120)
        assert done.returncode == 0, done.stdout + done.stderr
        return [line for line in done.stdout.splitlines() if not line.startswith("Using SuperLink:")]

    def start_site(self, name: str, hospital: Rendered, *, max_retries: int | None = None,
                   superexec: bool = True) -> ManagedProcess:
        """A hospital's SuperNode with the key and the CA its stack rendered (and its ClientApp SuperExec)."""
        namespace = supernode_ns(name)
        auth, trust = self.workdir / name / "auth", self.workdir / name / "ca"
        written(auth / "supernode.key", hospital.data("Secret", "supernode-auth", namespace)["supernode.key"], 0o600)
        written(trust / "ca.crt", hospital.data("Secret", naming.CA_SECRET, namespace)["ca.crt"])
        runtime_port = free_port()
        supernode = hospital.container("supernode", namespace, "supernode")
        args = with_port(relocate(supernode["args"], {
            ENDPOINT: self.address, f"{naming.CA_DIR}/": f"{trust}/", "/etc/flowerbed/auth/": f"{auth}/",
            f"{naming.TLS_DIR}/": f"{self.runtime_tls}/", "0.0.0.0": "127.0.0.1",
            'data-root="/data"': f'data-root="{self.workdir / name / "data"}"',
            f'state-dir="{naming.STATE_DIR}"': f'state-dir="{self.workdir / name / "state"}"'}), runtime_port)
        retries = [] if max_retries is None else ["--max-retries", str(max_retries)]
        process = self.supervisor.start(f"supernode-{name}-{len(self.supervisor.processes)}", [
            str(BIN_DIR / supernode["command"][0]), *args, *retries], flower_env(self.workdir / name / "home"))
        if superexec:
            self._superexec(f"superexec-{name}", f"localhost:{runtime_port}", self.runtime_tls / "ca.crt")
        return process

    def _superexec(self, name: str, runtime_address: str, ca: Path) -> None:
        home = self.workdir / name
        home.mkdir(parents=True, exist_ok=True)
        self.supervisor.start(name, [str(BIN_DIR / "flower-superexec"), "--runtime-api-address", runtime_address,
                                     "--root-certificates", str(ca), "--executor", "subprocess"],
                              {**flower_env(home), **naming.SUPEREXEC_ENV})

    def online(self) -> int:
        return sum(1 for node in self.cli.json("supernode", "list")["nodes"] if node["status"] == "online")

    def wait_online(self, expected: int, *, check: bool = True) -> None:
        """Until `expected` SuperNodes are online; `check`: fail as soon as a process dies."""
        deadline = time.monotonic() + STARTUP_S
        while (online := self.online()) != expected:
            if check:
                self.supervisor.check()
            assert time.monotonic() < deadline, f"{online} SuperNodes online, expected {expected}"
            time.sleep(2.0)  # each poll is a `flwr` process

    def forget(self, *processes: ManagedProcess) -> None:
        """Expected exits: not crashes to `follow` and `check`."""
        for process in processes:
            self.supervisor.processes.remove(process)


def with_port(args: list[str], port: int) -> list[str]:
    """`args` listening on `port` instead (the value after `--port`)."""
    at = args.index("--port") + 1
    return [*args[:at], str(port), *args[at + 1:]]


def rotate_key_and_remove(example: Consortium, rotated: str, removed: str) -> None:
    """`rotated` raises its SuperNode key's version and runs `up`; the coordinator commits its new join request
    and deletes `removed`'s join file, then runs the hub's `up`."""
    hospital: Party = example.hospitals[rotated]
    stack_file = hospital.root / f"Pulumi.{rotated}.yaml"
    document = yaml.safe_load(stack_file.read_text())
    document["config"]["flowerbed:sites"][0]["keyVersion"] = 2
    stack_file.write_text(yaml.safe_dump(document, sort_keys=False))
    up(hospital.pulumi, hospital.out)
    commit_join_requests(example.hub, hospital)
    (example.hub.root / MEMBERS_DIR / f"{removed}.yaml").unlink()
    up(example.hub.pulumi, example.hub.out)


def test_site_made_keys_train_a_round_and_a_removed_and_a_rotated_key_are_refused(
        example: Consortium, tmp_path: Path) -> None:
    hub = rendered(example.hub)
    with Supervisor(tmp_path / "logs") as supervisor:
        local = LocalConsortium(supervisor, tmp_path)
        cli = local.start_server(hub)
        assert local.register(hub) == ["hospital-a: registered", "hospital-b: registered"]
        nodes = {name: local.start_site(name, rendered(example.hospitals[name])) for name in HOSPITALS}
        local.wait_online(len(HOSPITALS))

        overrides = {"artifacts-root": str(tmp_path / "artifacts"), "num-server-rounds": 1,
                     "min-available-sites": 2, "min-train-sites": 2, "fraction-evaluate": 0.0, "round-timeout": 120.0}
        run_id = submit(cli, REPO / "training", overrides, tmp_path)
        rounds: list[dict] = []
        metrics = MetricsFollower(tmp_path / "artifacts" / run_id / "metrics.jsonl")
        follow(cli, run_id, supervisor, lambda: rounds.extend(metrics.new_rounds()), timeout=600)
        [round_one] = rounds
        assert round_one["aggregated"] and round_one["sites"] == list(HOSPITALS)

        old_b = rendered(example.hospitals["hospital-b"])
        rotate_key_and_remove(example, rotated="hospital-b", removed="hospital-a")
        hub = rendered(example.hub)
        lines = local.register(hub)
        assert [line.split(" node ")[0] for line in lines] == [
            "hospital-a: unregistered", "hospital-b: unregistered", "hospital-b: registered"], lines
        # Both connected SuperNodes are sent away (flwr 1.42 stops them) ...
        for process in nodes.values():
            assert wait_for_exit(process, GIVE_UP_S) is not None, process.tail()
        local.forget(*nodes.values())
        # ... and their keys never get in again: hospital-a's (removed) and hospital-b's old one (rotated).
        refused = [local.start_site(name, site, max_retries=RETRIES, superexec=False) for name, site in (
            ("hospital-a", rendered(example.hospitals["hospital-a"])), ("hospital-b", old_b))]
        for process in refused:
            assert wait_for_exit(process, GIVE_UP_S) not in (None, 0), process.tail()
        local.forget(*refused)
        # hospital-b's new key, made by its stack's `up`, is admitted (the SuperExecs of the nodes sent away
        # may have stopped too: no check for dead processes now).
        local.start_site("hospital-b", rendered(example.hospitals["hospital-b"]), superexec=False)
        local.wait_online(1, check=False)
