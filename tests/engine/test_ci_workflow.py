"""The GitHub Actions workflow shipped for users: it parses, and what it runs exists here."""

from __future__ import annotations

import re
import shlex
from importlib import metadata
from pathlib import Path
from typing import Any

import pytest
import yaml

from tools.engine.offline import REPO

pytestmark = pytest.mark.engine

WORKFLOW = REPO / ".github" / "workflows" / "pulumi.yml"


@pytest.fixture(scope="module")
def workflow() -> dict[str, Any]:
    return yaml.safe_load(WORKFLOW.read_text())


def make_targets(makefile: Path) -> set[str]:
    return set(re.findall(r"^([A-Za-z][\w-]*):", makefile.read_text(), re.MULTILINE))


def steps(workflow: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    return [(job, step) for job, spec in workflow["jobs"].items() for step in spec["steps"]]


def pulumi_steps(workflow: dict[str, Any], job: str) -> list[dict[str, Any]]:
    return [step for name, step in steps(workflow) if name == job and step.get("uses", "").startswith("pulumi/actions@")]


def test_every_make_target_it_runs_exists(workflow: dict[str, Any]) -> None:
    targets = make_targets(REPO / "Makefile")
    called = [shlex.split(line)[1] for _, step in steps(workflow) for line in step.get("run", "").splitlines()
              if line.strip().startswith("make ")]
    assert called
    assert [target for target in called if target not in targets] == []


def test_pull_requests_preview_every_stack_with_a_comment(workflow: dict[str, Any]) -> None:
    triggers = workflow.get("on", workflow.get(True))  # YAML 1.1 reads the bare key `on` as true
    assert "pull_request" in triggers
    preview = workflow["jobs"]["preview"]
    assert "pull_request" in preview["if"]
    [step] = pulumi_steps(workflow, "preview")
    assert step["with"]["command"] == "preview"
    assert step["with"]["comment-on-pr"] is True
    assert "matrix.stack" in step["with"]["stack-name"]
    assert preview["permissions"]["pull-requests"] == "write"
    assert "matrix.stack" in preview["concurrency"]["group"]


def test_main_and_tags_run_up_one_stack_at_a_time(workflow: dict[str, Any]) -> None:
    triggers = workflow.get("on", workflow.get(True))
    assert triggers["push"]["branches"] == ["main"]
    assert triggers["push"]["tags"]
    up = workflow["jobs"]["up"]
    [step] = pulumi_steps(workflow, "up")
    assert step["with"]["command"] == "up"
    assert "matrix.stack" in up["concurrency"]["group"]
    assert up["concurrency"]["cancel-in-progress"] is False  # never abandon an update halfway
    assert up["environment"] == "${{ matrix.stack }}"


def test_cli_version_matches_the_pinned_python_sdk(workflow: dict[str, Any]) -> None:
    assert workflow["env"]["PULUMI_VERSION"] == metadata.version("pulumi")
    for job in ("preview", "up"):
        [step] = pulumi_steps(workflow, job)
        assert step["with"]["pulumi-version"] == "${{ env.PULUMI_VERSION }}"
