"""Check that a Flower App's ServerApp and ClientApp load in this environment.

The platform disables runtime dependency installation, so an app whose
dependencies are missing from the job image would only fail when a site runs
it. The job image's build runs this check (failing the build instead), and
tests/images runs it against the tested environment. It loads each component
with Flower's own loader, from the reference `[tool.flwr.app.components]`
declares, as flwr-serverapp and flwr-clientapp do.

Usage: python check_app.py APP_DIR
"""

from __future__ import annotations

import sys
from pathlib import Path

from flwr.clientapp import ClientApp
from flwr.common.config import get_project_config
from flwr.serverapp import ServerApp
from flwr.supercore.object_ref import load_app

COMPONENT_TYPES = {"serverapp": ServerApp, "clientapp": ClientApp}


def check(app_dir: Path) -> list[str]:
    """Load every component; return one line per component, raise on a bad one."""
    components = get_project_config(app_dir)["tool"]["flwr"]["app"]["components"]
    lines = []
    for name, expected_type in COMPONENT_TYPES.items():
        reference = components[name]
        component = load_app(reference, ImportError, app_dir)
        if not isinstance(component, expected_type):
            raise TypeError(
                f"[tool.flwr.app.components] {name} = {reference!r} is a "
                f"{type(component).__name__}, not a {expected_type.__name__}"
            )
        lines.append(f"{name}: {reference} loads")
    return lines


def main(argv: list[str]) -> int:
    if len(argv) != 2:
        print(__doc__.strip().splitlines()[-1], file=sys.stderr)
        return 2
    for line in check(Path(argv[1])):
        print(line)
    torch = sys.modules.get("torch")  # only if the app loaded it: then say which build the image holds
    if torch is not None:
        print(f"torch {torch.__version__}, built for CUDA {torch.version.cuda or 'none (CPU)'}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
