"""Which share of a built-in dataset each site trains on, decided by the server per run.

Node config carries only per-site facts (`site-name`, `data-root`), so adding a
site to a federation changes nothing in the other sites' deployments. At the
survey the server sorts the names of the sites taking part and gives site i of
n partition i of n of the built-in training pool; the sorted names travel in
the messages' config (`partition-sites`). A site missing from the list (it
joined after the survey) holds no share: it answers with an error naming
itself and is left out like any failed site.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from flowerbed_training.common.data import DataError
from flowerbed_training.common.protocol import PARTITION_SITES


@dataclass(frozen=True)
class Partition:
    index: int
    count: int


def assign(site_names: Iterable[str]) -> list[str]:
    """The assignment for the surveyed sites: their names, sorted (position = partition)."""
    counts = Counter(site_names)
    duplicates = sorted(name for name, count in counts.items() if count > 1)
    if duplicates:
        raise DataError(
            f"site-name: {', '.join(duplicates)} is used by more than one site; "
            "every site needs its own site-name to get its own partition"
        )
    return sorted(counts)


def partition_of(site: str, config: Mapping[str, Any]) -> Partition | None:
    """This site's partition from the server's config; None when the server assigned none (study data)."""
    if PARTITION_SITES not in config:
        return None
    sites = [str(name) for name in config[PARTITION_SITES]]
    if site not in sites:
        raise DataError(
            f"site {site}: not in this run's {PARTITION_SITES} ({', '.join(sites)}); it joined after "
            "the survey, so it holds no share of the built-in dataset and sits this run out"
        )
    return Partition(sites.index(site), len(sites))
