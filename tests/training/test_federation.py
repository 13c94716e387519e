"""The real ServerApp and ClientApp, federated in process (no Ray, no SuperLink).

Accuracy targets from issue 3: breast cancer on 3 non-IID sites >= 0.93 within
10 rounds with FedAvg; digits on 5 sites >= 0.90. Plus failures, stragglers,
rejoining, resuming, study-directory data and the app bundle.
"""

import io
import json
import zipfile
from pathlib import Path

import numpy as np
import pytest
from flwr.cli.build import build_fab_from_disk
from flwr.common.constant import FAB_MAX_SIZE

from flowerbed_training.common.builtin_data import builtin_options, builtin_partition
from flowerbed_training.common.data import DataError
from flowerbed_training.common.run_config import RunConfigError
from flowerbed_training.server.checkpoints import CheckpointStore
from tests.inprocess import TRAINING_APP_DIR, Site, builtin_sites, config_with, run_config_with, run_dir, run_federation
from tests.training.arrays import global_norm
from flowerbed_training.common.protocol import ARRAYS, CLIENT_CONTROL, from_record, to_record
from flowerbed_training.server.app import NoRoundAggregated
from flowerbed_training.server.round_log import read_metrics


def federate(tmp_path: Path, sites: list[Site], run_id: int = 1, **overrides) -> list[dict]:
    """Run `run_id` with artifacts-root `tmp_path`; its metrics lines."""
    run_federation(sites, run_config_with({"artifacts-root": str(tmp_path)} | overrides), run_id=run_id)
    return read_metrics(run_dir(tmp_path, run_id))


def test_breast_cancer_on_three_non_iid_sites_reaches_093_with_fedavg(tmp_path):
    config = config_with({"dataset": "builtin:breast-cancer"})
    shares = [builtin_partition("breast-cancer", i, 3, builtin_options(config)).y.mean() for i in range(3)]
    assert max(shares) - min(shares) > 0.2, "the sites should see clearly different label mixes"

    metrics = federate(tmp_path, builtin_sites(3), dataset="builtin:breast-cancer", strategy="fedavg")

    assert [m["round"] for m in metrics] == list(range(1, 11))
    assert metrics[-1]["accuracy"] >= 0.93, [m["accuracy"] for m in metrics]
    assert metrics[-1]["evaluated_on"] == "server-test-set"
    assert all(m["sites"] == ["site-0", "site-1", "site-2"] and m["aggregated"] for m in metrics)
    assert all(m["bytes_up"] > 0 and m["bytes_down"] > 0 for m in metrics)
    assert (run_dir(tmp_path) / "final_model.npz").exists()
    assert CheckpointStore(run_dir(tmp_path)).latest().round == 10
    summary = json.loads((run_dir(tmp_path) / "summary.json").read_text())  # the ServerApp's own report
    assert (summary["status"], summary["rounds"], summary["final_accuracy"]) == ("completed", 10, metrics[-1]["accuracy"])
    assert (run_dir(tmp_path) / "report.png").read_bytes()[:4] == b"\x89PNG"


def test_digits_on_five_sites_reach_090(tmp_path):
    metrics = federate(tmp_path, builtin_sites(5), dataset="builtin:digits", strategy="fedavg")
    assert metrics[-1]["accuracy"] >= 0.90, [m["accuracy"] for m in metrics]
    assert len(metrics[-1]["contribution"]) == 5


def test_a_site_crashing_mid_round_does_not_stop_the_round(tmp_path):
    sites = builtin_sites(3, crash_rounds={1: {2}})
    metrics = federate(tmp_path, sites, **{"num-server-rounds": 3, "min-train-sites": 2})
    crash_round = metrics[1]
    assert crash_round["aggregated"] is True
    assert crash_round["sites"] == ["site-0", "site-2"]
    assert "crashed (scripted)" in crash_round["failed"]["site-1"]
    assert metrics[2]["sites"] == ["site-0", "site-1", "site-2"]  # the crashed site is back next round


def test_a_straggler_is_left_out_and_rejoins(tmp_path):
    sites = builtin_sites(3, silent_rounds={2: {2, 3}})
    metrics = federate(tmp_path, sites, **{"num-server-rounds": 4})
    assert [m["sites"] for m in metrics] == [
        ["site-0", "site-1", "site-2"], ["site-0", "site-1"], ["site-0", "site-1"], ["site-0", "site-1", "site-2"],
    ]
    assert all(m["aggregated"] for m in metrics)
    assert "train@2" not in sites[2].handled and "train@4" in sites[2].handled


def test_too_few_answers_keep_the_previous_model(tmp_path):
    sites = builtin_sites(3, silent_rounds={0: {2}, 1: {2}})
    metrics = federate(tmp_path, sites, **{"num-server-rounds": 2, "min-train-sites": 2})
    assert metrics[1]["aggregated"] is False and metrics[1]["sites"] == ["site-2"]
    assert metrics[1]["accuracy"] == metrics[0]["accuracy"]  # same model evaluated again


def test_a_run_in_which_no_round_aggregates_fails_and_saves_no_model(tmp_path):
    sites = builtin_sites(3, silent_rounds={0: {1, 2}, 1: {1, 2}})  # only site-2 answers; 2 are needed
    with pytest.raises(NoRoundAggregated, match="none of rounds 1-2 had min-train-sites = 2 answers in time"):
        federate(tmp_path, sites, **{"num-server-rounds": 2, "min-train-sites": 2})
    assert [m["aggregated"] for m in read_metrics(run_dir(tmp_path))] == [False, False]
    assert not (run_dir(tmp_path) / "final_model.npz").exists()
    assert json.loads((run_dir(tmp_path) / "summary.json").read_text())["status"] == "failed: no round aggregated"


def test_resume_continues_the_named_run_in_a_directory_of_its_own(tmp_path):
    first = federate(tmp_path, builtin_sites(3), run_id=11, **{"num-server-rounds": 2, "strategy": "scaffold"})
    after_two = CheckpointStore(run_dir(tmp_path, 11)).latest()
    assert after_two.round == 2 and set(after_two.strategy_state) == {f"control/{k}" for k in after_two.model}
    other = federate(tmp_path, builtin_sites(3), run_id=12, **{"num-server-rounds": 1})  # another run, side by side

    metrics = federate(tmp_path, builtin_sites(3), run_id=13,
                       **{"num-server-rounds": 4, "strategy": "scaffold", "resume": "11"})
    assert [m["round"] for m in metrics] == [1, 2, 3, 4]
    assert metrics[:2] == first
    # Resuming from round 2's model, not from scratch: round 3 starts where round 2 ended.
    assert metrics[2]["accuracy"] >= metrics[1]["accuracy"] - 0.05
    # The runs it read from and ran beside are untouched.
    assert read_metrics(run_dir(tmp_path, 11)) == first and read_metrics(run_dir(tmp_path, 12)) == other
    assert CheckpointStore(run_dir(tmp_path, 11)).latest().round == 2

    again = federate(tmp_path, builtin_sites(3), run_id=14, **{"num-server-rounds": 4, "resume": "latest"})
    assert again == metrics  # run 13 is the latest: nothing left to do, nothing appended
    assert not (run_dir(tmp_path, 14) / "final_model.npz").exists()


def test_resuming_a_run_without_a_checkpoint_names_the_runs_that_have_one(tmp_path):
    federate(tmp_path, builtin_sites(2), run_id=21, **{"num-server-rounds": 1})
    with pytest.raises(RunConfigError, match=r"run config resume: run 99 has no checkpoint under .*/99; "
                                             r"runs with one: 21"):
        federate(tmp_path, builtin_sites(2), run_id=22, **{"num-server-rounds": 2, "resume": "99"})


@pytest.mark.parametrize("strategy", ["scaffold", "fedprox"])
def test_drift_correcting_strategies_learn(tmp_path, strategy):
    sites = builtin_sites(3)
    metrics = federate(tmp_path, sites, strategy=strategy, **{"num-server-rounds": 6})
    assert metrics[-1]["accuracy"] >= 0.9
    if strategy == "scaffold":  # each site keeps its own control variate between rounds
        assert all(CLIENT_CONTROL in site.state.array_records for site in sites)


def test_local_max_grad_norm_bounds_every_sites_scaffold_control_variate(tmp_path):
    """The ClientApp clips its steps (run config `local-max-grad-norm`), so each c_i, the mean
    of a site's clipped gradients, stays within the bound; unclipped, this run's exceed it."""
    norms = {}
    for run_id, bound in ((1, 0.0), (2, 0.05)):
        sites = builtin_sites(3)
        federate(tmp_path, sites, run_id=run_id, strategy="scaffold",
                 **{"num-server-rounds": 2, "local-max-grad-norm": bound})
        norms[bound] = [global_norm(from_record(site.state.array_records[CLIENT_CONTROL])) for site in sites]
    assert max(norms[0.0]) > 0.05, norms
    assert max(norms[0.05]) <= 0.05 * (1 + 1e-4), norms


def write_study(root: Path, site: str, x: np.ndarray, y: np.ndarray) -> None:
    directory = root / site / "oncology" / "biopsies"
    directory.mkdir(parents=True)
    header = ",".join([f"f{i}" for i in range(x.shape[1])] + ["diagnosis"])
    rows = [",".join(map(str, [*row, label])) for row, label in zip(x, y)]
    (directory / "biopsies.csv").write_text(header + "\n" + "\n".join(rows) + "\n")


def study_sites(root: Path, feature_counts: list[int]) -> list[Site]:
    from sklearn.datasets import load_breast_cancer

    data = load_breast_cancer()
    halves = np.array_split(np.random.default_rng(0).permutation(len(data.target)), len(feature_counts))
    for i, (rows, features) in enumerate(zip(halves, feature_counts)):
        write_study(root, f"hospital-{i}", data.data[rows, :features], data.target[rows])
    return [Site(node_id=201 + i, node_config={"site-name": f"hospital-{i}", "data-root": str(root / f"hospital-{i}")})
            for i in range(len(feature_counts))]


def test_sites_train_on_their_own_csv_study_data(tmp_path):
    sites = study_sites(tmp_path / "data", [30, 30])
    metrics = federate(tmp_path / "artifacts", sites, dataset="oncology/biopsies", **{"label-column": "diagnosis"})
    assert metrics[-1]["evaluated_on"] == "sites"  # no global test set: the data never leaves the sites
    assert metrics[-1]["accuracy"] >= 0.9


def test_sites_with_different_feature_counts_stop_the_run_before_training(tmp_path):
    sites = study_sites(tmp_path / "data", [30, 29])
    with pytest.raises(DataError, match="sites disagree on the feature count: hospital-0=30, hospital-1=29"):
        federate(tmp_path / "artifacts", sites, dataset="oncology/biopsies", **{"label-column": "diagnosis"})
    assert read_metrics(run_dir(tmp_path / "artifacts")) == []


# flwr 1.42's FAB builder uses a pathspec pattern class that pathspec deprecates; not ours to fix.
@pytest.mark.filterwarnings("ignore:GitWildMatchPattern:DeprecationWarning")
def test_the_app_bundle_carries_only_training_code():
    fab = build_fab_from_disk(TRAINING_APP_DIR)
    assert len(fab) < FAB_MAX_SIZE
    names = zipfile.ZipFile(io.BytesIO(fab)).namelist()
    assert "pyproject.toml" in names and "README.md" in names
    code = [n for n in names if n not in ("pyproject.toml", "README.md", ".info/CONTENT")]
    assert code and all(n.startswith("flowerbed_training/") and n.endswith(".py") for n in code), code
    assert "flowerbed_training/client/app.py" in names and "flowerbed_training/server/app.py" in names


def test_a_site_without_its_data_is_reported_and_the_others_train(tmp_path):
    sites = study_sites(tmp_path / "data", [30, 30]) + [
        Site(node_id=299, node_config={"site-name": "hospital-x", "data-root": str(tmp_path / "unmounted")})]
    metrics = federate(tmp_path / "artifacts", sites, dataset="oncology/biopsies",
                       **{"label-column": "diagnosis", "num-server-rounds": 2})
    assert all(m["sites"] == ["hospital-0", "hospital-1"] and m["aggregated"] for m in metrics)
    assert "unmounted/oncology/biopsies does not exist" in metrics[0]["failed"]["node-299"]


def poisoned(reply):
    """A Byzantine site: sends its model scaled by -10 (a boosted sign-flip attack)."""
    model = from_record(reply.content.array_records[ARRAYS])
    reply.content[ARRAYS] = to_record({k: -10.0 * v for k, v in model.items()})
    return reply


@pytest.mark.parametrize(("strategy", "learns"), [("fedavg", False), ("fedmedian", True), ("krum", True)])
def test_robust_aggregators_survive_a_poisoning_site_that_breaks_fedavg(tmp_path, strategy, learns):
    sites = builtin_sites(5)
    sites[4].tamper = poisoned
    metrics = federate(tmp_path, sites, strategy=strategy, partitioning="iid",
                       **{"num-server-rounds": 5, "min-train-sites": 5, "min-available-sites": 5,
                          "krum-malicious": 1})
    assert (metrics[-1]["accuracy"] >= 0.9) is learns, [m["accuracy"] for m in metrics]
    if learns:  # the contribution score singles the saboteur out
        scores = metrics[-1]["contribution"]
        assert scores["site-4"] < 0 < min(v for k, v in scores.items() if k != "site-4")
