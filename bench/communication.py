"""Bytes per round, measured on the messages, vs the analytic parameters x 4 x sites x 2.

SecAgg+ counts all four protocol stages (keys, shares, masked vectors, unmasking).
"""

from __future__ import annotations

from .options import Options
from .runs import federated
from .table import print_table, ratio

# (label, run config): the compression codecs, and SecAgg+ (masked, key exchange included).
SETUPS = (("none", {"compression": "none"}), ("int8", {"compression": "int8"}), ("topk", {"compression": "topk"}),
          ("secagg+", {"secagg": True}))


def run(options: Options) -> None:
    rows = []
    plain_up = None
    for label, overrides in SETUPS:
        result = federated(options.sites, {**options.base(), "strategy": "fedavg", **overrides})
        # float32 model down to every site and back up, per round.
        analytic = result.parameters * 4 * options.sites * 2
        up, down = result.mean("bytes_up"), result.mean("bytes_down")
        plain_up = plain_up or up
        if label == "topk":
            label = f"topk {result.run_config['compression-topk-fraction']}"
        rows.append([label, int(up), int(down), int(up + down), analytic, ratio(up + down, analytic),
                     ratio(up, plain_up), result.final_accuracy])
    print_table(
        f"Bytes per round (train messages): {options.dataset}, {options.sites} sites, {options.rounds} rounds "
        f"(analytic = parameters x 4 B x sites x 2)",
        ["update", "up", "down", "up+down", "analytic", "x analytic", "up x none", "final acc"],
        rows,
    )
