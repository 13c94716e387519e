"""Long-running child processes that always go away: own process group, own log file.

Every child starts in a new session, so one `killpg` also reaches the tasks it
launched (SuperExec's subprocess executor starts ServerApp/ClientApp processes
that inherit its group), and a Ctrl-C in the terminal reaches only us: we then
stop the children in order instead of leaving them half-dead.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path


# Flower colours its log levels even into files; a log read back for a person drops the escapes.
_COLOURS = re.compile(r"\x1b\[[0-9;]*m")


def without_colours(text: str) -> str:
    return _COLOURS.sub("", text)


class ProcessDied(RuntimeError):
    """A child that should still be running has exited."""

    def __init__(self, process: ManagedProcess) -> None:
        self.process = process
        super().__init__(
            f"{process.name} exited with code {process.popen.returncode}; "
            f"last lines of {process.log_path}:\n{process.tail()}"
        )


@dataclass
class ManagedProcess:
    name: str
    argv: Sequence[str]
    log_path: Path
    popen: subprocess.Popen[bytes]

    @property
    def pid(self) -> int:
        return self.popen.pid

    def running(self) -> bool:
        return self.popen.poll() is None

    def tail(self, lines: int = 20) -> str:
        try:
            text = without_colours(self.log_path.read_text(encoding="utf-8", errors="replace"))
        except FileNotFoundError:
            return "(no log written)"
        return "\n".join("    " + line for line in text.splitlines()[-lines:]) or "    (log is empty)"


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # a member we cannot signal still counts as alive
        return True
    return True


def _terminate(processes: Sequence[ManagedProcess], timeout: float) -> None:
    """SIGTERM every process group, wait up to `timeout`, then SIGKILL the groups still alive."""
    for sig, wait in ((signal.SIGTERM, timeout), (signal.SIGKILL, 5.0)):
        alive = [p for p in processes if _group_alive(p.pid)]  # start_new_session: pgid == pid
        for process in alive:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, sig)
        deadline = time.monotonic() + wait
        while alive and time.monotonic() < deadline:
            time.sleep(0.1)
            for process in alive:
                process.popen.poll()  # reap the leader, or its group never empties
            alive = [p for p in alive if _group_alive(p.pid)]
        if not alive:
            return


@contextlib.contextmanager
def _interrupts_deferred() -> Iterator[None]:
    """Hold Ctrl-C/SIGTERM until the block ends.

    A KeyboardInterrupt raised inside Popen after the fork would leave a child
    that nobody recorded, so nobody stops it. Signals that arrive meanwhile are
    replayed through the previous handlers once the child is on the list.
    """
    pending: list[int] = []
    previous = {sig: signal.signal(sig, lambda signum, _frame: pending.append(signum))
                for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        for sig in pending:
            signal.raise_signal(sig)


@dataclass
class Supervisor:
    """Starts children and guarantees they are stopped when the `with` block ends."""

    log_dir: Path
    processes: list[ManagedProcess] = field(default_factory=list)

    def start(self, name: str, argv: Sequence[str], env: Mapping[str, str] | None = None) -> ManagedProcess:
        self.log_dir.mkdir(parents=True, exist_ok=True)
        log_path = self.log_dir / f"{name}.log"
        with _interrupts_deferred(), open(log_path, "wb") as log:
            popen = subprocess.Popen(
                list(argv),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=dict(env) if env is not None else None,
                start_new_session=True,
            )
            process = ManagedProcess(name, list(argv), log_path, popen)
            self.processes.append(process)
        return process

    def check(self, *, except_for: Sequence[ManagedProcess] = ()) -> None:
        """Raise ProcessDied for the first child that exited on its own."""
        for process in self.processes:
            if process not in except_for and not process.running():
                raise ProcessDied(process)

    def stop(self, process: ManagedProcess, timeout: float = 10.0) -> None:
        """SIGTERM the child's whole group, then SIGKILL whatever is left after `timeout`."""
        _terminate([process], timeout)

    def stop_all(self, timeout: float = 10.0) -> None:
        # All at once: each Flower process takes about a second to shut down gracefully.
        # A second Ctrl-C must not cut the clean-up short and orphan what is left.
        with _interrupts_deferred():
            _terminate(self.processes, timeout)

    def __enter__(self) -> Supervisor:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop_all()
