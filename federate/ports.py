"""Loopback ports: pick free ones, refuse taken ones before anything starts."""

from __future__ import annotations

import socket
import time
from collections.abc import Callable

LOOPBACK = "127.0.0.1"


class PortInUse(RuntimeError):
    pass


def free_port() -> int:
    """A port the kernel just reported free on loopback (the OS picks it; tiny reuse race)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((LOOPBACK, 0))
        return int(sock.getsockname()[1])


def is_listening(port: int) -> bool:
    """True when something accepts TCP connections on loopback:port."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.settimeout(0.5)
        return sock.connect_ex((LOOPBACK, port)) == 0


def ensure_free(port: int, purpose: str, option: str) -> None:
    """Fail with a message that names the port, what it was for, and the flag that moves it."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        # Like the Flower servers (uvicorn) do: connections of an earlier run lingering in
        # TIME_WAIT do not block the port; only a live listener or bound socket does.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((LOOPBACK, port))
        except OSError as err:
            raise PortInUse(
                f"port {port} on {LOOPBACK} is already in use, so the {purpose} cannot listen there "
                f"({err.strerror}); stop whatever holds it (`ss -ltnp 'sport = :{port}'`) or pass "
                f"{option} with another port (0 picks a free one)"
            ) from None


def wait_until_listening(port: int, timeout: float, still_starting: Callable[[], None]) -> None:
    """Poll until loopback:port accepts connections; `still_starting` raises if the server died."""
    deadline = time.monotonic() + timeout
    while not is_listening(port):
        still_starting()
        if time.monotonic() > deadline:
            raise TimeoutError(f"nothing listens on {LOOPBACK}:{port} after {timeout:.0f} s")
        time.sleep(0.2)
