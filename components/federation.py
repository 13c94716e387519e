"""Federation: one Kubernetes provider per cluster, the PKI, the server site and every client site."""

from __future__ import annotations

from dataclasses import dataclass

import pulumi
import pulumi_kubernetes as k8s

from components import naming
from components.config import ClusterConfig, FederationConfig
from components.pki_resources import CertificateAuthority, SupernodeKey
from components.server import ServerSite, ServerSiteArgs
from components.site import ClientSite, ClientSiteArgs

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


class Federation(pulumi.ComponentResource):
    """A whole federation across its clusters; components get their cluster's provider from here."""

    def __init__(self, name: str, args: FederationArgs, opts: pulumi.ResourceOptions | None = None) -> None:
        super().__init__(TYPE, name, None, opts)
        config = args.config
        child = pulumi.ResourceOptions(parent=self)
        self.providers = {cluster.name: provider(f"{name}-{cluster.name}", cluster, child)
                          for cluster in config.clusters.values()}

        def on_cluster(cluster: str) -> pulumi.ResourceOptions:
            return pulumi.ResourceOptions(parent=self, providers=[self.providers[cluster]])

        self.ca = CertificateAuthority(f"{name}-ca", common_name=f"flowerbed {config.federation} federation CA",
                                       validity_days=config.pki.ca_validity_days,
                                       renew_before_days=config.pki.renew_before_days, opts=child)
        keys = {site.name: SupernodeKey(f"{name}-{site.name}-supernode-key", site=site.name, opts=child)
                for site in config.sites}
        self.server = ServerSite(f"{name}-server", ServerSiteArgs(
            config=config, ca=self.ca, supernode_public_keys={s: k.public_openssh for s, k in keys.items()}),
            opts=on_cluster(config.server.cluster))
        self.sites = {site.name: ClientSite(f"{name}-{site.name}", ClientSiteArgs(
            config=config, site=site, ca=self.ca, supernode_key=keys[site.name]),
            opts=on_cluster(site.cluster)) for site in config.sites}

        server = config.server
        ca_file = f"{config.federation}-ca.crt"
        self.outputs = {
            "endpoint": self.server.endpoint,
            "fleetAddress": self.server.fleet_address,
            "sites": {site.name: {"namespace": site.namespace, "supernodeNamespace": site.supernode_namespace,
                                  "cluster": site.cluster} for site in config.sites},
            "serverNamespace": server.namespace,
            "caCertificate": self.ca.cert_pem,
            "flwrConnection": (
                f"# Save the CA next to where you run flwr: pulumi stack output caCertificate > {ca_file}\n"
                "# (or write an absolute path below), add this to $FLWR_HOME/config.toml (default ~/.flwr),\n"
                "# keep the port-forward below running, then: flwr run <app> " + config.federation + "\n"
                + naming.flwr_connection(config.federation, ca_file)),
            "controlPortForward": naming.port_forward_command(server.namespace,
                                                              config.clusters[server.cluster].context),
        }
        self.register_outputs(self.outputs)
