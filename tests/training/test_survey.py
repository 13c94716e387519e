"""The survey: one query per site, and the run stops before training when the sites cannot train."""

import pytest

from flowerbed_training.client.app import app as client_app
from flowerbed_training.common.data import DataError
from flowerbed_training.server.survey import FederationNotReady, survey_sites
from tests.inprocess import InProcessGrid, Site, builtin_sites, config_with, run_config_with
from tests.training.test_federation import study_sites

STUDY = {"dataset": "oncology/biopsies", "label-column": "diagnosis"}


def survey(sites: list[Site], **overrides: object):
    grid = InProcessGrid(client_app, sites, run_config_with(overrides))
    return survey_sites(grid, config_with(overrides))


def test_study_data_is_surveyed_with_one_query_per_site(tmp_path, server_identity):
    sites = study_sites(tmp_path, [30, 30])
    federation = survey(sites, **STUDY)
    assert all(site.handled == ["query.data_summary@0"] for site in sites)
    assert federation.partition_sites is None and sorted(federation.examples) == ["hospital-0", "hospital-1"]
    assert federation.spec.num_features == 30


def test_too_few_study_sites_answering_stops_the_run_naming_who_failed_and_why(tmp_path, server_identity):
    sites = study_sites(tmp_path, [30]) + [
        Site(node_id=299, node_config={"site-name": "hospital-x", "data-root": str(tmp_path / "unmounted")})]
    with pytest.raises(FederationNotReady, match=r"1 of 2 sites answered query.data_summary within 600s, "
                                                 r"min-available-sites is 2 \(node-299: DataError: data directory "
                                                 r".*unmounted/oncology/biopsies does not exist"):
        survey(sites, **STUDY)


def test_too_few_builtin_sites_answering_stops_the_run(server_identity):
    sites = builtin_sites(3, silent_rounds={1: {0}, 2: {0}})  # two sites miss the survey
    with pytest.raises(FederationNotReady, match="1 of 3 sites answered query.site_name within 600s, "
                                                 "min-available-sites is 2"):
        survey(sites)


def test_a_share_below_the_minimum_examples_stops_the_run_before_training(server_identity):
    sites = builtin_sites(3)
    with pytest.raises(DataError, match="dirichlet-alpha: 0.001 leaves a site with fewer than 10 examples"):
        survey(sites, **{"dirichlet-alpha": 0.001})
    assert all(site.handled == ["query.site_name@0"] for site in sites)
