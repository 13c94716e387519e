"""Flower 1.42 as the tests of either environment reach it.

flwr lives in the Flower environment (.venv, requirements.lock); the Pulumi program and the
tests that run it under mocks live in the program environment (.venv-program, program.lock),
which cannot hold flwr (`packaging`, see requirements/program.in). What Flower itself makes of
the program's output (the pod its Kubernetes executor builds from an executor config, how it
parses `--node-config`) is asked here: in-process where flwr is importable, otherwise from one
`python` of the Flower environment, run as `python tests/flower.py FUNCTION JSON-ARGS`.
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any
from unittest import mock

import yaml

REPO = Path(__file__).resolve().parents[1]
# The Flower environment: its python, and its console scripts (flower-superlink, flwr, ...).
PYTHON = REPO / ".venv" / "bin" / "python"
BIN = PYTHON.parent


def relocate(args: Sequence[str], moves: dict[str, str]) -> list[str]:
    """A pod's arguments for a local process: each `old` text in them (a path, an address, a port) becomes `new`."""
    out = []
    for arg in args:
        for old, new in moves.items():
            arg = arg.replace(old, new)
        out.append(arg)
    return out


def _launched_pods(requests: Sequence[Sequence[str]]) -> list[dict[str, Any]]:
    from flwr.supercore.constant import TaskType
    from flwr.supercore.superexec.executor.factory import _kubernetes_executor_config_from_mapping
    from flwr.supercore.superexec.executor.kubernetes_executor import _build_taskexecutor_pod
    from flwr.supercore.superexec.executor.types import ExecutionSpec

    pods = []
    for executor_yaml, task_type, runtime_address in requests:
        config = _kubernetes_executor_config_from_mapping(yaml.safe_load(executor_yaml))
        spec = ExecutionSpec(task_type=TaskType(task_type), runtime_api_address=runtime_address, token="t0ken",
                             insecure=False, root_certificates_path=None, runtime_dependency_install=False,
                             parent_pid=None, suppress_output=False, task_id=7)
        pods.append(_build_taskexecutor_pod(spec, config, "-----BEGIN CERTIFICATE-----", "abc123"))
    return pods


def _parse_config_args(args: Sequence[str]) -> dict[str, Any]:
    from flwr.common.config import parse_config_args

    return parse_config_args(list(args))


def _task_poll_interval(value: str) -> float:
    from flwr.supercore.superexec.run_superexec import _get_task_poll_interval

    with mock.patch.dict(os.environ, {TASK_POLL_INTERVAL: value}):
        return _get_task_poll_interval()


TASK_POLL_INTERVAL = "FLWR_SUPEREXEC_TASK_POLL_INTERVAL"
_FUNCTIONS = {"launched_pods": _launched_pods, "parse_config_args": _parse_config_args,
              "task_poll_interval": _task_poll_interval}


def _call(function: str, *args: Any) -> Any:
    if importlib.util.find_spec("flwr") is not None:
        return _FUNCTIONS[function](*args)
    done = subprocess.run([str(PYTHON), __file__, function, json.dumps(args)], capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"{function} in the Flower environment ({PYTHON}) failed:\n{done.stderr}")
    return json.loads(done.stdout)


def launched_pods(requests: Sequence[tuple[str, str, str]]) -> list[dict[str, Any]]:
    """The Pods flwr 1.42's Kubernetes executor would create, one per (executor config YAML, task type,
    runtime address), from the executor's own (private, version-pinned) builders: exactly what
    SuperExec submits to the API server for one task. One call asks Flower once for all of them."""
    return _call("launched_pods", [list(r) for r in requests])


def launched_pod(executor_yaml: str, task_type: str, runtime_address: str) -> dict[str, Any]:
    return launched_pods([(executor_yaml, task_type, runtime_address)])[0]


def parse_config_args(args: Sequence[str]) -> dict[str, Any]:
    """Flower's parse of `--node-config`/`--run-config` values."""
    return _call("parse_config_args", list(args))


def task_poll_interval(value: str) -> float:
    """The seconds SuperExec polls for tasks with FLWR_SUPEREXEC_TASK_POLL_INTERVAL=`value`, by Flower's
    own parser (it raises on a value outside 0.01-60 s)."""
    return _call("task_poll_interval", value)


if __name__ == "__main__":
    function, arguments = sys.argv[1], json.loads(sys.argv[2])
    print(json.dumps(_FUNCTIONS[function](*arguments)))
