"""flowerbed: deploy a Flower federation (one server site, many client sites) across Kubernetes clusters.

Thin on purpose: read and validate the stack config (and, in a consortium, what the other parties
published), build the stack's shape of the federation, export its outputs.
"""

from pathlib import Path

import pulumi

from components import exchange
from components.config import ConfigError, load
from components.consortium import SHAPES
from components.federation import FederationArgs

try:
    # The engine runs the program in the project directory: files named in the config are read from there.
    config = exchange.resolve(load(), Path.cwd())
except ConfigError as err:
    # RunError: the language host prints the message alone (no traceback), and nothing
    # has been declared yet, so a config that cannot work creates nothing.
    raise pulumi.RunError(f"invalid stack configuration: {err}") from None

root = SHAPES[config.role](config.federation, FederationArgs(config=config))
for key, value in root.outputs.items():
    pulumi.export(key, value)
