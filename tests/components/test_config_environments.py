"""components/config/ runs in both Python environments: the program's (this one) and the Flower one, where
tools/live, tools/ops and federate read stack configs with it. Both locks pin the same pydantic."""

from __future__ import annotations

import json
import re
import subprocess
from importlib import metadata
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from component_harness import ROOT, dev_raw_config
from components.config import ConfigError, parse

LOCKS = {name: ROOT / "requirements" / f"{name}.lock" for name in ("program", "requirements")}
FLOWER_PYTHON = ROOT / ".venv" / "bin" / "python"


def pins(lock: Path) -> dict[str, str]:
    """Canonical name -> version, from uv's `name==version` lines."""
    return {canonicalize_name(m[1]): m[2] for m in re.finditer(r"^([A-Za-z0-9_.-]+)==(\S+)$", lock.read_text(), re.M)}


def closure(package: str) -> set[str]:
    """`package` and every distribution it needs here (markers evaluated in this environment)."""
    found, todo = set(), [package]
    while todo:
        name = canonicalize_name(todo.pop())
        if name not in found:
            found.add(name)
            todo += [r.name for r in map(Requirement, metadata.requires(name) or [])
                     if r.marker is None or r.marker.evaluate({"extra": ""})]
    return found


def test_both_locks_pin_the_same_pydantic_and_what_it_needs() -> None:
    program, flower = pins(LOCKS["program"]), pins(LOCKS["requirements"])
    needed = closure("pydantic")
    assert {"pydantic", "pydantic-core", "annotated-types"} <= needed
    assert {name: program.get(name) for name in needed} == {name: flower.get(name) for name in needed}
    assert program["pydantic"] == metadata.version("pydantic")


# Run by the Flower environment's python: the same parse, the same message.
_IN_FLOWER = """
import json, sys
from components.config import ConfigError, parse
raw, bad = json.loads(sys.argv[1]), json.loads(sys.argv[2])
try:
    parse(bad)
except ConfigError as err:
    message = str(err)
print(json.dumps({"sites": [s.model_dump() for s in parse(raw).sites], "message": message}))
"""


@pytest.mark.skipif(not FLOWER_PYTHON.exists(), reason="the Flower environment (.venv) is not built: make venv")
def test_the_flower_environment_validates_the_stack_config_alike() -> None:
    raw = dev_raw_config()
    bad = {**raw, "sites": [{**raw["sites"][0], "gpus": -1}]}
    done = subprocess.run([str(FLOWER_PYTHON), "-c", _IN_FLOWER, json.dumps(raw), json.dumps(bad)], cwd=ROOT,
                          capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 0, done.stderr[-2000:]
    there = json.loads(done.stdout)
    with pytest.raises(ConfigError) as here:
        parse(bad)
    assert there["message"] == str(here.value) == "sites[0].gpus: -1 is not allowed; expected an integer of at least 0"
    assert there["sites"] == json.loads(json.dumps([s.model_dump() for s in parse(raw).sites]))
