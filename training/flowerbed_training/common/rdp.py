"""Epsilon from Opacus' RDP accountant: local DP at the sites and central DP on the server compose
their Gaussian mechanisms with it (Mironov 2017, "Renyi Differential Privacy")."""

from __future__ import annotations

# One Gaussian mechanism run: (noise multiplier, sample rate, steps), as Opacus' accountant keeps it.
History = list[tuple[float, float, int]]


def epsilon(history: History, delta: float) -> float:
    """Epsilon at `delta` after every run in `history` (0 for none)."""
    if not history:
        return 0.0
    from opacus.accountants import RDPAccountant  # noqa: PLC0415  (seconds to import: DP runs only)

    accountant = RDPAccountant()
    accountant.history = history
    return float(accountant.get_epsilon(delta))
