"""A consortium: the coordinator's hub stack and each member's site stack (components/README.md, "A consortium").

The same components as a one-stack Federation, split where the key custody splits: the hub holds
the federation CA and the server; each member holds its own sites, its SuperNode keys and a CA of
its own for their Runtime API certificates. Only public material crosses (components/exchange.py):
the members' join requests (name, SuperNode public key) to the hub, the hub's join bundle (federation,
endpoint, CA certificate) to the members.
"""

from __future__ import annotations

import pulumi

from components import exchange, naming, pki
from components.federation import (Clusters, Federation, FederationArgs, federation_ca, server_outputs,
                                   site_outputs, supernode_keys)
from components.pki_resources import CertificateAuthority
from components.server import ServerSite, ServerSiteArgs
from components.site import ClientSite, ClientSiteArgs
from components.supernode import SiteTrust

HUB_TYPE = "flowerbed:index:Hub"
MEMBER_TYPE = "flowerbed:index:Member"


class Hub(pulumi.ComponentResource):
    """The coordinator: the server site and the federation CA; the member sites it admits are a name
    and a public key each (it deploys nothing for them, and holds none of their secrets)."""

    def __init__(self, name: str, args: FederationArgs, opts: pulumi.ResourceOptions | None = None) -> None:
        super().__init__(HUB_TYPE, name, None, opts)
        config = args.config
        clusters = Clusters(name, config, self)
        self.ca = federation_ca(name, config, self)
        self.server = ServerSite(f"{name}-server", ServerSiteArgs(
            config=config, ca=self.ca, supernode_public_keys={m.name: m.public_key for m in config.members},
            one_key_config_map=True), opts=clusters.on(config.server.cluster))
        self.outputs = {
            **server_outputs(config, self.server, self.ca),
            "members": {member.name: {"publicKeyFingerprint": pki.fingerprint(member.public_key),
                                      "contact": dict(member.contact), "joinFile": member.source}
                        for member in config.members},
            exchange.BUNDLE_OUTPUT: self.ca.cert_pem.apply(
                lambda pem: exchange.join_bundle(config.federation, config.server.fleet, pem)),
        }
        self.register_outputs(self.outputs)


class Member(pulumi.ComponentResource):
    """One organisation's sites, run with its own credentials only: its SuperNode key pairs and its
    Runtime API CA live in its state; it trusts the federation by the join bundle's CA certificate."""

    def __init__(self, name: str, args: FederationArgs, opts: pulumi.ResourceOptions | None = None) -> None:
        super().__init__(MEMBER_TYPE, name, None, opts)
        config = args.config
        bundle = config.bundle
        clusters = Clusters(name, config, self)
        # Named after the stack, not its sites: adding a site must not re-issue the CA.
        self.runtime_ca = CertificateAuthority(
            f"{name}-runtime-ca", common_name=f"flowerbed {config.federation} runtime CA of {pulumi.get_stack()}",
            validity_days=config.pki.ca_validity_days, renew_before_days=config.pki.renew_before_days,
            opts=pulumi.ResourceOptions(parent=self))
        trust = SiteTrust(federation_ca=bundle.ca_certificate, runtime_ca=self.runtime_ca,
                          runtime_ca_secret=naming.RUNTIME_CA_SECRET)
        keys = supernode_keys(name, config, self)
        self.sites = {site.name: ClientSite(f"{name}-{site.name}", ClientSiteArgs(
            config=config, site=site, trust=trust, supernode_key=keys[site.name]),
            opts=clusters.on(site.cluster)) for site in config.sites}
        self.outputs = {
            "endpoint": bundle.fleet.address,
            "sites": site_outputs(config),
            exchange.REQUESTS_OUTPUT: {site.name: keys[site.name].public_openssh.apply(
                lambda key, site=site: exchange.join_request(config.federation, site.name, key, site.contact))
                for site in config.sites},
        }
        self.register_outputs(self.outputs)


# What `role` builds: one stack for everything, or a consortium's hub or member site stack.
SHAPES: dict[str, type[Federation | Hub | Member]] = {"federation": Federation, "hub": Hub, "site": Member}
