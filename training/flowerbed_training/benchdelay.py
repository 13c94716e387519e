"""BENCHMARKS AND TESTS ONLY: make chosen sites slow, by sleeping (run config `bench-train-seconds`).

`bench-train-seconds = "site-4=16.0,*=1.0"` pads every training reply of site
`site-4` with a sleep to at least 16 s of wall time (counted from the start of
`train`), and every other site's (`*`) to 1 s; sites not listed and no `*`:
no padding. Empty (the default): off. A sleep, not extra computation, so that
a slow site costs no CPU and the sites' speeds do not depend on how busy the
machine is. Never set it in a real federation.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import Any

from flowerbed_training.settings import SettingsError, _get

KEY = "bench-train-seconds"
EVERY_OTHER_SITE = "*"


def train_seconds(run_config: Mapping[str, Any]) -> dict[str, float]:
    """Site name (or `*`) -> seconds; raises SettingsError naming the key on a malformed value."""
    value = _get(run_config, KEY, str, "")
    seconds: dict[str, float] = {}
    for entry in filter(None, (part.strip() for part in value.split(","))):
        site, _, number = (part.strip() for part in entry.partition("="))
        try:
            site_seconds = float(number)
        except ValueError:
            site_seconds = -1.0
        if not site or not site_seconds >= 0:
            raise SettingsError(f"run config {KEY}: {value!r} must be SITE=SECONDS[,SITE=SECONDS...] "
                                f"with SECONDS >= 0 (SITE {EVERY_OTHER_SITE!r}: every other site)")
        seconds[site] = site_seconds
    return seconds


def pad(run_config: Mapping[str, Any], site: str, started: float) -> None:
    """Sleep until `site`'s training, begun at `started` (time.monotonic()), took its padded time."""
    seconds = train_seconds(run_config)
    target = seconds.get(site, seconds.get(EVERY_OTHER_SITE, 0.0))
    time.sleep(max(0.0, started + target - time.monotonic()))
