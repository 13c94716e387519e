"""Built-in data's partitions: assigned by the server at the survey, by sorted site name.

Node config no longer says which share a site holds, so adding a site changes no
other site's deployment; the ServerApp decides per run.
"""

import pytest

from flowerbed_training.client_app import app as client_app
from flowerbed_training.data import DataError, builtin_partition
from flowerbed_training.run_config import RunConfig
from tests.inprocess import InProcessGrid, Site, builtin_sites, run_config_with, run_dir, run_federation
from flowerbed_training.partitions import PARTITION_SITES, Partition, assign, partition_of
from flowerbed_training.round_log import read_metrics
from flowerbed_training.survey import survey_sites
from flowerbed_training.task import builtin_options, local_split


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


def test_the_survey_gives_each_site_the_partition_of_its_sorted_name(server_identity):
    # Node order (and the order sites connect in) is not name order: only the names decide.
    names = ["lab-c", "hospital-a", "hospital-b"]
    sites = [Site(node_id=301 + i, node_config={"site-name": name, "data-root": "/nonexistent"})
             for i, name in enumerate(names)]
    run_config = run_config_with({"dataset": "builtin:breast-cancer"})
    grid = InProcessGrid(client_app, sites, run_config)

    federation = survey_sites(grid, min_sites=3, timeout=5.0, assign_partitions=True)

    assert federation.partition_sites == sorted(names)
    assert federation.config()[PARTITION_SITES] == sorted(names)
    config = RunConfig.parse(run_config)
    options = builtin_options(config)
    expected = {name: len(local_split(builtin_partition("breast-cancer", i, 3, options), config)[0].y)
                for i, name in enumerate(sorted(names))}
    assert len(set(expected.values())) == 3, "non-IID shares differ in size, so the counts identify them"
    assert federation.examples == expected
    # Each site is asked its name, then (with its partition) to describe its share.
    assert all(site.handled == ["query.site_name@0", "query.data_summary@0"] for site in sites)


def test_a_site_joining_after_the_survey_is_left_out_with_its_name_in_the_error(tmp_path):
    sites = builtin_sites(3, silent_rounds={2: {0}})  # site-2 misses the survey (round 0), then answers
    run_federation(sites, run_config_with({"artifacts-root": str(tmp_path), "num-server-rounds": 2}))
    metrics = read_metrics(run_dir(tmp_path))
    assert all(m["sites"] == ["site-0", "site-1"] and m["aggregated"] for m in metrics)
    reasons = [reason for m in metrics for reason in m["failed"].values()]
    assert len(reasons) == 2
    assert all("site site-2: not in this run's partition-sites (site-0, site-1)" in r for r in reasons)
    assert metrics[-1]["accuracy"] > 0.8
