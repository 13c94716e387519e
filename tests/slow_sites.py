"""BENCHMARKS AND TESTS ONLY: slow sites, made by padding a site's training with a sleep.

Never part of the app bundle. In process, a `tests.inprocess.Site` with
`train_seconds` is padded by the harness (InProcessGrid); in a federation of real
processes, `slowed` wraps the training ClientApp (tests/federate writes such an app).
Each training reply of a slowed site waits until SECONDS of wall time have passed since
the message arrived at the ClientApp. A sleep, not extra computation, so that a slow site
costs no CPU and the sites' speeds do not depend on how busy the machine is.

This module imports only Flower and the app's protocol, so it can travel in a test app's
bundle next to `flowerbed_training`.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager

from flwr.app import Context, Message
from flwr.clientapp import ClientApp

from flowerbed_training.common.protocol import QUERY_DATA_SUMMARY, QUERY_SITE_NAME

# Set while an in-process harness shuts its site threads down (tests/inprocess_threads.py).
_CUT_SHORT = threading.Event()


def pad(started: float, seconds: float) -> None:
    """Sleep until `seconds` have passed since `started` (time.monotonic()), unless cut short."""
    _CUT_SHORT.wait(max(0.0, started + seconds - time.monotonic()))


@contextmanager
def cut_short() -> Iterator[None]:
    """Inside: every padding sleep, under way or new, returns at once, so a harness can join its
    site threads instead of leaving one asleep for the interpreter's exit to kill."""
    _CUT_SHORT.set()
    try:
        yield
    finally:
        _CUT_SHORT.clear()


def slowed(app: ClientApp, train_seconds: Mapping[str, float]) -> ClientApp:
    """`app` with the training of each site named in `train_seconds` (node config `site-name`)
    padded to that many seconds; every other message is `app`'s own."""
    outer = ClientApp()

    @outer.train()
    def train(message: Message, context: Context) -> Message:
        started = time.monotonic()
        reply = app(message, context)
        pad(started, train_seconds.get(str(context.node_config.get("site-name")), 0.0))
        return reply

    outer.evaluate()(app)
    for query in (QUERY_SITE_NAME, QUERY_DATA_SUMMARY):
        outer.query(query.split(".", 1)[1])(app)
    return outer
