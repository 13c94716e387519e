"""Throwaway copies of the Pulumi project for the engine tests, and reading `pulumi preview --json`.

Each copy has its own file backend (.pulumi/state inside the copy) and its own
Pulumi.<stack>.yaml (dev: render mode; local: the live control planes of tests/live), so a test can change config or state without touching the
repository; the CLI and plugins come from the repository's .toolchain/bin.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from tools.engine.offline import REPO, Pulumi, copy_program
from tools.engine.stack import parse_urn

STACK = "dev"


def copy_project(target: Path, stack: str = STACK) -> Path:
    return copy_program(target, [REPO / f"Pulumi.{stack}.yaml"])


@dataclass(frozen=True)
class Step:
    op: str
    type: str
    name: str
    raw: dict[str, Any]


@dataclass
class StackCopy:
    """One project copy with a selected stack."""

    root: Path
    pulumi: Pulumi

    @classmethod
    def create(cls, root: Path, stack: str = STACK) -> StackCopy:
        copy = cls(copy_project(root, stack), Pulumi(root, stack))
        copy.pulumi.select_or_init()
        return copy

    @property
    def stack_file(self) -> Path:
        return self.root / f"Pulumi.{self.pulumi.stack}.yaml"

    @property
    def render_root(self) -> Path:
        return self.root / "out" / self.pulumi.stack

    def up(self) -> None:
        result = self.pulumi.run(["up", "--yes", "--skip-preview"], capture=True, check=False)
        assert result.returncode == 0, result.stdout + result.stderr

    def preview_steps(self) -> list[Step]:
        """The changes `pulumi preview --json` plans (unchanged resources left out)."""
        result = self.pulumi.run(["preview", "--json"], capture=True, check=False)
        assert result.returncode == 0, result.stdout + result.stderr
        steps = []
        for raw in json.loads(result.stdout).get("steps", []):
            if raw["op"] == "same":
                continue
            kind, name = parse_urn(raw["urn"])
            steps.append(Step(raw["op"], kind, name, raw))
        return steps

    def resource_outputs(self, type_suffix: str) -> dict[str, dict[str, Any]]:
        """Outputs of every resource of one type in the stack's state, by resource name (secrets stay encrypted)."""
        result = self.pulumi.run(["stack", "export"], capture=True)
        resources = json.loads(result.stdout)["deployment"].get("resources", [])
        return {parse_urn(r["urn"])[1]: r.get("outputs", {}) for r in resources if r["type"].endswith(type_suffix)}

    def read_config(self) -> dict[str, Any]:
        return yaml.safe_load(self.stack_file.read_text())

    def change_config(self, change) -> None:
        """Applies `change(config_dict)` to the stack file."""
        document = self.read_config()
        change(document["config"])
        self.stack_file.write_text(yaml.safe_dump(document, sort_keys=False))

    @contextmanager
    def config_changed(self, change) -> Iterator[None]:
        """Applies `change(config_dict)` to the stack file for the duration of the block."""
        original = self.stack_file.read_text()
        self.change_config(change)
        try:
            yield
        finally:
            self.stack_file.write_text(original)


def site(config: dict[str, Any], name: str) -> dict[str, Any]:
    return next(s for s in config["flowerbed:sites"] if s["name"] == name)
