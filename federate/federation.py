"""Start the platform's processes on loopback: SuperLink, SuperExecs, one SuperNode per site.

The same topology a cluster runs (DESIGN.md): SuperLink with TLS, SuperNode
authentication and process isolation; a SuperExec next to the SuperLink for
ServerApp tasks and one next to each SuperNode for ClientApp tasks (subprocess
executor here, Kubernetes executor in the cluster).
"""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from components import naming
from federate.credentials import Credentials, NodeKeyFiles, write_credentials
from federate.flwr_cli import BIN_DIR, FlwrCli, flower_env
from federate.ports import LOOPBACK, wait_until_listening
from federate.processes import ManagedProcess, Supervisor
from federate.sites import Site

CONNECTION = "flowerbed-local"
STARTUP_TIMEOUT_S = 120.0  # generous: on a busy 2-core machine each Flower process takes seconds to import


@dataclass(frozen=True)
class Ports:
    superlink: int  # Fleet, Control and Runtime APIs: Flower serves them all on one port
    supernode_runtime: dict[str, int]  # per site: the SuperNode's Runtime API for its SuperExec


@dataclass
class LocalFederation:
    """Running processes plus what a client needs to talk to them."""

    sites: Sequence[Site]
    ports: Ports
    workdir: Path
    supervisor: Supervisor
    # Each site's state directory is <state_root>/<site> (the cluster's state volume); default: in workdir.
    state_root: Path | None = None
    credentials: Credentials = field(init=False)
    cli: FlwrCli = field(init=False)  # the operator's `flwr` with a connection to this SuperLink

    def __post_init__(self) -> None:
        self.credentials = write_credentials(self.workdir / "pki", [site.name for site in self.sites])
        self.cli = FlwrCli.configure(
            self.workdir / "operator", CONNECTION, self.superlink_address, self.credentials.ca_cert
        )

    @property
    def superlink_address(self) -> str:
        return f"{LOOPBACK}:{self.ports.superlink}"

    def start(self, data_dir: Path) -> FlwrCli:
        """Bring the whole federation up; every site's SuperNode is online when this returns."""
        cli = self.start_server()
        # Each registration is a `flwr` process that spends seconds importing; run them side by side.
        with ThreadPoolExecutor(len(self.sites)) as pool:
            list(pool.map(self.register, self.sites))
        for site in self.sites:
            self.start_site(site, data_dir / site.name)
        self.wait_for_nodes_online(len(self.sites))
        return cli

    def start_server(self) -> FlwrCli:
        """The SuperLink and the SuperExec that launches its ServerApp tasks."""
        self.start_superlink()
        self.start_superexec("superexec-serverapp", self.superlink_address)
        return self.cli

    def register(self, site: Site) -> None:
        """`flwr supernode register <public key>`: only registered keys may join."""
        self.cli.json("supernode", "register", str(self.credentials.node_keys[site.name].public_key))

    def start_site(self, site: Site, data_root: Path) -> None:
        self.start_supernode(site, self.credentials.node_keys[site.name], data_root)
        self.start_superexec(f"superexec-{site.name}", f"{LOOPBACK}:{self.ports.supernode_runtime[site.name]}")

    def start_superlink(self) -> ManagedProcess:
        home = self.workdir / "superlink"
        home.mkdir(parents=True, exist_ok=True)
        process = self.supervisor.start(
            "superlink",
            [
                str(BIN_DIR / "flower-superlink"),
                "--host", LOOPBACK,
                "--port", str(self.ports.superlink),
                "--ssl-certfile", str(self.credentials.server_cert),
                "--ssl-keyfile", str(self.credentials.server_key),
                "--ssl-ca-certfile", str(self.credentials.ca_cert),
                "--enable-supernode-auth",
                "--isolation", "process",
                "--database", str(home / "state.db"),
                # The job image / venv already has the app's dependencies; nothing may download.
                "--disable-runtime-dependency-installation",
            ],
            flower_env(home),
        )
        wait_until_listening(self.ports.superlink, STARTUP_TIMEOUT_S, self.supervisor.check)
        return process

    def start_superexec(self, name: str, runtime_address: str) -> ManagedProcess:
        """A task launcher for one Runtime API (SuperLink's or a SuperNode's), over TLS like in the cluster."""
        home = self.workdir / name
        home.mkdir(parents=True, exist_ok=True)
        return self.supervisor.start(
            name,
            [str(BIN_DIR / "flower-superexec"), "--runtime-api-address", runtime_address,
             "--root-certificates", str(self.credentials.ca_cert), "--executor", "subprocess"],
            {**flower_env(home), **naming.SUPEREXEC_ENV},
        )

    def start_supernode(self, site: Site, key: NodeKeyFiles, data_root: Path, *,
                        root_certificates: Path | None = None, max_retries: int | None = None,
                        superlink_address: str | None = None) -> ManagedProcess:
        """One site's SuperNode; the optional arguments let tests try bad credentials or a proxy."""
        home = self.workdir / f"supernode-{site.name}"  # SuperNodes install app bundles under FLWR_HOME
        home.mkdir(parents=True, exist_ok=True)
        retries = [] if max_retries is None else ["--max-retries", str(max_retries)]
        return self.supervisor.start(
            f"supernode-{site.name}",
            [
                str(BIN_DIR / "flower-supernode"),
                "--superlink", superlink_address or self.superlink_address,
                "--root-certificates", str(root_certificates or self.credentials.ca_cert),
                "--auth-supernode-private-key", str(key.private_key),
                "--node-config", site.node_config(data_root, (self.state_root or self.workdir / "state") / site.name),
                "--isolation", "process",
                # The Runtime API (for the SuperExec and its ClientApps) over TLS, as in the cluster;
                # the server certificate is valid for 127.0.0.1.
                "--host", LOOPBACK,
                "--port", str(self.ports.supernode_runtime[site.name]),
                "--ssl-certfile", str(self.credentials.server_cert),
                "--ssl-keyfile", str(self.credentials.server_key),
                "--ssl-ca-certfile", str(self.credentials.ca_cert),
                *retries,
            ],
            flower_env(home),
        )

    def online_nodes(self) -> int:
        nodes = self.cli.json("supernode", "list")["nodes"]
        return sum(1 for node in nodes if node["status"] == "online")

    def wait_for_nodes_online(self, expected: int) -> None:
        deadline = time.monotonic() + STARTUP_TIMEOUT_S
        while (online := self.online_nodes()) < expected:
            self.supervisor.check()
            if time.monotonic() > deadline:
                raise TimeoutError(
                    f"only {online} of {expected} SuperNodes came online within {STARTUP_TIMEOUT_S:.0f} s; "
                    f"see the supernode-*.log files in {self.supervisor.log_dir}"
                )
            time.sleep(2.0)  # each poll is a `flwr` process; do not starve the starting SuperNodes
