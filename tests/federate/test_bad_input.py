"""`python -m federate` with input it cannot use: one line naming the option and what is wrong, exit status 1
(2 for argparse's own refusals), before any process starts. No Flower process runs in these tests."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest

from federate import flwr_cli
from federate.__main__ import main


def refused(capsys: pytest.CaptureFixture[str], argv: list[str], status: int = 1) -> str:
    """Run `python -m federate argv`; its one stderr line, after checking the exit status."""
    if status == 2:
        with pytest.raises(SystemExit) as exit_info:
            main(argv)
        code = exit_info.value.code
    else:
        code = main(argv)
    err = capsys.readouterr().err
    assert code == status, err
    assert "Traceback" not in err
    return err.strip().splitlines()[-1]


def test_a_stack_file_that_pulumi_stack_rm_deleted_is_named(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    gone = tmp_path / "Pulumi.gone.yaml"
    line = refused(capsys, ["--stack-file", str(gone), "--out-dir", str(tmp_path / "out")])
    assert line == (f"federate: error: --stack-file {gone}: no such file (`pulumi stack rm` deletes "
                    "Pulumi.<stack>.yaml); pass another --stack-file, or the site names with --sites a,b,c")
    assert not (tmp_path / "out").exists()  # nothing started, nothing written


@pytest.mark.parametrize(("content", "message"), [
    ("config: [unclosed\n", r"not YAML \(line 2, column 1: .*\)"),
    ("- a list\n", r"not a Pulumi stack file \(a YAML mapping whose `config` holds the flowerbed:\* keys\)"),
    ("config:\n  flowerbed:federation: demo\n", r"images: missing; it is required"),
])
def test_a_stack_file_the_program_would_refuse_is_named_with_the_problem(
        tmp_path: Path, capsys: pytest.CaptureFixture[str], content: str, message: str) -> None:
    stack = tmp_path / "Pulumi.bad.yaml"
    stack.write_text(content)
    line = refused(capsys, ["--stack-file", str(stack), "--out-dir", str(tmp_path / "out")])
    assert line.startswith(f"federate: error: --stack-file {stack}: ")
    assert re.search(message, line), line


@pytest.mark.parametrize("entry", ["strategy=fedprox", "rounds", "lr=", 'dataset="builtin:digits'])
def test_a_run_config_value_flower_would_drop_or_refuse_is_named(
        tmp_path: Path, capsys: pytest.CaptureFixture[str], entry: str) -> None:
    line = refused(capsys, ["--sites", "a,b", "-c", entry, "--out-dir", str(tmp_path / "out")])
    assert line == (f"federate: error: -c {entry}: expected KEY=VALUE pairs of TOML values "
                    "(a string needs quotes: -c 'strategy=\"fedprox\"')")


def test_ports_outside_the_tcp_range_are_refused(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    line = refused(capsys, ["--superlink-port", "70000"], status=2)
    assert line.endswith("argument --superlink-port: '70000' is not a port (0 to 65535; 0 picks a free one)")
    line = refused(capsys, ["--sites", "a,b,c", "--supernode-port-base", "65534", "--out-dir", str(tmp_path)])
    assert line == "federate: error: --supernode-port-base 65534: 3 sites need ports up to 65536, past 65535"


def test_an_out_dir_that_cannot_be_made_is_named(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "a-file").write_text("")
    out = tmp_path / "a-file" / "out"
    line = refused(capsys, ["--sites", "a,b", "--out-dir", str(out)])
    assert line == f"federate: error: --out-dir {out}: cannot be created (Not a directory)"


def test_a_timeout_must_be_positive(capsys: pytest.CaptureFixture[str]) -> None:
    line = refused(capsys, ["--timeout", "0"], status=2)
    assert line.endswith("argument --timeout: '0' is not a number of seconds > 0")


def test_a_flwr_command_that_does_not_finish_is_one_message(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # On a machine too busy to import Flower's CLI in time, `flwr supernode register` ran past its timeout
    # and federate ended in subprocess.TimeoutExpired's traceback.
    def hangs(argv: list[str], **kwargs: object) -> None:
        raise subprocess.TimeoutExpired(argv, float(kwargs["timeout"]))  # type: ignore[arg-type]

    monkeypatch.setattr(flwr_cli.subprocess, "run", hangs)
    cli = flwr_cli.FlwrCli(tmp_path, "local")
    with pytest.raises(flwr_cli.FlwrCommandFailed, match=r"^`flwr supernode register key.pub` did not finish within "
                                                         r"60 s \(a machine too busy"):
        cli.json("supernode", "register", "key.pub")
