"""components/supernode_registry.py's plan: what to unregister and register (pure; the real SuperLink
runs it in tests/federate/test_site_removal.py and tests/components/test_server_processes.py)."""

from __future__ import annotations

from pathlib import Path

import pytest

from components import pki
from components.supernode_registry import Node, desired_keys, plan


def test_plan_unregisters_keys_of_removed_sites_and_registers_new_ones() -> None:
    registered = [Node(1, b"key-a", "a"), Node(2, b"key-gone", "gone"), Node(3, b"key-b", "")]
    unregister, register = plan({"a": b"key-a", "b": b"key-b", "c": b"key-c"}, registered)
    assert unregister == [Node(2, b"key-gone", "gone")]
    assert register == ["c"]


def test_plan_of_the_current_sites_changes_nothing() -> None:
    registered = [Node(1, b"key-a", "a"), Node(2, b"key-b", "b")]
    assert plan({"a": b"key-a", "b": b"key-b"}, registered) == ([], [])


def test_desired_keys_are_the_bytes_flwr_registers(tmp_path: Path) -> None:
    from flwr.cli.supernode.register import try_load_public_key

    key = pki.new_supernode_key()
    (tmp_path / "lab-c.pub").write_text(key.public_openssh)
    (tmp_path / "README").write_text("not a key")
    assert desired_keys(tmp_path) == {"lab-c": try_load_public_key(tmp_path / "lab-c.pub")}


def test_an_empty_key_directory_is_refused_not_taken_as_no_sites(tmp_path: Path) -> None:
    with pytest.raises(SystemExit, match="refusing to unregister every SuperNode"):
        desired_keys(tmp_path)
