"""A local federation on loopback: the platform's real Flower processes, no cluster.

`python -m federate` (or `make federate`) starts a TLS SuperLink with SuperNode
authentication, one SuperNode per site of the dev stack, the SuperExec processes
that launch ServerApp and ClientApp tasks, submits the `training/` app with
`flwr run`, follows its rounds, and writes `out/federate/`.
"""

import sys
from pathlib import Path

# The training app's package, for its report module (flowerbed_training.server.report: the one
# copy the deployed ServerApp writes summary.json and report.png with) and its run-config check.
_TRAINING = str(Path(__file__).resolve().parent.parent / "training")
if _TRAINING not in sys.path:
    sys.path.append(_TRAINING)
