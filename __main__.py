"""flowerbed: deploy a Flower federation (one server site, many client sites) across Kubernetes clusters.

Thin on purpose: read and validate the stack config, build the Federation, export its outputs.
"""

import pulumi

from components.config import ConfigError, load
from components.federation import Federation, FederationArgs

try:
    config = load()
except ConfigError as err:
    # RunError: the language host prints the message alone (no traceback), and nothing
    # has been declared yet, so a config that cannot work creates nothing.
    raise pulumi.RunError(f"invalid stack configuration: {err}") from None

federation = Federation(config.federation, FederationArgs(config=config))
for key, value in federation.outputs.items():
    pulumi.export(key, value)
