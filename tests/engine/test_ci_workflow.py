"""The GitHub Actions workflow shipped for users: it parses, and what it runs exists here."""

from __future__ import annotations

import json
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


def test_pull_requests_preview_every_stack_once_with_a_comment(workflow: dict[str, Any]) -> None:
    triggers = workflow.get("on", workflow.get(True))  # YAML 1.1 reads the bare key `on` as true
    assert "pull_request" in triggers
    preview = workflow["jobs"]["preview"]
    assert "pull_request" in preview["if"]
    [install] = pulumi_steps(workflow, "preview")
    assert "command" not in install["with"]  # the action only installs the CLI: it would preview a second time
    job_steps = [step for name, step in steps(workflow) if name == "preview"]
    commands = [line.strip() for step in job_steps for line in step.get("run", "").splitlines()]
    assert len([line for line in commands if line.startswith("pulumi preview")]) == 1
    assert not [line for line in commands if line.startswith("pulumi up")]
    [comment] = [step for step in job_steps if "gh pr comment" in step.get("run", "")]
    assert 'tools/stack diff "${{ matrix.stack }}"' in comment["run"]
    assert comment["env"]["GH_TOKEN"] == "${{ secrets.GITHUB_TOKEN }}"
    assert "cancelled()" in comment["if"]  # a failed preview's diagnostics still reach the PR
    assert preview["permissions"]["pull-requests"] == "write"
    assert "matrix.stack" in preview["concurrency"]["group"]


def test_deploy_jobs_build_only_the_program_environment(workflow: dict[str, Any]) -> None:
    for job in ("preview", "up"):
        commands = [line.strip() for name, step in steps(workflow) if name == job
                    for line in step.get("run", "").splitlines()]
        assert "make venv-program" in commands and "make venv" not in commands, job


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


def _default_stack_lists(workflow: dict[str, Any]) -> dict[str, list[str]]:
    """The stacks each list variable names when the repository does not set it (`vars.X || '[...]'`)."""
    text = WORKFLOW.read_text()
    found = {name: json.loads(default) for name, default in re.findall(r"vars\.(\w+_STACKS) \|\| '(\[.*?\])'", text)}
    assert set(found) == {"PREVIEW_STACKS", "MAIN_STACKS", "RELEASE_STACKS"}
    return found


def test_every_stack_the_workflow_names_exists_as_a_stack_file(workflow: dict[str, Any]) -> None:
    lists = _default_stack_lists(workflow)
    assert lists["RELEASE_STACKS"] == ["staging", "prod"]
    named = {stack for stacks in lists.values() for stack in stacks}
    assert [stack for stack in sorted(named) if not (REPO / f"Pulumi.{stack}.yaml").is_file()] == []


def test_secrets_are_only_what_pulumi_itself_needs(workflow: dict[str, Any]) -> None:
    """The program reads kubeconfigs from stack config (secrets there), never from the environment."""
    text = WORKFLOW.read_text()
    secrets = set(re.findall(r"secrets\.(\w+)", text)) | set(re.findall(r"secrets\[format\('(\w+)\{0\}'", text))
    assert secrets == {"PULUMI_ACCESS_TOKEN", "PULUMI_CONFIG_PASSPHRASE", "PULUMI_CONFIG_PASSPHRASE_", "GITHUB_TOKEN"}
    environments = [workflow.get("env", {})] + [job.get("env", {}) for job in workflow["jobs"].values()]
    environments += [step.get("env", {}) for _, step in steps(workflow)]
    assert not [name for env in environments for name in env if "KUBECONFIG" in name]
    assert "KUBECONFIG" not in "".join(step.get("run", "") for _, step in steps(workflow))
    for job in ("preview", "up"):
        assert "matrix.stack" in workflow["jobs"][job]["env"]["PULUMI_CONFIG_PASSPHRASE"]


def test_the_preview_job_uploads_the_json_preview(workflow: dict[str, Any]) -> None:
    preview = [step for name, step in steps(workflow) if name == "preview"]
    [json_step] = [step for step in preview if "pulumi preview" in step.get("run", "")]
    command = shlex.split(json_step["run"].splitlines()[-1])
    assert command[:2] == ["pulumi", "preview"] and "--json" in command
    saved = command[command.index(">") + 1]
    [upload] = [step for step in preview if step.get("uses", "").startswith("actions/upload-artifact@")]
    assert upload["with"]["path"] == saved == "out/${{ matrix.stack }}/preview.json"
    assert preview.index(upload) > preview.index(json_step)
