"""Run flowerbed's components under `pulumi.runtime.set_mocks` and capture what they declare.

The mocks answer like the real engine would: Kubernetes objects echo their inputs, and the
PKI dynamic resources run their own provider (un-pickled from `__provider` exactly as the
engine's dynamic provider host does), so certificates and keys are real.
"""

from __future__ import annotations

import base64
import copy
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import dill
import pulumi
import yaml
from pulumi.runtime import rpc
from pulumi.runtime.mocks import MockMonitor

from components.config import FederationConfig, parse

ROOT = Path(__file__).resolve().parents[2]
DYNAMIC_PREFIX = "pulumi-python:dynamic/flowerbed:"


# The consortium example's stack files (make consortium): a hub and two hospital site stacks.
EXAMPLE = ROOT / "examples" / "consortium"


def stack_raw_config(stack: str, directory: Path = ROOT) -> dict[str, Any]:
    """A stack file's `flowerbed:*` values, as `pulumi.Config` would hand them to `parse`."""
    config = yaml.safe_load((directory / f"Pulumi.{stack}.yaml").read_text())["config"]
    return {k.split(":", 1)[1]: v for k, v in config.items() if k.startswith("flowerbed:")}


def dev_raw_config() -> dict[str, Any]:
    return stack_raw_config("dev")


def large_raw_config(sites: int = 20, clusters: int = 5) -> dict[str, Any]:
    """A generated federation: `sites` sites over `clusters` clusters (one real-cluster style)."""
    raw = dev_raw_config()
    raw["clusters"] = {f"cluster-{c}": {"renderDir": f"out/large/cluster-{c}"} for c in range(clusters - 1)}
    raw["clusters"][f"cluster-{clusters - 1}"] = {"kubeconfig": "apiVersion: v1\nkind: Config\n",
                                                  "context": "prod", "apiServerCidrs": ["10.0.0.1/32"]}
    raw["server"] = {**raw["server"], "cluster": "cluster-0", "serviceType": "NodePort"}
    raw["sites"] = [{
        "name": f"site-{i:02d}", "cluster": f"cluster-{i % clusters}", "gpus": i % 3, "cpu": "2",
        "memory": "8Gi", "maxConcurrentTasks": 1 + i % 2,
        "studyData": [{"study": "default", "dataset": "tabular", "size": "1Gi", "mode": "ro"},
                      {"study": "imaging", "dataset": "scans", "existingClaim": f"pacs-{i}", "mode": "rw"}],
    } for i in range(sites)]
    return raw


@dataclass
class Declared:
    """One resource registration as the engine saw it."""

    type: str
    name: str
    inputs: dict[str, Any]
    # top-level input names whose value is (or contains) a secret
    secret_inputs: set[str]
    outputs: dict[str, Any]
    provider: str
    parent: str
    protect: bool
    retain_on_delete: bool
    secret_outputs: list[str]

    @property
    def kind(self) -> str:
        return str(self.inputs.get("kind", ""))

    @property
    def k8s_name(self) -> str:
        return str(self.inputs.get("metadata", {}).get("name", ""))

    @property
    def namespace(self) -> str:
        return str(self.inputs.get("metadata", {}).get("namespace", ""))

    def manifest(self) -> dict[str, Any]:
        """The object as it would be rendered (JSON numbers that are integers become ints)."""
        return _integral(copy.deepcopy(self.inputs))


@dataclass
class Deployment:
    resources: list[Declared] = field(default_factory=list)
    stack_outputs: dict[str, Any] = field(default_factory=dict)

    def of_type(self, type_: str) -> list[Declared]:
        return [r for r in self.resources if r.type == type_]

    def kubernetes(self) -> list[Declared]:
        return [r for r in self.resources if r.type.startswith("kubernetes:") and r.inputs.get("kind")]

    def objects(self, kind: str, namespace: str | None = None) -> list[Declared]:
        return [r for r in self.kubernetes() if r.kind == kind and (namespace is None or r.namespace == namespace)]

    def one(self, kind: str, name: str, namespace: str) -> Declared:
        found = [r for r in self.objects(kind, namespace) if r.k8s_name == name]
        assert len(found) == 1, f"expected one {kind} {namespace}/{name}, found {len(found)}"
        return found[0]

    def providers(self) -> list[Declared]:
        return self.of_type("pulumi:providers:kubernetes")


def _integral(value: Any) -> Any:
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, dict):
        return {k: _integral(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_integral(v) for v in value]
    return value


def _plain(value: Any) -> tuple[Any, bool]:
    """`value` with secret wrappers removed, and whether any part of it was secret."""
    if rpc.is_rpc_secret(value):
        return _plain(rpc.unwrap_rpc_secret(value))[0], True
    if isinstance(value, dict):
        pairs = {k: _plain(v) for k, v in value.items()}
        return {k: v for k, (v, _) in pairs.items()}, any(s for _, s in pairs.values())
    if isinstance(value, list):
        items = [_plain(v) for v in value]
        return [v for v, _ in items], any(s for _, s in items)
    return value, False


def _run_dynamic_provider(inputs: Mapping[str, Any]) -> dict[str, Any]:
    provider = dill.loads(base64.b64decode(inputs["__provider"]))
    result = provider.create({k: v for k, v in inputs.items() if v is not None})
    return dict(result.outs)


class _Mocks(pulumi.runtime.Mocks):
    def __init__(self, deployment: Deployment) -> None:
        self.deployment = deployment
        self.pending_options: dict[tuple[str, str], Any] = {}

    def new_resource(self, args: pulumi.runtime.MockResourceArgs) -> tuple[str, dict[str, Any]]:
        plain = {k: _plain(v) for k, v in args.inputs.items()}
        inputs = {k: v for k, (v, _) in plain.items()}
        outputs = _run_dynamic_provider(inputs) if args.typ.startswith(DYNAMIC_PREFIX) else dict(inputs)
        request = self.pending_options.pop((args.typ, args.name))
        self.deployment.resources.append(Declared(
            type=args.typ, name=args.name, inputs=inputs, secret_inputs={k for k, (_, s) in plain.items() if s},
            outputs=outputs, provider=args.provider or "",
            parent=request.parent, protect=request.protect, retain_on_delete=request.retainOnDelete,
            secret_outputs=list(request.additionalSecretOutputs)))
        return f"{args.name}-id", outputs

    def call(self, args: pulumi.runtime.MockCallArgs) -> dict[str, Any]:
        return {}


class _RecordingMonitor(MockMonitor):
    """Keeps the resource options (parent, protect, retainOnDelete, ...) the plain mocks drop."""

    def RegisterResource(self, request: Any) -> Any:  # noqa: N802 (gRPC method name)
        if request.type != "pulumi:pulumi:Stack":
            self.mocks.pending_options[(request.type, request.name)] = request
        return super().RegisterResource(request)

    def RegisterResourceOutputs(self, request: Any) -> Any:  # noqa: N802
        return super().RegisterResourceOutputs(request)


def run(program: Callable[[], Any], *, preview: bool = False, into: Deployment | None = None) -> Deployment:
    """Run `program` (which declares resources) under mocks; return everything it declared.

    `into` receives the registrations as they happen, so a caller still sees them if `program` raises.
    """
    deployment = into if into is not None else Deployment()
    mocks = _Mocks(deployment)
    pulumi.runtime.set_mocks(mocks, project="flowerbed", stack="dev", preview=preview,
                             monitor=_RecordingMonitor(mocks))

    @pulumi.runtime.test
    def declare() -> Any:
        return program()

    declare()
    return deployment


def deploy(config: FederationConfig) -> Deployment:
    """Declare the whole stack for `config` (its role's shape, as __main__.py does); capture its resources and
    outputs."""
    from components.consortium import SHAPES
    from components.federation import FederationArgs

    outputs: dict[str, Any] = {}

    def program() -> Any:
        federation = SHAPES[config.role](config.federation, FederationArgs(config=config))
        keys = sorted(federation.outputs)
        return pulumi.Output.all(*[federation.outputs[k] for k in keys]).apply(
            lambda values: outputs.update(dict(zip(keys, values))))

    deployment = run(program)
    deployment.stack_outputs = outputs
    return deployment


def deploy_raw(raw: Mapping[str, Any]) -> Deployment:
    return deploy(parse(raw))

