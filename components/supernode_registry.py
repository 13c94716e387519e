"""Keep the SuperLink's registered SuperNode keys equal to the stack's sites.

The registration Job runs this file (mounted from a ConfigMap) in the platform image, and the
local-federation tests run the same file; so it imports only the standard library and flwr:

    python supernode_registry.py --superlink HOST:PORT --root-certificates CA --keys DIR

DIR holds one `<site>.pub` (OpenSSH public key) per site of the stack. Keys SuperLink knows that
are not in DIR are unregistered first: a removed site is locked out (Flower refuses an
unregistered key for good, so a re-added site gets a new key). Then keys in DIR that SuperLink
does not know are registered. A second run changes nothing.

`flwr supernode list` does not show public keys, so this talks to the Control API with the
client the `flwr` CLI itself uses (flwr 1.42).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Node:
    """A SuperNode SuperLink knows (and has not unregistered)."""

    node_id: int
    public_key: bytes
    name: str


def plan(desired: Mapping[str, bytes], registered: Sequence[Node]) -> tuple[list[Node], list[str]]:
    """(nodes to unregister, sites to register) so that the registered keys become `desired`'s."""
    wanted = set(desired.values())
    known = {node.public_key for node in registered}
    return ([node for node in registered if node.public_key not in wanted],
            sorted(site for site, key in desired.items() if key not in known))


def desired_keys(keys_dir: Path) -> dict[str, bytes]:
    """Site name -> its public key as SuperLink stores it (the bytes `flwr supernode register` sends)."""
    from flwr.cli.supernode.register import try_load_public_key

    keys = {path.stem: try_load_public_key(path) for path in sorted(keys_dir.glob("*.pub"))}
    if not keys:
        # The stack always has a site: an empty directory is a broken mount, not "unregister everyone".
        raise SystemExit(f"no <site>.pub key in {keys_dir}; refusing to unregister every SuperNode")
    return keys


def synchronize(superlink: str, root_certificates: Path, desired: Mapping[str, bytes]) -> list[str]:
    """Apply `plan` through SuperLink's Control API; one line per site or node, saying what was done."""
    from flwr.cli.typing import SuperLinkConnection
    from flwr.cli.utils import init_http_client_from_connection
    from flwr.proto.control_pb2 import ListNodesRequest, RegisterNodeRequest, UnregisterNodeRequest
    from flwr.supercore.constant import NodeStatus

    client = init_http_client_from_connection(SuperLinkConnection(
        name="federation", address=superlink, root_certificates=str(root_certificates.resolve())))
    try:
        registered = [Node(info.node_id, info.public_key, info.name)
                      for info in client.ListNodes(ListNodesRequest()).nodes_info
                      if info.status != NodeStatus.UNREGISTERED]
        unregister, register = plan(desired, registered)
        lines = []
        for node in unregister:
            client.UnregisterNode(UnregisterNodeRequest(node_id=node.node_id))
            lines.append(f"{node.name or '(unnamed)'}: unregistered node {node.node_id}")
        for site in sorted(desired):
            if site in register:
                client.RegisterNode(RegisterNodeRequest(public_key=desired[site], name=site))
            lines.append(f"{site}: {'registered' if site in register else 'already registered'}")
        return lines
    finally:
        client.close()


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--superlink", required=True, help="the Control API address, HOST:PORT (TLS)")
    parser.add_argument("--root-certificates", required=True, type=Path, help="the federation CA (PEM)")
    parser.add_argument("--keys", required=True, type=Path, help="directory of <site>.pub OpenSSH public keys")
    args = parser.parse_args(argv)
    for line in synchronize(args.superlink, args.root_certificates, desired_keys(args.keys)):
        print(line, flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
