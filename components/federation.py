"""Federation: one Kubernetes provider per cluster, the PKI, the server site and every client site.

The one-stack shape (`role: federation`); a consortium's hub and site stacks are built from the
same components in components/consortium.py, with the helpers below.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import pulumi
import pulumi_kubernetes as k8s

from components import naming
from components.config import ClusterConfig, FederationConfig
from components.pki_resources import CertificateAuthority, SupernodeKey
from components.server import ServerSite, ServerSiteArgs
from components.site import ClientSite, ClientSiteArgs
from components.supernode import SiteTrust

TYPE = "flowerbed:index:Federation"


@dataclass(frozen=True)
class FederationArgs:
    config: FederationConfig


def provider(resource_name: str, cluster: ClusterConfig, opts: pulumi.ResourceOptions) -> k8s.Provider:
    """Render mode writes YAML under `renderDir` and never contacts a cluster; otherwise use the kubeconfig."""
    if cluster.render_dir is not None:
        return k8s.Provider(resource_name, render_yaml_to_directory=cluster.render_dir, opts=opts)
    return k8s.Provider(resource_name, kubeconfig=pulumi.Output.secret(cluster.kubeconfig),
                        context=cluster.context, opts=opts)


class Clusters:
    """One provider per cluster of the stack, children of `parent`; `on(cluster)` places a component there."""

    def __init__(self, name: str, config: FederationConfig, parent: pulumi.Resource) -> None:
        self._parent = parent
        self.providers = {cluster.name: provider(f"{name}-{cluster.name}", cluster,
                                                 pulumi.ResourceOptions(parent=parent))
                          for cluster in config.clusters.values()}

    def on(self, cluster: str) -> pulumi.ResourceOptions:
        return pulumi.ResourceOptions(parent=self._parent, providers=[self.providers[cluster]])


def federation_ca(name: str, config: FederationConfig, parent: pulumi.Resource) -> CertificateAuthority:
    return CertificateAuthority(f"{name}-ca", common_name=f"flowerbed {config.federation} federation CA",
                                validity_days=config.pki.ca_validity_days,
                                renew_before_days=config.pki.renew_before_days,
                                opts=pulumi.ResourceOptions(parent=parent))


def supernode_keys(name: str, config: FederationConfig, parent: pulumi.Resource) -> dict[str, SupernodeKey]:
    """Each site's SuperNode key pair, made in this stack's state."""
    return {site.name: SupernodeKey(f"{name}-{site.name}-supernode-key", site=site.name, version=site.key_version,
                                    opts=pulumi.ResourceOptions(parent=parent))
            for site in config.sites}


def site_outputs(config: FederationConfig) -> dict[str, dict[str, str]]:
    return {site.name: {"namespace": site.namespace, "supernodeNamespace": site.supernode_namespace,
                        "cluster": site.cluster} for site in config.sites}


def server_outputs(config: FederationConfig, server: ServerSite, ca: CertificateAuthority) -> dict[str, Any]:
    """What an administrator needs to reach the server and submit runs with `flwr`."""
    ca_file = f"{config.federation}-ca.crt"
    return {
        "endpoint": server.endpoint,
        "fleetAddress": server.fleet_address,
        "serverNamespace": config.server.namespace,
        "caCertificate": ca.cert_pem,
        "flwrConnection": (
            f"# Save the CA next to where you run flwr: pulumi stack output caCertificate > {ca_file}\n"
            "# (or write an absolute path below), add this to $FLWR_HOME/config.toml (default ~/.flwr),\n"
            "# keep the port-forward below running, then: flwr run <app> " + config.federation + "\n"
            + naming.flwr_connection(config.federation, ca_file)),
        "controlPortForward": naming.port_forward_command(config.server.namespace,
                                                          config.clusters[config.server.cluster].context),
    }


class Federation(pulumi.ComponentResource):
    """A whole federation across its clusters; components get their cluster's provider from here."""

    def __init__(self, name: str, args: FederationArgs, opts: pulumi.ResourceOptions | None = None) -> None:
        super().__init__(TYPE, name, None, opts)
        config = args.config
        clusters = Clusters(name, config, self)
        self.providers = clusters.providers
        self.ca = federation_ca(name, config, self)
        keys = supernode_keys(name, config, self)
        self.server = ServerSite(f"{name}-server", ServerSiteArgs(
            config=config, ca=self.ca, supernode_public_keys={s: k.public_openssh for s, k in keys.items()}),
            opts=clusters.on(config.server.cluster))
        # One organisation holds everything: the federation CA also signs the Runtime API certificates.
        trust = SiteTrust(federation_ca=self.ca.cert_pem, runtime_ca=self.ca)
        self.sites = {site.name: ClientSite(f"{name}-{site.name}", ClientSiteArgs(
            config=config, site=site, trust=trust, supernode_key=keys[site.name]),
            opts=clusters.on(site.cluster)) for site in config.sites}
        self.outputs = {**server_outputs(config, self.server, self.ca), "sites": site_outputs(config)}
        self.register_outputs(self.outputs)
