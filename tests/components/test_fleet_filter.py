"""The sidecar's nginx.conf: structure, and real nginx routing each API only on its own listener."""

from __future__ import annotations

import http.server
import shutil
import socket
import ssl
import subprocess
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from components import pki
from components.fleet_filter import nginx_conf

PORTS = {"superlink_port": 18000, "fleet_port": 18443, "runtime_port": 18091, "control_port": 18093}


def render(runtime_dir: str = "/run/nginx", **ports: int) -> str:
    return nginx_conf(
        **{**PORTS, **ports},
        cert_file="/tls/tls.crt",
        key_file="/tls/tls.key",
        ca_file="/tls/ca.crt",
        superlink_server_name="superlink.local",
        runtime_dir=runtime_dir,
    )


def test_runs_in_foreground_with_logs_on_standard_streams() -> None:
    conf = render()
    assert "daemon off;" in conf
    assert "error_log stderr" in conf
    assert "access_log /dev/stdout;" in conf


def test_every_writable_path_is_under_runtime_dir() -> None:
    conf = render(runtime_dir="/scratch/")
    for directive in ("pid", "client_body_temp_path", "proxy_temp_path",
                      "fastcgi_temp_path", "uwsgi_temp_path", "scgi_temp_path"):
        assert f"{directive} /scratch/" in conf, directive


def test_upstream_tls_is_verified_against_the_ca_and_superlink_name() -> None:
    conf = render()
    assert "proxy_ssl_verify on;" in conf
    assert "proxy_ssl_trusted_certificate /tls/ca.crt;" in conf
    assert "proxy_ssl_name superlink.local;" in conf
    assert "server 127.0.0.1:18000;" in conf


def test_each_listener_terminates_tls() -> None:
    conf = render()
    for port in ("18443", "18091", "18093"):
        assert f"listen {port} ssl;" in conf


def test_large_streamed_bodies_are_not_buffered() -> None:
    conf = render()
    assert "proxy_request_buffering off;" in conf
    assert "proxy_buffering off;" in conf
    assert "client_max_body_size 2g;" in conf


@pytest.mark.parametrize("field", sorted(PORTS))
def test_rejects_a_port_out_of_range(field: str) -> None:
    with pytest.raises(ValueError, match=field):
        render(**{field: 0})


def test_rejects_listeners_sharing_a_port() -> None:
    with pytest.raises(ValueError, match="distinct"):
        render(control_port=PORTS["fleet_port"])


# --- the same config under a real nginx -------------------------------------------------

NGINX = shutil.which("nginx") or (Path("/usr/sbin/nginx") if Path("/usr/sbin/nginx").exists() else None)
needs_nginx = pytest.mark.skipif(NGINX is None, reason="nginx not installed (.ci/run installs nginx-light)")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class _EchoPath(http.server.BaseHTTPRequestHandler):
    """Stands in for SuperLink: answers every request with the path it received."""

    def _answer(self) -> None:
        length = int(self.headers.get("content-length") or 0)
        self.rfile.read(length)
        body = f"superlink saw {self.path}".encode()
        self.send_response(200)
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    do_GET = do_POST = _answer

    def log_message(self, *args: object) -> None:  # keep pytest output clean
        pass


@dataclass(frozen=True)
class RunningFilter:
    ports: dict[str, int]
    ca_file: str

    def post(self, listener: str, path: str) -> tuple[int, str]:
        # The listeners present the federation's server certificate: verify it like a SuperNode would.
        context = ssl.create_default_context(cafile=self.ca_file)
        url = f"https://127.0.0.1:{self.ports[listener]}{path}"
        request = urllib.request.Request(url, data=b"x", method="POST")
        try:
            with urllib.request.urlopen(request, context=context, timeout=5) as response:
                return response.status, response.read().decode()
        except urllib.error.HTTPError as err:
            return err.code, ""


@pytest.fixture(scope="module")
def running_filter(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningFilter]:
    tmp = tmp_path_factory.mktemp("nginx")
    ca = pki.new_ca("test-ca", 1)
    server = pki.new_server_certificate(ca, ["superlink.local", "localhost"], ["127.0.0.1"], 1)
    (tmp / "ca.crt").write_text(ca.cert_pem)
    (tmp / "tls.crt").write_text(server.cert_pem)
    (tmp / "tls.key").write_text(server.key_pem)
    ports = {name: _free_port() for name in PORTS}

    upstream = http.server.ThreadingHTTPServer(("127.0.0.1", ports["superlink_port"]), _EchoPath)
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(tmp / "tls.crt", tmp / "tls.key")
    upstream.socket = context.wrap_socket(upstream.socket, server_side=True)
    threading.Thread(target=upstream.serve_forever, daemon=True).start()

    conf = tmp / "nginx.conf"
    conf.write_text(nginx_conf(
        **ports, cert_file=str(tmp / "tls.crt"), key_file=str(tmp / "tls.key"),
        ca_file=str(tmp / "ca.crt"), superlink_server_name="superlink.local", runtime_dir=str(tmp),
    ))
    log = tmp / "nginx.log"
    with log.open("wb") as log_file:
        proc = subprocess.Popen([str(NGINX), "-e", "stderr", "-c", str(conf)],
                                stdout=subprocess.DEVNULL, stderr=log_file)
    try:
        deadline = time.monotonic() + 10
        while True:
            try:
                socket.create_connection(("127.0.0.1", ports["control_port"]), 0.2).close()
                break
            except OSError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"nginx did not start: {log.read_text()}")
                time.sleep(0.05)
        yield RunningFilter(ports, str(tmp / "ca.crt"))
    finally:
        proc.terminate()
        proc.wait(10)
        upstream.shutdown()
        upstream.server_close()


ROUTES = [("fleet_port", "/v1/fleet/pull-messages"), ("runtime_port", "/v1/runtime/pull-task-input"),
          ("control_port", "/v1/control/list-runs")]


@needs_nginx
@pytest.mark.parametrize(("listener", "path"), ROUTES)
def test_a_listener_forwards_its_own_api(running_filter: RunningFilter, listener: str, path: str) -> None:
    assert running_filter.post(listener, path) == (200, f"superlink saw {path}")


@needs_nginx
@pytest.mark.parametrize(("listener", "path"),
                         [(listener, path) for listener, _ in ROUTES for other, path in ROUTES if other != listener])
def test_a_listener_refuses_the_other_apis(running_filter: RunningFilter, listener: str, path: str) -> None:
    assert running_filter.post(listener, path)[0] == 404


@needs_nginx
@pytest.mark.parametrize("path", ["/v1/fleet/../control/list-runs", "/v1/fleet/%2e%2e/control/list-runs",
                                  "/v1/fleet/pull-messages?x=1", "/v1/Fleet/pull-messages"])
def test_the_fleet_listener_refuses_disguised_paths(running_filter: RunningFilter, path: str) -> None:
    assert running_filter.post("fleet_port", path)[0] in (400, 404)


@needs_nginx
def test_health_is_served_on_the_fleet_listener_only(running_filter: RunningFilter) -> None:
    assert running_filter.post("fleet_port", "/health")[0] == 200
    assert running_filter.post("control_port", "/health")[0] == 404
