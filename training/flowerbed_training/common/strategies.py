"""The strategy registry (run config `strategy`): every strategy's name and what it combines with.

`STRATEGIES` is the one list of strategy names: run-config validation takes the allowed
names and the cross-key rules from it (run_config.py), the ServerApp builds each one
(server/strategies.py, tested to cover exactly the synchronous ones), and
training/README.md's strategy table is checked against it (tests/training/test_run_config.py).
It imports nothing of Flower's, so a ClientApp message that validates its run config does not
load Flower's server strategies. A new strategy is one more entry here and its builder there.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Registered:
    """One strategy: what it is and what it combines with."""

    summary: str  # the README's strategy table says the same
    secagg: bool = False  # SecAgg+ computes a weighted sum of models, i.e. FedAvg only
    central_dp: bool = True  # Flower's DP wrappers clip every ArrayRecord of a reply
    central_dp_conflict: str = ""  # why not, when central_dp is False
    # No synchronous rounds: not a Flower strategy but its own training path (server/fedbuff.py)
    asynchronous: bool = False


STRATEGIES: dict[str, Registered] = {
    "fedavg": Registered("Flower's FedAvg: the example-weighted mean of the sites' models", secagg=True),
    "fedprox": Registered("Flower's FedProx: FedAvg plus a proximal term `proximal-mu` at the sites"),
    "scaffold": Registered("SCAFFOLD (scaffold.py): control variates correct each site's drift",
                           central_dp=False, central_dp_conflict="the wrappers would clip its control-variate record"),
    "fedadam": Registered("Flower's FedAdam: Adam on the server, step `server-lr`, adaptivity `server-tau`, "
                          "moments `server-beta-1/2`"),
    "fedyogi": Registered("Flower's FedYogi: Yogi on the server, step `server-lr`, adaptivity `server-tau`, "
                          "moments `server-beta-1/2`"),
    "fedmedian": Registered("Flower's FedMedian: the coordinate-wise median (robust to outliers)"),
    "fedtrimmedavg": Registered("Flower's FedTrimmedAvg: the mean without a `trimmed-beta` share at each end"),
    "krum": Registered("Flower's Krum: the model closest to its neighbours, tolerating `krum-malicious` sites"),
    "fedbuff": Registered(
        "FedBuff (fedbuff.py): asynchronous; every site always busy, a server step every "
        "`async-buffer-size` replies, stale replies down-weighted (`async-*`)",
        central_dp=False, central_dp_conflict="its server steps are not one synchronous round's aggregate",
        asynchronous=True),
}
