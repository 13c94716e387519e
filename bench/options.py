"""What every benchmark is run with (command-line options of `python -m bench`)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Options:
    # Digits (8x8 images, 10 classes, CNN) separates the strategies under label
    # skew; breast cancer is too easy (every setup reaches ~0.96 in a few rounds).
    dataset: str = "builtin:digits"
    sites: int = 5
    rounds: int = 8
    target_accuracy: float = 0.9  # for time-to-accuracy and rounds-to-accuracy

    def base(self) -> dict[str, object]:
        """Run config shared by every run of a benchmark."""
        return {"dataset": self.dataset, "num-server-rounds": self.rounds}
