"""BENCHMARKS AND TESTS ONLY: make chosen sites slow, by sleeping (run config `bench-train-seconds`).

`bench-train-seconds = "site-4=16.0,*=1.0"` pads every training reply of site
`site-4` with a sleep to at least 16 s of wall time (counted from the start of
`train`), and every other site's (`*`) to 1 s; sites not listed and no `*`:
no padding. Empty (the default): off. A sleep, not extra computation, so that
a slow site costs no CPU and the sites' speeds do not depend on how busy the
machine is. Never set it in a real federation.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager

EVERY_OTHER_SITE = "*"
# Set while an in-process harness shuts its site threads down (tests/inprocess_threads.py).
_CUT_SHORT = threading.Event()
RULE = f"must be SITE=SECONDS[,SITE=SECONDS...] with SECONDS >= 0 (SITE {EVERY_OTHER_SITE!r}: every other site)"


def train_seconds(value: str) -> dict[str, float]:
    """Site name (or `*`) -> seconds, from the key's value; ValueError on a malformed one (RULE)."""
    seconds: dict[str, float] = {}
    for entry in filter(None, (part.strip() for part in value.split(","))):
        site, _, number = (part.strip() for part in entry.partition("="))
        try:
            site_seconds = float(number)
        except ValueError:
            site_seconds = -1.0
        if not site or not site_seconds >= 0:
            raise ValueError(f"{entry!r} {RULE}")
        seconds[site] = site_seconds
    return seconds


def well_formed(value: str) -> bool:
    """The run config's rule for `bench-train-seconds` (run_config.py)."""
    try:
        train_seconds(value)
    except ValueError:
        return False
    return True


def pad(value: str, site: str, started: float) -> None:
    """Sleep until `site`'s training, begun at `started` (time.monotonic()), took the time `value` gives it."""
    seconds = train_seconds(value)
    target = seconds.get(site, seconds.get(EVERY_OTHER_SITE, 0.0))
    _CUT_SHORT.wait(max(0.0, started + target - time.monotonic()))


@contextmanager
def cut_short() -> Iterator[None]:
    """Inside: every padding sleep, under way or new, returns at once, so a harness can join its
    site threads instead of leaving one asleep for the interpreter's exit to kill."""
    _CUT_SHORT.set()
    try:
        yield
    finally:
        _CUT_SHORT.clear()
