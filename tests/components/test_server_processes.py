"""The server's real processes with the flags, filter config and registration script the program deploys.

SuperLink, the nginx filter and a SuperNode run on loopback (paths and ports relocated, nothing
else changed): the registration Job's command registers keys through the control listener and is
safe to rerun, and a registered SuperNode joins through the fleet listener.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from component_harness import dev_raw_config
from components import naming, pki, registration
from components.config import parse
from components.fleet_filter import nginx_conf
from components.server import superlink_args
from components.supernode import supernode_args
from tests.flower import BIN, PYTHON, relocate

pytestmark = [pytest.mark.e2e,
              pytest.mark.skipif(shutil.which("nginx") is None and not Path("/usr/sbin/nginx").exists(),
                                 reason="nginx not installed (.ci/run installs nginx-light)")]

NGINX = shutil.which("nginx") or "/usr/sbin/nginx"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _wait_for_port(port: int, proc: subprocess.Popen[bytes], log: Path, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), 0.5).close()
            return
        except OSError:
            if proc.poll() is not None:
                break
            time.sleep(0.2)
    raise RuntimeError(f"port {port} never opened:\n{log.read_text()}")


@dataclass
class Server:
    tmp: Path
    fleet_port: int
    control_port: int
    keys: dict[str, pki.SupernodeKey]
    processes: list[subprocess.Popen[bytes]]

    def start(self, name: str, argv: list[str],
              env: dict[str, str] | None = None) -> tuple[subprocess.Popen[bytes], Path]:
        log = self.tmp / f"{name}.log"
        with log.open("wb") as out:
            proc = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, env={**os.environ, **(env or {})})
        self.processes.append(proc)
        return proc, log


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    tmp = tmp_path_factory.mktemp("server")
    config = parse(dev_raw_config())
    ca = pki.new_ca("test federation CA", 2)
    cert = pki.new_server_certificate(ca, naming.server_certificate_names(config.server.endpoint, "demo-server"),
                                      valid_days=1)
    (tmp / "tls").mkdir()
    for name, text in (("ca.crt", ca.cert_pem), ("tls.crt", cert.cert_pem), ("tls.key", cert.key_pem)):
        (tmp / "tls" / name).write_text(text)
    (tmp / "state").mkdir()
    (tmp / "nginx").mkdir()
    ports = {"superlink": _free_port(), "fleet": _free_port(), "runtime": _free_port(), "control": _free_port()}
    (tmp / "nginx.conf").write_text(nginx_conf(
        superlink_port=ports["superlink"], fleet_port=ports["fleet"], runtime_port=ports["runtime"],
        control_port=ports["control"], cert_file=str(tmp / "tls/tls.crt"), key_file=str(tmp / "tls/tls.key"),
        ca_file=str(tmp / "tls/ca.crt"), superlink_server_name="localhost", runtime_dir=str(tmp / "nginx")))
    keys = {"hospital-a": pki.new_supernode_key(), "lab-c": pki.new_supernode_key()}
    (tmp / "keys").mkdir()
    for site, key in keys.items():
        (tmp / "keys" / f"{site}.pub").write_text(key.public_openssh)
        (tmp / f"{site}.key").write_text(key.private_openssh)

    running = Server(tmp, ports["fleet"], ports["control"], keys, [])
    try:
        args = relocate(superlink_args(), {
            naming.TLS_DIR: str(tmp / "tls"), "/var/lib/flowerbed": str(tmp / "state"), "0.0.0.0": "127.0.0.1",
            str(naming.SUPERLINK_PORT): str(ports["superlink"])})
        superlink, log = running.start("superlink", [str(BIN / "flower-superlink"), *args],
                                       {"FLWR_HOME": str(tmp / "state/flwr-home")})
        _wait_for_port(ports["superlink"], superlink, log)
        nginx, log = running.start("nginx", [NGINX, "-e", "stderr", "-c", str(tmp / "nginx.conf")])
        _wait_for_port(ports["control"], nginx, log)
        yield running
    finally:
        for proc in reversed(running.processes):
            proc.terminate()
            try:
                proc.wait(15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def _register(server: Server, command: list[str] | None = None) -> subprocess.CompletedProcess[str]:
    """The registration Job's command (by default the one with keys), relocated: this checkout's script,
    keys and CA, the control listener."""
    argv = relocate(command or registration.command(f"localhost:{server.control_port}"), {
        "/etc/flowerbed/registry": str(registration.SCRIPT.parent), f"{naming.CA_DIR}/": f"{server.tmp}/tls/",
        "/etc/flowerbed/supernode-keys": str(server.tmp / "keys")})
    env = {**os.environ, "PATH": f"{BIN}:{os.environ['PATH']}", "FLWR_HOME": str(server.tmp / "job-home")}
    done = subprocess.run([str(PYTHON), *argv[1:]], capture_output=True, text=True, env=env, timeout=120)
    # flwr's client announces the connection it uses; the rest is the script's own report.
    done.stdout = "".join(line for line in done.stdout.splitlines(keepends=True)
                          if not line.startswith("Using SuperLink:"))
    return done


@pytest.fixture(scope="module")
def registrations(server: Server) -> tuple[subprocess.CompletedProcess[str], subprocess.CompletedProcess[str]]:
    """The registration Job's script, run twice (as after adding a site)."""
    return _register(server), _register(server)


def test_registration_registers_every_key(registrations: tuple[subprocess.CompletedProcess[str], ...]) -> None:
    first = registrations[0]
    assert first.returncode == 0, first.stderr
    assert first.stdout.splitlines() == ["hospital-a: registered", "lab-c: registered"]


def test_registration_reruns_cleanly(registrations: tuple[subprocess.CompletedProcess[str], ...]) -> None:
    again = registrations[1]
    assert again.returncode == 0, again.stderr
    assert again.stdout.splitlines() == ["hospital-a: already registered", "lab-c: already registered"]


def test_a_registered_supernode_joins_through_the_fleet_listener(
        server: Server, registrations: tuple[subprocess.CompletedProcess[str], ...]) -> None:
    assert registrations[0].returncode == 0, registrations[0].stderr
    config = parse(dev_raw_config())
    site = config.sites[2]
    runtime_ca = pki.new_ca("runtime", 2)
    runtime = pki.new_server_certificate(runtime_ca, ["localhost"], valid_days=1)
    (server.tmp / "rt").mkdir(exist_ok=True)
    for name, text in (("ca.crt", runtime_ca.cert_pem), ("tls.crt", runtime.cert_pem), ("tls.key", runtime.key_pem)):
        (server.tmp / "rt" / name).write_text(text)
    endpoint = f"{config.server.endpoint}:{config.server.public_port}"
    args = relocate(supernode_args(config, site), {
        endpoint: f"localhost:{server.fleet_port}", f"{naming.CA_DIR}/": f"{server.tmp}/tls/",
        "/etc/flowerbed/auth/supernode.key": str(server.tmp / "lab-c.key"), f"{naming.TLS_DIR}/": f"{server.tmp}/rt/",
        "0.0.0.0": "127.0.0.1", str(naming.SUPERNODE_RUNTIME_PORT): str(_free_port())})
    supernode, log = server.start("supernode", [str(BIN / "flower-supernode"), *args],
                                  {"FLWR_HOME": str(server.tmp / "supernode-home")})
    deadline = time.monotonic() + 60
    while "SuperNode ID" not in log.read_text() and supernode.poll() is None and time.monotonic() < deadline:
        time.sleep(0.5)
    assert "SuperNode ID" in log.read_text(), log.read_text()
    assert "POST /v1/fleet/activate-node HTTP/1.1\" 200" in (server.tmp / "nginx.log").read_text()


def test_the_job_of_a_hub_that_admits_nobody_unregisters_every_key(
        server: Server, registrations: tuple[subprocess.CompletedProcess[str], ...]) -> None:
    """Last in this module: it leaves no key registered."""
    assert registrations[0].returncode == 0, registrations[0].stderr
    nobody = registration.unregister_all_command(f"localhost:{server.control_port}")
    done = _register(server, nobody)
    assert done.returncode == 0, done.stderr
    assert [line.split(": ")[0] for line in done.stdout.splitlines()] == ["hospital-a", "lab-c"]
    assert all(": unregistered node " in line for line in done.stdout.splitlines()), done.stdout
    again = _register(server, nobody)
    assert (again.returncode, again.stdout) == (0, ""), again.stderr
