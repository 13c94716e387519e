"""The consortium example (tools/engine/consortium.py, `make consortium`), run once per module, and what its
stacks rendered: three project copies with three file backends, real `pulumi up`s, render mode."""

from __future__ import annotations

import base64
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tools.engine.consortium import Consortium, Party, run
from tools.engine.offline import ToolchainMissing, check_toolchain
from tools.engine.stack import rendered_manifests


@dataclass(frozen=True)
class Rendered:
    """The objects a party's `up` wrote (render mode writes Secrets with their data in plain text)."""

    docs: list[dict[str, Any]]

    def one(self, kind: str, name: str, namespace: str) -> dict[str, Any]:
        found = [d for d in self.docs if d["kind"] == kind and d["metadata"]["name"] == name
                 and d["metadata"].get("namespace") == namespace]
        assert len(found) == 1, f"expected one {kind} {namespace}/{name}, found {len(found)}"
        return found[0]

    def data(self, kind: str, name: str, namespace: str) -> Mapping[str, str]:
        doc = self.one(kind, name, namespace)
        if "stringData" in doc:
            return doc["stringData"]
        encoded = kind == "Secret"
        return {k: base64.b64decode(v).decode() if encoded else v for k, v in (doc.get("data") or {}).items()}

    def container(self, deployment: str, namespace: str, container: str) -> dict[str, Any]:
        spec = self.one("Deployment", deployment, namespace)["spec"]["template"]["spec"]
        return next(c for c in spec["containers"] if c["name"] == container)

    def job_container(self, namespace: str) -> dict[str, Any]:
        jobs = [d for d in self.docs if d["kind"] == "Job" and d["metadata"].get("namespace") == namespace]
        assert len(jobs) == 1, [j["metadata"]["name"] for j in jobs]
        return jobs[0]["spec"]["template"]["spec"]["containers"][0]


def rendered(party: Party) -> Rendered:
    return Rendered([doc for _, doc in rendered_manifests(party.out)])


@pytest.fixture(scope="module")
def example(tmp_path_factory: pytest.TempPathFactory) -> Consortium:
    """`make consortium` in a throwaway directory; fails (never skips) without `make toolchain`."""
    try:
        check_toolchain()
    except ToolchainMissing as err:
        pytest.fail(str(err), pytrace=False)
    return run(tmp_path_factory.mktemp("consortium"))


def written(path: Path, text: str, mode: int = 0o644) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    path.chmod(mode)
    return path
