"""The learning benchmark's results in the repository: its table in bench/README.md (between
the markers below) and the accuracy curves next to it in bench/learning.png."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only; no display on servers and CI
import matplotlib.pyplot as plt  # noqa: E402  (the backend must be chosen first)
import numpy as np  # noqa: E402

from .table import fmt  # noqa: E402

README = Path(__file__).with_name("README.md")
PLOT = Path(__file__).with_name("learning.png")
BEGIN, END = "<!-- learning:begin -->", "<!-- learning:end -->"

# (dataset, partition, strategy) -> (curves (seeds, rounds), pooled (seeds,))
Curves = Mapping[tuple[str, str, str], tuple[np.ndarray, np.ndarray]]


def markdown(title: str, header: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    lines = [title, "", "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(fmt(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)


def write(title: str, header: Sequence[str], rows: Sequence[Sequence[object]], curves: Curves) -> None:
    text = README.read_text()
    start, end = text.index(BEGIN) + len(BEGIN), text.index(END)
    README.write_text(text[:start] + "\n" + markdown(title, header, rows) + "\n" + text[end:])
    plot(curves, PLOT)
    print(f"\nwrote {README} and {PLOT}")


def plot(curves: Curves, path: Path) -> None:
    """Mean accuracy per round per strategy (band: +- std over seeds), one panel per
    dataset x partition; the dashed line is pooled training's mean accuracy."""
    panels = {d: list(dict.fromkeys(p for d2, p, _ in curves if d2 == d)) for d, _, _ in curves}
    columns = max(len(labels) for labels in panels.values())
    figure, axes = plt.subplots(len(panels), columns, figsize=(4 * columns, 3.2 * len(panels)),
                                squeeze=False, sharey="row")
    for row, (dataset, labels) in enumerate(panels.items()):
        for column, label in enumerate(labels):
            ax = axes[row][column]
            for (d, p, strategy), (accuracy, pooled) in curves.items():
                if (d, p) != (dataset, label):
                    continue
                rounds = np.arange(1, accuracy.shape[1] + 1)
                mean, std = accuracy.mean(axis=0), accuracy.std(axis=0)
                ax.plot(rounds, mean, label=strategy)
                ax.fill_between(rounds, mean - std, mean + std, alpha=0.15)
            ax.axhline(pooled.mean(), color="black", linestyle="--", linewidth=1, label="pooled")
            ax.set_title(f"{dataset.removeprefix('builtin:')} {label}")
            ax.set_xlabel("round")
            ax.set_ylim(max(0.0, ax.get_ylim()[0]), 1.0)
        axes[row][0].set_ylabel("test accuracy")
        for ax in axes[row][len(labels):]:  # a dataset with fewer partitions than the widest row
            ax.axis("off")
    axes[0][0].legend(loc="lower right", fontsize="small")
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)
