"""__main__.py as the language host runs it: config in, resources and stack outputs out."""

from __future__ import annotations

import json
import runpy
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import pulumi
import pytest
from pulumi.runtime.config import set_all_config
from pulumi.runtime.settings import get_root_resource

from component_harness import EXAMPLE, ROOT, Deployment, dev_raw_config, run, stack_raw_config
from components import exchange, pki


@pytest.fixture
def stack_config() -> Iterator[Any]:
    def configure(raw: Mapping[str, Any]) -> None:
        # The engine hands every value to the program as text (objects as JSON).
        set_all_config({f"flowerbed:{k}": v if isinstance(v, str) else json.dumps(v) for k, v in raw.items()}, [])

    yield configure
    set_all_config({}, [])


def run_main(into: Deployment | None = None) -> tuple[Deployment, dict[str, Any]]:
    exported: dict[str, Any] = {}

    def program() -> Any:
        runpy.run_path(str(ROOT / "__main__.py"), run_name="__main__")
        outputs = get_root_resource().outputs  # what pulumi.export collected
        return pulumi.Output.all(**outputs).apply(exported.update)

    return run(program, into=into), exported


def test_the_dev_stack_declares_the_federation_and_exports_its_outputs(stack_config: Any) -> None:
    stack_config(dev_raw_config())
    declared, exported = run_main()
    assert {"endpoint", "sites", "caCertificate", "flwrConnection", "controlPortForward"} <= set(exported)
    assert len(declared.kubernetes()) > 50


def test_a_bad_config_stops_with_one_message_before_declaring_anything(stack_config: Any) -> None:
    raw = dev_raw_config()
    raw["sites"][1]["cluster"] = "nowhere"
    stack_config(raw)
    declared = Deployment()
    with pytest.raises(pulumi.RunError) as err:
        run_main(into=declared)
    assert str(err.value) == (
        "invalid stack configuration: sites[1].cluster: 'nowhere' is not allowed; "
        "expected one of the configured clusters (hub, hospitals)")
    # RunError is what the language host reports as a plain message, without a traceback.
    assert err.value.__cause__ is None and err.value.__suppress_context__
    assert declared.resources == []


def test_a_misspelt_top_level_key_stops_the_program_naming_it(stack_config: Any) -> None:
    raw = dev_raw_config()
    raw["dataSafty"] = {"protect": True}
    stack_config(raw)
    declared = Deployment()
    with pytest.raises(pulumi.RunError,
                       match=r"^invalid stack configuration: dataSafty: unknown key; allowed keys are "):
        run_main(into=declared)
    assert declared.resources == []


def test_a_hub_reads_its_members_from_the_project_directory_it_runs_in(
        stack_config: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "sites").mkdir()
    key = pki.new_supernode_key().public_openssh
    (tmp_path / "sites" / "hospital-a.yaml").write_text(exchange.join_request("consortium", "hospital-a", key, {}))
    monkeypatch.chdir(tmp_path)  # the engine runs the program in the project directory
    stack_config(stack_raw_config("hub", EXAMPLE))
    declared, exported = run_main()
    assert set(exported["members"]) == {"hospital-a"}
    assert "federation: consortium" in exported["joinBundle"]
    assert declared.one("ConfigMap", "supernode-public-keys", "consortium-server").inputs["data"] == {
        "hospital-a.pub": key}


def test_a_site_stack_given_a_server_stops_with_one_line_naming_the_field(stack_config: Any) -> None:
    raw = stack_raw_config("hospital-a", EXAMPLE)
    raw["server"] = {"cluster": "hospital-a", "endpoint": "fl.hospital-a.example.org"}
    stack_config(raw)
    declared = Deployment()
    with pytest.raises(pulumi.RunError, match=r"^invalid stack configuration: server: not allowed in a site stack "
                                              r"\(role: site\); [^\n]*$"):
        run_main(into=declared)
    assert declared.resources == []
