"""The stack configuration: the ONLY reader of `pulumi.Config`, typed and validated (pydantic models).

`parse` checks the whole configuration before anything is declared, so a config that cannot work
fails `pulumi preview` with one line naming the field and what is allowed (`ConfigError`). It is pure
(plain values in, frozen models out) but for the site files a `sitesDir` names, which are this stack's
own config split into files. `load` reads the stack's `flowerbed:*` values and calls `parse`.

Where a key is validated: its field in the model of its section, whose attribute is the key in
snake_case (`sites[].maxConcurrentTasks` is `SiteConfig.max_concurrent_tasks`, in sites.py):

| module | what |
|---|---|
| `stack.py` | `FederationConfig`: the top-level keys, the shapes by `role`, sites inline and from `sitesDir`; `parse`, `load` |
| `sites.py` | `ServerConfig`, `SiteConfig`, `StudyData`: what is placed on a cluster, in a namespace |
| `sections.py` | `images`, `clusters` (and their `dns`), storage, `pki`, `dataSafety`, a site stack's `bundle` |
| `fields.py` | the value types: DNS names, quantities, bounded integers, CIDRs, label maps |
| `wording.py` | the one-line messages (`ConfigError`), and `Section`, the base of every model |
| `files.py` | stack files and the project's files the config names |

What crosses between a consortium's stacks (join requests, the bundle) is read by
components/exchange.py, whose models are built the same way.
"""

from components.config.files import flowerbed_values, project_directory, stack_file, yaml_file
from components.config.sections import (BundleSource, ClusterConfig, DataSafety, DnsConfig, Images, PkiConfig,
                                        Resources, Storage)
from components.config.sites import FleetEndpoint, NamespaceRef, ServerConfig, SiteConfig, StudyData
from components.config.stack import FederationConfig, load, parse
from components.config.wording import ConfigError

__all__ = ["BundleSource", "ClusterConfig", "ConfigError", "DataSafety", "DnsConfig", "FederationConfig",
           "FleetEndpoint", "Images", "NamespaceRef", "PkiConfig", "Resources", "ServerConfig", "SiteConfig",
           "Storage", "StudyData", "flowerbed_values", "load", "parse", "project_directory", "stack_file",
           "yaml_file"]
