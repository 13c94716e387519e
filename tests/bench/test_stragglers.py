"""The stragglers benchmark's setups and arithmetic (the timed runs themselves are bench-only)."""

from bench.runs import FederatedRun
from bench.stragglers import DEFAULTS, FEDBUFF, TIMEOUT, WAIT_ALL, setups, slow_replies_used, train_seconds, verdict
from tests.inprocess import config_with


def test_the_slow_site_is_k_times_slower_and_every_setup_gets_the_same_site_work():
    runs = setups(DEFAULTS, 16)
    assert list(runs) == [WAIT_ALL, TIMEOUT, FEDBUFF]
    assert train_seconds(DEFAULTS, 16) == {0: 0.5, 1: 0.5, 2: 0.5, 3: 0.5, 4: 8.0}  # site-4 is slow_site
    assert runs[WAIT_ALL]["round-timeout"] > 16 * 0.5 * 100
    # The timeout round goes on without the slow site, but waits for every fast one.
    assert 0.5 < runs[TIMEOUT]["round-timeout"] < 4 * 0.5 and runs[TIMEOUT]["min-train-sites"] == 4
    fedbuff = runs[FEDBUFF]
    # 20 rounds x 5 replies = 100 replies; 33 updates x 3 replies = 99
    assert (fedbuff["num-server-rounds"], fedbuff["async-buffer-size"]) == (33, 3)
    config_with(fedbuff)  # a valid fedbuff run config


def line(accuracy: float, seconds: float, sites: list[str], replies: list[str] | None = None) -> dict:
    return {"accuracy": accuracy, "seconds": seconds, "sites": sites,
            "replies": [{"site": s} for s in replies or []]}


def test_slow_replies_used_counts_rounds_or_buffered_replies():
    sync = FederatedRun({"strategy": "fedavg"}, [line(0.5, 1, ["site-0", "site-4"]), line(0.6, 1, ["site-0"])], 2, 1)
    assert slow_replies_used(sync, "site-4") == 1
    buffered = FederatedRun({"strategy": "fedbuff"}, [line(0.5, 1, ["site-4"], ["site-4", "site-4", "site-0"])], 1, 1)
    assert slow_replies_used(buffered, "site-4") == 2


def test_verdict_checks_both_targets():
    wait_all = FederatedRun({}, [line(0.85, 10, []), line(0.92, 10, []), line(0.94, 10, [])], 30, 1)
    fast = FederatedRun({}, [line(0.91, 5, []), line(0.935, 2, [])], 7, 1)
    # 0.9 after 20 s vs 5 s: 4x sooner; 0.935 vs 0.94: -0.5 points
    assert verdict(fast, wait_all, 0.9, 16) == ("k=16: fedbuff reached 0.9 4.00x sooner (met), target >= 2x; "
                                                "final accuracy -0.50 points (met) vs sync-wait-all, target within 1 point")
    slow = FederatedRun({}, [line(0.5, 5, []), line(0.92, 12, [])], 17, 1)
    assert "1.18x sooner (MISSED)" in verdict(slow, wait_all, 0.9, 16)
    assert "-2.00 points (MISSED)" in verdict(slow, wait_all, 0.9, 16)
    never = FederatedRun({}, [line(0.5, 5, [])], 5, 1)
    assert "never reached" in verdict(never, wait_all, 0.9, 16)
