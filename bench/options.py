"""What every benchmark is run with (command-line options of `python -m bench`)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Options:
    dataset: str = "builtin:breast-cancer"
    sites: int = 3
    rounds: int = 5
    target_accuracy: float = 0.9  # for time-to-accuracy and rounds-to-accuracy

    def base(self) -> dict[str, object]:
        """Run config shared by every run of a benchmark."""
        return {"dataset": self.dataset, "num-server-rounds": self.rounds}
