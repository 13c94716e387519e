"""Built-in data's partitions: assigned by the server at the survey, by sorted site name.

Node config no longer says which share a site holds, so adding a site changes no
other site's deployment; the ServerApp decides per run.
"""

import numpy as np
import pytest

from flowerbed_training.client.app import app as client_app
from flowerbed_training.client.site_data import local_split
from flowerbed_training.common.builtin_data import builtin_options, builtin_partition
from flowerbed_training.common.data import DataError, DataSpec
from flowerbed_training.common.partitions import Partition, assign, partition_of
from flowerbed_training.common.protocol import PARTITION_SITES
from flowerbed_training.common.run_config import RunConfig
from flowerbed_training.common.standardization import FeatureSums, Standardizer
from flowerbed_training.server.round_log import read_metrics
from flowerbed_training.server.survey import survey_sites
from tests.inprocess import InProcessGrid, Site, builtin_sites, run_config_with, run_dir, run_federation


def test_site_i_of_the_sorted_names_holds_partition_i():
    names = assign(["lab-c", "hospital-b", "hospital-a"])
    assert names == ["hospital-a", "hospital-b", "lab-c"]
    config = {PARTITION_SITES: names}
    assert [partition_of(site, config) for site in ("hospital-a", "hospital-b", "lab-c")] == [
        Partition(0, 3), Partition(1, 3), Partition(2, 3)]


def test_no_assignment_means_study_data():
    assert partition_of("hospital-a", {"num-features": 30}) is None


def test_a_site_missing_from_the_assignment_gets_an_error_naming_itself():
    with pytest.raises(DataError, match=r"site lab-d: not in this run's partition-sites \(hospital-a, lab-c\); "
                                        "it joined after the survey"):
        partition_of("lab-d", {PARTITION_SITES: ["hospital-a", "lab-c"]})


def test_two_sites_with_one_name_cannot_share_out_the_data():
    with pytest.raises(DataError, match="site-name: hospital-a is used by more than one site"):
        assign(["hospital-a", "lab-c", "hospital-a"])


def test_the_survey_asks_each_site_its_name_once_and_describes_the_shares_as_the_sites_would(server_identity):
    # Node order (and the order sites connect in) is not name order: only the names decide.
    names = ["lab-c", "hospital-a", "hospital-b"]
    sites = [Site(node_id=301 + i, node_config={"site-name": name, "data-root": "/nonexistent"})
             for i, name in enumerate(names)]
    run_config = run_config_with({"dataset": "builtin:breast-cancer"})
    grid = InProcessGrid(client_app, sites, run_config)
    config = RunConfig.parse(run_config)

    federation = survey_sites(grid, config)

    assert federation.partition_sites == sorted(names)
    assert federation.config()[PARTITION_SITES] == sorted(names)
    assert federation.names == {301 + i: name for i, name in enumerate(names)}
    # What each site computed from its own share before, when the survey asked it for its data.
    options = builtin_options(config)
    own = {name: local_split(builtin_partition("breast-cancer", i, 3, options), config)[0]
           for i, name in enumerate(sorted(names))}
    assert len({len(share.y) for share in own.values()}) == 3, "non-IID shares differ in size: the counts identify them"
    assert federation.examples == {name: len(share.y) for name, share in own.items()}
    pooled = FeatureSums(0, np.zeros(30), np.zeros(30))
    for share in own.values():
        pooled = pooled + FeatureSums.of(share.x)
    expected = Standardizer.from_sums(pooled)
    np.testing.assert_array_equal(federation.standardizer.mean, expected.mean)
    np.testing.assert_array_equal(federation.standardizer.std, expected.std)
    assert federation.spec == DataSpec(num_features=30, num_classes=2, image_shape=None)
    # One query per site, for its name only: the sites load no data for the survey.
    assert all(site.handled == ["query.site_name@0"] for site in sites)


def test_a_site_joining_after_the_survey_is_left_out_with_its_name_in_the_error(tmp_path):
    sites = builtin_sites(3, silent_rounds={2: {0}})  # site-2 misses the survey (round 0), then answers
    run_federation(sites, run_config_with({"artifacts-root": str(tmp_path), "num-server-rounds": 2}))
    metrics = read_metrics(run_dir(tmp_path))
    assert all(m["sites"] == ["site-0", "site-1"] and m["aggregated"] for m in metrics)
    reasons = [reason for m in metrics for reason in m["failed"].values()]
    assert len(reasons) == 2
    assert all("site site-2: not in this run's partition-sites (site-0, site-1)" in r for r in reasons)
    assert metrics[-1]["accuracy"] > 0.8
