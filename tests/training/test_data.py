"""Site data: CSV and NPZ study directories, built-in sources, partitioning, errors."""

from pathlib import Path

import numpy as np
import pytest

from flowerbed_training.client.node_config import NodeConfig
from flowerbed_training.client.site_data import study_dataset
from flowerbed_training.common.builtin_data import (
    BuiltinOptions,
    builtin_partition,
    builtin_share,
    builtin_split,
    partition_indices,
)
from flowerbed_training.common.data import DataError, DataSpec, load_directory
from flowerbed_training.common.data_config import check_compatible
from flowerbed_training.common.partitions import Partition
from flowerbed_training.common.run_config import RunConfigError
from tests.inprocess import config_with


def write_csv(path: Path, header: list[str], rows: list[list[float]]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join([",".join(header)] + [",".join(str(v) for v in row) for row in rows]) + "\n")


def test_csv_reads_features_and_the_named_label_column(tmp_path):
    write_csv(tmp_path / "part-1.csv", ["age", "outcome", "bmi"], [[50, 1, 22.5], [61, 0, 30.1]])
    write_csv(tmp_path / "part-2.csv", ["age", "outcome", "bmi"], [[45, 2, 19.0]])
    data = load_directory(tmp_path, "outcome")
    np.testing.assert_allclose(data.x, [[50, 22.5], [61, 30.1], [45, 19.0]])
    assert data.x.dtype == np.float32 and data.y.dtype == np.int64
    assert data.y.tolist() == [1, 0, 2]
    assert data.spec == DataSpec(num_features=2, num_classes=3, image_shape=None)


def test_npz_images_keep_their_shape_for_the_cnn(tmp_path):
    x = np.arange(5 * 8 * 8, dtype=np.float64).reshape(5, 8, 8)
    np.savez(tmp_path / "scans.npz", x=x, y=np.array([0, 1, 1, 0, 3]))
    data = load_directory(tmp_path, "unused")
    assert data.x.shape == (5, 64)
    assert data.spec == DataSpec(num_features=64, num_classes=4, image_shape=(1, 8, 8))
    np.testing.assert_array_equal(data.x[1], x[1].ravel())


def test_npz_tabular_is_flat(tmp_path):
    np.savez(tmp_path / "t.npz", x=np.ones((3, 7)), y=np.array([0, 1, 0]))
    assert load_directory(tmp_path, "label").spec == DataSpec(7, 2, None)


def test_missing_directory_says_which_and_why(tmp_path):
    with pytest.raises(DataError, match=r"data directory .*/nope does not exist \(is the study volume mounted\?\)"):
        load_directory(tmp_path / "nope", "label")


def test_missing_label_column_names_the_column_and_the_columns_present(tmp_path):
    write_csv(tmp_path / "a.csv", ["age", "bmi"], [[1, 2]])
    with pytest.raises(DataError, match=r"label column 'outcome' \(run config label-column\) not found; columns are age, bmi"):
        load_directory(tmp_path, "outcome")


def test_non_numeric_csv_values_are_refused(tmp_path):
    (tmp_path / "a.csv").write_text("age,label\nold,1\n")
    with pytest.raises(DataError, match="every value must be numeric"):
        load_directory(tmp_path, "label")


def test_npz_without_y_is_refused(tmp_path):
    np.savez(tmp_path / "a.npz", x=np.ones((2, 3)))
    with pytest.raises(DataError, match=r"arrays \['y'\] missing"):
        load_directory(tmp_path, "label")


def test_empty_directory_and_mixed_formats_are_refused(tmp_path):
    with pytest.raises(DataError, match="no .csv or .npz files"):
        load_directory(tmp_path, "label")
    write_csv(tmp_path / "a.csv", ["f", "label"], [[1, 0]])
    np.savez(tmp_path / "b.npz", x=np.ones((1, 1)), y=np.zeros(1))
    with pytest.raises(DataError, match="mixes .csv and .npz"):
        load_directory(tmp_path, "label")


def test_files_of_one_site_must_agree_on_features(tmp_path):
    write_csv(tmp_path / "a.csv", ["f1", "label"], [[1, 0]])
    write_csv(tmp_path / "b.csv", ["f1", "f2", "label"], [[1, 2, 0]])
    with pytest.raises(DataError, match=r"different feature counts: \[1, 2\]"):
        load_directory(tmp_path, "label")


def test_a_site_whose_features_differ_from_the_federation_fails_clearly():
    expected = {"num-features": 30, "num-classes": 2}
    check_compatible("hospital-a", DataSpec(30, 2), expected)
    with pytest.raises(DataError, match="site hospital-b: data has 29 features but the federation's model expects 30"):
        check_compatible("hospital-b", DataSpec(29, 2), expected)
    with pytest.raises(DataError, match="site lab-c: data has label 4"):
        check_compatible("lab-c", DataSpec(30, 5), expected)


def test_study_dataset_is_read_under_the_sites_data_root(tmp_path):
    write_csv(tmp_path / "cardio" / "visits" / "v.csv", ["hr", "label"], [[60, 0], [90, 1]])
    data = study_dataset(config_with({"dataset": "cardio/visits"}), NodeConfig.parse({"data-root": str(tmp_path)}))
    assert data.y.tolist() == [0, 1]


@pytest.mark.parametrize("dataset", ["cardio", "/etc/passwd", "../x/y", "a/b/c", "builtin:mnist"])
def test_dataset_names_outside_the_contract_are_refused(dataset):
    with pytest.raises(RunConfigError, match="run config dataset: .* must be builtin:breast-cancer or "
                                             "builtin:digits or <study>/<dataset>"):
        config_with({"dataset": dataset})


def test_builtin_data_needs_the_servers_partition():
    with pytest.raises(DataError, match="'builtin:digits': the server assigned this site no partition"):
        builtin_share(config_with({"dataset": "builtin:digits"}), None)


def test_study_data_has_no_builtin_share():
    with pytest.raises(DataError, match="dataset 'cardio/visits': not a builtin: source"):
        builtin_share(config_with({"dataset": "cardio/visits"}), Partition(0, 2))


# --- partitioning ----------------------------------------------------------------------------


def label_shares(labels: np.ndarray, parts: list[np.ndarray], num_classes: int) -> np.ndarray:
    return np.array([np.bincount(labels[p], minlength=num_classes) / len(p) for p in parts])


def test_partitions_are_disjoint_cover_the_pool_and_are_deterministic():
    labels = np.repeat(np.arange(4), 50)
    for partitioning in ("iid", "dirichlet", "labels"):
        parts = partition_indices(labels, 5, partitioning, alpha=0.5, seed=7)
        joined = np.concatenate(parts)
        assert sorted(joined.tolist()) == list(range(200))
        again = partition_indices(labels, 5, partitioning, alpha=0.5, seed=7)
        assert all(np.array_equal(a, b) for a, b in zip(parts, again))
        other_seed = partition_indices(labels, 5, partitioning, alpha=0.5, seed=8)
        assert not all(np.array_equal(a, b) for a, b in zip(parts, other_seed))


def test_small_dirichlet_alpha_skews_labels_far_more_than_iid():
    labels = np.repeat(np.arange(10), 100)
    overall = np.full(10, 0.1)

    def skew(partitioning: str, alpha: float) -> float:
        parts = partition_indices(labels, 5, partitioning, alpha=alpha, seed=0)
        return float(np.abs(label_shares(labels, parts, 10) - overall).sum(axis=1).mean())

    assert skew("iid", 1.0) < 0.15
    assert skew("dirichlet", 0.1) > 0.9  # most sites dominated by a few classes
    assert skew("dirichlet", 0.1) > skew("dirichlet", 10.0) > skew("iid", 1.0)


def test_labels_partitioning_gives_each_site_its_own_class_and_others_drawn_at_random():
    # NIID-Bench's #C=2: site i holds class i mod K plus one more; a class is split evenly
    # among the sites holding it.
    labels = np.repeat(np.arange(4), 60)
    parts = partition_indices(labels, 6, "labels", alpha=0.5, seed=1, labels_per_site=2)
    held = [set(np.unique(labels[p]).tolist()) for p in parts]
    assert all(len(classes) == 2 and site % 4 in classes for site, classes in enumerate(held))
    for label in range(4):
        sizes = [int((labels[p] == label).sum()) for p, classes in zip(parts, held) if label in classes]
        assert sum(sizes) == 60 and max(sizes) - min(sizes) <= 1


def test_every_dirichlet_site_gets_enough_examples():
    labels = np.repeat(np.arange(2), 60)
    parts = partition_indices(labels, 4, "dirichlet", alpha=0.1, seed=3)
    assert min(len(p) for p in parts) >= 10


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"partitioning": "random"}, "partitioning: 'random' is not one of iid, dirichlet, labels"),
        ({"alpha": 0.0}, "dirichlet-alpha: 0.0 must be > 0"),
        ({"partitioning": "labels", "labels_per_site": 3}, r"labels-per-site: 3 must be in \[1, 2\]"),
        ({"num_partitions": 0}, "num-partitions: 0 must be >= 1"),
        ({"num_partitions": 50}, "num-partitions: 50 sites need at least 500 examples"),
    ],
)
def test_bad_partitioning_settings_name_the_key(kwargs, message):
    args = {"num_partitions": 3, "partitioning": "dirichlet", "alpha": 0.5, "seed": 0} | kwargs
    with pytest.raises(DataError, match=message):
        partition_indices(np.repeat(np.arange(2), 50), **args)


def test_builtin_sites_share_the_pool_and_never_see_the_global_test_set():
    options = BuiltinOptions(partitioning="dirichlet", alpha=0.5, test_fraction=0.2, seed=1)
    split = builtin_split("breast-cancer", options)
    sites = [builtin_partition("breast-cancer", i, 3, options) for i in range(3)]
    assert sum(len(s.y) for s in sites) == len(split.train.y)
    test_rows = {row.tobytes() for row in split.test.x}
    assert not any(row.tobytes() in test_rows for site in sites for row in site.x)
    assert len(split.test.y) == pytest.approx(0.2 * 569, abs=2)
    with pytest.raises(DataError, match=r"partition-id: 3 must be in \[0, 3\)"):
        builtin_partition("breast-cancer", 3, 3, options)


def test_digits_are_8x8_images():
    split = builtin_split("digits", BuiltinOptions())
    assert split.train.spec == DataSpec(num_features=64, num_classes=10, image_shape=(1, 8, 8))
