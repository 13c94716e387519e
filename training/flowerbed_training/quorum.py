"""Minimum answers (run config `min-train-sites`): a round with fewer keeps the previous model."""

from __future__ import annotations

from dataclasses import dataclass
from logging import WARNING

from flwr.supercore import log


@dataclass(frozen=True)
class Quorum:
    minimum: int  # answers a round needs to be aggregated

    def met(self, round_number: int, answered: int) -> bool:
        """True when `answered` sites are enough; logs why the round is skipped otherwise."""
        if answered >= self.minimum:
            return True
        log(WARNING, "Round %d: %d site(s) answered, %d required; keeping the previous model",
            round_number, answered, self.minimum)
        return False
