"""Engine tests: the real `pulumi` CLI and plugins from `make toolchain`, dev stack in render mode."""

from __future__ import annotations

import pytest

from tools.engine.offline import ToolchainMissing, check_toolchain


@pytest.fixture(scope="session")
def toolchain() -> None:
    """Fails (never skips) the tests that run the engine when `make toolchain` has not been run."""
    try:
        check_toolchain()
    except ToolchainMissing as err:
        problem = str(err)
    else:
        return
    pytest.fail(problem, pytrace=False)
