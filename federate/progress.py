"""One line per finished round: a bar, the round's accuracy and loss, and who answered."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, TextIO

BAR_WIDTH = 24


def bar(done: int, total: int, width: int = BAR_WIDTH) -> str:
    filled = round(width * done / total) if total else width
    return "[" + "#" * filled + "-" * (width - filled) + "]"


def _number(value: Any) -> str:
    return f"{value:.3f}" if isinstance(value, (int, float)) else "  n/a"


def round_line(metrics: dict[str, Any], total_rounds: int, all_sites: Sequence[str]) -> str:
    line = (
        f"round {metrics['round']:>3}/{total_rounds} {bar(metrics['round'], total_rounds)} "
        f"accuracy {_number(metrics.get('accuracy'))}  loss {_number(metrics.get('loss'))}  "
    )
    if "sites" in metrics:  # an app may leave out who answered; then the line does not guess
        answered = list(metrics["sites"] or [])
        missing = [site for site in all_sites if site not in answered]
        who = ", ".join(answered) + (f"  (missing: {', '.join(missing)})" if missing else "")
        line += f"sites {len(answered)}/{len(all_sites)}: {who}  "
    return (line + (f"{metrics['seconds']:.1f} s" if "seconds" in metrics else "")).rstrip()


class Progress:
    def __init__(self, total_rounds: int, sites: Sequence[str], stream: TextIO) -> None:
        self.total_rounds = total_rounds
        self.sites = list(sites)
        self.stream = stream

    def say(self, text: str) -> None:
        print(text, file=self.stream, flush=True)

    def round_done(self, metrics: dict[str, Any]) -> None:
        self.say(round_line(metrics, self.total_rounds, self.sites))
