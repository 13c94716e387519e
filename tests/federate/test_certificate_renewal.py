"""A renewed server certificate reaches SuperNodes without touching them.

In a cluster a renewal changes the `superlink-tls` Secret, whose digest rolls the SuperLink pod
(components/kube.py `pod_template`), and nothing else. Here the same happens with real processes:
SuperLink restarts on its database with a new certificate from the same CA; the SuperNode, not
restarted, reconnects as the same node and trusts the new certificate.
"""

from __future__ import annotations

import socket
import ssl
import time
from pathlib import Path

import pytest
from cryptography import x509

from components import pki
from federate.credentials import SERVER_DNS_NAMES, SERVER_IP_ADDRESSES
from tests.federate.conftest import FederationFactory

pytestmark = pytest.mark.e2e

RECONNECT_S = 120.0
# flwr 1.42's SuperNode logs this once a retried connection succeeds (it never retries before the restart).
RECONNECTED = "Connection successful after"


def served_certificate(port: int) -> x509.Certificate:
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE  # only to read what is served; the SuperNode verifies for real
    with socket.create_connection(("127.0.0.1", port), timeout=10) as raw, \
            context.wrap_socket(raw, server_hostname="localhost") as tls:
        return x509.load_der_x509_certificate(tls.getpeercert(binary_form=True))


def test_a_supernode_keeps_working_across_a_server_certificate_renewal(
        start_federation: FederationFactory, tmp_path: Path) -> None:
    federation = start_federation(["hospital-a"])
    credentials = federation.credentials
    # The federation's CA, kept (write_credentials drops its key): renewal signs with it again.
    ca = pki.new_ca("renewal test CA", 2)
    credentials.ca_cert.write_text(ca.cert_pem)

    def issue() -> str:
        server = pki.new_server_certificate(ca, SERVER_DNS_NAMES, SERVER_IP_ADDRESSES, valid_days=1)
        credentials.server_cert.write_text(server.cert_pem)
        credentials.server_key.write_text(server.key_pem)
        return server.cert_pem

    first = issue()
    superlink = federation.start_superlink()
    [site] = federation.sites
    federation.register(site)
    supernode = federation.start_supernode(site, credentials.node_keys[site.name], tmp_path)
    federation.wait_for_nodes_online(1)
    [node] = federation.cli.json("supernode", "list")["nodes"]

    renewed = issue()
    assert renewed != first
    assert RECONNECTED not in supernode.log_path.read_text()
    federation.supervisor.stop(superlink)  # what the rolled pod does: stop, start on the same state
    federation.supervisor.processes.remove(superlink)
    federation.start_superlink()

    assert served_certificate(federation.ports.superlink) == x509.load_pem_x509_certificate(renewed.encode())
    # The node's status survives in the database for a while: the SuperNode's own word that its
    # retries reached the restarted SuperLink (over TLS, verifying the new certificate) proves it is back.
    deadline = time.monotonic() + RECONNECT_S
    while RECONNECTED not in supernode.log_path.read_text() and time.monotonic() < deadline:
        federation.supervisor.check()
        time.sleep(1)
    assert RECONNECTED in supernode.log_path.read_text(), supernode.tail(40)
    print(f"the SuperNode was back {RECONNECT_S - (deadline - time.monotonic()):.0f} s after the restart")
    nodes = federation.cli.json("supernode", "list")["nodes"]
    assert [(n["node-id"], n["status"]) for n in nodes] == [(node["node-id"], "online")]
    assert supernode.running(), supernode.tail()
