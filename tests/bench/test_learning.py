"""The learning benchmark's arithmetic: ratios, rounds to target, run-config values."""

import numpy as np
import pytest

from bench.learning import Cell, mean_std, partitions, rounds_text, rows
from bench.options import run_config_value


def test_ratio_and_rounds_to_target_per_seed():
    curves = np.array([[0.5, 0.90, 0.95], [0.5, 0.6, 0.7]])  # two seeds, three rounds
    cell = Cell(curves=curves, pooled=np.array([0.95, 0.95]))
    assert cell.ratio() == pytest.approx(((0.95 + 0.7) / 2) / 0.95)
    # target 0.97 x 0.95 = 0.9215: seed 0 reaches it in round 3, seed 1 never
    assert cell.rounds_to_target() == [3, None]
    assert rounds_text(cell.rounds_to_target()) == "3.0 (1/2)"
    assert rounds_text([None]) == "never (0/1)"


def test_each_partition_is_compared_with_its_own_pooled_training():
    # Each partition pools other rows (hold-outs stratified per site): its own pooled row, its own ratio.
    pooled = {("builtin:digits", "iid"): np.array([0.96]), ("builtin:digits", "dir(0.1)"): np.array([0.98])}
    cells = {("builtin:digits", label, "fedavg"): Cell(np.array([[0.5, 0.95]]), pooled["builtin:digits", label])
             for label in ("iid", "dir(0.1)")}
    table = rows(pooled, cells)
    assert [row[:3] for row in table] == [["digits", "iid", "pooled"], ["digits", "iid", "fedavg"],
                                          ["digits", "dir(0.1)", "pooled"], ["digits", "dir(0.1)", "fedavg"]]
    assert table[1][4] == pytest.approx(0.95 / 0.96) and table[3][4] == pytest.approx(0.95 / 0.98)


def test_mean_std_is_the_sample_standard_deviation():
    assert mean_std(np.array([0.9, 1.0])) == f"0.9500 +- {np.std([0.9, 1.0], ddof=1):.4f}"
    assert mean_std(np.array([0.9])) == "0.9000 +- 0.0000"


def test_two_class_data_gets_one_class_per_site_and_no_dirichlet_point_one():
    assert list(partitions("builtin:digits")) == ["iid", "dir(0.5)", "dir(0.1)", "#C=2"]
    assert list(partitions("builtin:breast-cancer")) == ["iid", "dir(0.5)", "#C=1"]


def test_set_reads_toml_values():
    assert run_config_value("lr=0.05") == ("lr", 0.05)
    assert run_config_value("strategy=scaffold") == ("strategy", "scaffold")
    assert run_config_value("amp=true") == ("amp", True)
    with pytest.raises(ValueError, match="expected KEY=VALUE"):
        run_config_value("lr")
