"""A run's summary.json and report.png, from its metrics lines: the one report module.

The ServerApp writes both into its run directory at the end of the run (no
centralized baseline, its own status); `make federate` (federate/) rewrites them
there with the centralized baseline and Flower's final status and traffic counts,
and uses the same functions for any other app that follows its metrics contract.
"""

from __future__ import annotations

import json
import os
import statistics
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # files only; no display on servers and CI

import matplotlib.pyplot as plt  # noqa: E402  (the backend must be chosen first)


@dataclass(frozen=True)
class SiteSummary:
    rounds_answered: int
    contribution: float | None  # mean cosine score over the rounds it was scored
    epsilon: float | None  # privacy spent by the end of the run (local DP), else None


@dataclass(frozen=True)
class Summary:
    run_id: str
    app: str
    status: str  # Flower's final run status
    strategy: str | None  # training/'s keys; None for an app without them
    protections: list[str]  # secure aggregation, differential privacy, compression in force
    dataset: str | None
    rounds: int  # rounds in metrics.jsonl; 0 for an app that writes none
    sites: list[str]
    final_accuracy: float | None
    final_loss: float | None
    # The same model trained on the pooled data in the same run; None for study data (never pooled).
    centralized_accuracy: float | None
    centralized_loss: float | None
    centralized_seconds: float | None
    seconds: dict[str, float]
    bytes_up: int
    bytes_down: int
    flower_traffic_bytes: dict[str, int]
    per_site: dict[str, SiteSummary]
    central_epsilon: float | None  # central DP: epsilon spent by the run's last round (metrics.jsonl), else None
    files: dict[str, str]
    left_out: list[str]  # flowerbed extras this app could not have, and why

    def final_line(self) -> str:
        if not self.rounds:
            return (f"{Path(self.app).name}: run {self.run_id} {self.status} on {len(self.sites)} sites; "
                    f"{self.seconds['total']:.0f} s (no per-round metrics: see left_out in summary.json)")
        return (
            f"federated accuracy {_fmt(self.final_accuracy)} after {self.rounds} round(s) on "
            f"{len(self.sites)} sites; centralized baseline (same model, pooled data) "
            f"{_fmt(self.centralized_accuracy)}; {self.seconds['total']:.0f} s"
        )


def _fmt(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.3f}"


def per_site(rounds: Sequence[Mapping[str, Any]], sites: Sequence[str]) -> dict[str, SiteSummary]:
    result = {}
    for site in sites:
        scores = [r["contribution"][site] for r in rounds if r.get("contribution", {}).get(site) is not None]
        epsilons = [r["epsilon"][site] for r in rounds if r.get("epsilon", {}).get(site) is not None]
        result[site] = SiteSummary(
            rounds_answered=sum(1 for r in rounds if site in (r.get("sites") or [])),
            contribution=statistics.fmean(scores) if scores else None,
            epsilon=epsilons[-1] if epsilons else None,  # the accountant reports the total so far
        )
    return result


def output_files(out_dir: Path, has_rounds: bool, logs: Path | None) -> dict[str, str]:
    """What this run leaves in out_dir (paths relative to it): the report is drawn from the rounds, the model
    only if the app saved one, and `logs` where federate keeps the processes' logs."""
    files = {"metrics": "metrics.jsonl", "report": "report.png"} if has_rounds else {}
    if (out_dir / "final_model.npz").exists():
        files["model"] = "final_model.npz"
    return {**files, "logs": f"{os.path.relpath(logs, out_dir)}/"} if logs is not None else files


def summarize(
    *,
    run_id: str,
    app_dir: Path,
    sites: Sequence[str],
    rounds: Sequence[Mapping[str, Any]],
    baseline: Mapping[str, float] | None,
    seconds: dict[str, float],
    run_status: Mapping[str, Any],
    out_dir: Path,
    strategy: str | None = None,
    dataset: str | None = None,
    protections: Sequence[str] = (),
    left_out: Sequence[str] = (),
    logs: Path | None = None,
) -> Summary:
    """Everything a person asks after a run, from the metrics lines and Flower's own run record.
    `strategy`, `dataset`, `protections`: training/'s RunConfig says them (None and none for an
    app without such keys)."""
    final = rounds[-1] if rounds else {}
    traffic = run_status.get("network-traffic", {})
    return Summary(
        run_id=run_id,
        app=str(app_dir),
        status=str(run_status.get("status", "unknown")),
        strategy=strategy,
        protections=list(protections),
        dataset=dataset,
        rounds=len(rounds),
        sites=list(sites),
        final_accuracy=final.get("accuracy"),
        final_loss=final.get("loss"),
        centralized_accuracy=float(baseline["accuracy"]) if baseline else None,
        centralized_loss=float(baseline["loss"]) if baseline else None,
        centralized_seconds=float(baseline["seconds"]) if baseline else None,
        seconds={name: round(value, 2) for name, value in seconds.items()},
        bytes_up=sum(int(r.get("bytes_up", 0)) for r in rounds),
        # Evaluation also sends the model down; it is traffic like any other.
        bytes_down=sum(int(r.get("bytes_down", 0)) + int(r.get("eval_bytes_down", 0)) for r in rounds),
        flower_traffic_bytes={key.removesuffix("-bytes"): int(value) for key, value in traffic.items()},
        per_site=per_site(rounds, sites),
        central_epsilon=final.get("central_epsilon"),
        files=output_files(out_dir, bool(rounds), logs),
        left_out=list(left_out),
    )


def write_summary(summary: Summary, path: Path) -> None:
    path.write_text(json.dumps(asdict(summary), indent=2) + "\n", encoding="utf-8")


def write_report(summary: Summary, rounds: Sequence[Mapping[str, Any]], directory: Path) -> None:
    """`directory`/summary.json, and report.png when there are rounds to draw."""
    write_summary(summary, directory / "summary.json")
    if rounds:
        plot_report(summary, rounds, directory / "report.png")


def plot_report(summary: Summary, rounds: Sequence[Mapping[str, Any]], path: Path) -> None:
    """Accuracy and loss per round against the centralized line, and each site's contribution."""
    numbers = [r["round"] for r in rounds]
    fig, (acc_ax, loss_ax, site_ax) = plt.subplots(1, 3, figsize=(15, 4.6), constrained_layout=True)
    fig.suptitle(
        f"flowerbed federation: {' + '.join([summary.strategy or Path(summary.app).name, *summary.protections])}"
        f"{f' on {summary.dataset}' if summary.dataset else ''}, "
        f"{len(summary.sites)} sites, {summary.rounds} rounds, {summary.seconds['total']:.0f} s — "
        f"final accuracy {_fmt(summary.final_accuracy)} vs centralized {_fmt(summary.centralized_accuracy)}",
        fontsize=13,
    )
    for ax, key, central, title in (
        (acc_ax, "accuracy", summary.centralized_accuracy, "Accuracy (higher is better)"),
        (loss_ax, "loss", summary.centralized_loss, "Loss (lower is better)"),
    ):
        values = [r.get(key) for r in rounds]
        ax.plot(numbers, values, marker="o", color="tab:blue", label="federated (global model)")
        if central is not None:
            ax.axhline(central, color="tab:orange", linestyle="--", label=f"centralized, pooled data ({central:.3f})")
        if values and values[-1] is not None:
            ax.annotate(f"{values[-1]:.3f}", (numbers[-1], values[-1]), textcoords="offset points",
                        xytext=(-6, 8), ha="right", color="tab:blue",
                        bbox={"boxstyle": "round,pad=0.2", "fc": "white", "ec": "none", "alpha": 0.85})
        ax.set_title(title)
        ax.set_xlabel("round")
        ax.set_xticks(numbers if len(numbers) <= 20 else numbers[:: max(1, len(numbers) // 10)])
        ax.grid(alpha=0.3)
        ax.legend(loc="lower right" if key == "accuracy" else "upper right")
    acc_ax.set_ylim(top=1.0)

    names = list(summary.per_site)
    means = [summary.per_site[n].contribution or 0.0 for n in names]
    colors = [plt.get_cmap("tab10")(i + 2) for i in range(len(names))]
    site_ax.bar(names, means, color=colors, alpha=0.75, label="mean over rounds")
    for index, name in enumerate(names):
        per_round = [r["contribution"][name] for r in rounds if r.get("contribution", {}).get(name) is not None]
        site_ax.scatter([index] * len(per_round), per_round, color="black", s=14, zorder=3,
                        label="one round" if index == 0 else None)
        info = summary.per_site[name]
        label = f"{info.rounds_answered}/{summary.rounds} rounds"
        if info.contribution is None:
            label += "\nno score\n(masked)"  # secure aggregation hides single updates
        if info.epsilon is not None:
            label += f"\nε = {info.epsilon:.2f}"
        site_ax.annotate(label, (index, 1.03), ha="center", va="bottom", fontsize=9)
    site_ax.set_ylim(min(0.0, *means) - 0.1, 1.4)
    site_ax.axhline(0, color="black", linewidth=0.8)
    site_ax.set_title("Contribution per site")
    site_ax.set_ylabel("cosine(site update, aggregate update)")
    site_ax.grid(axis="y", alpha=0.3)
    site_ax.legend(loc="upper center", ncol=2, fontsize=8)
    fig.savefig(path, dpi=110)
    plt.close(fig)
