"""Shared fixtures for the training app's tests."""

import pytest
import torch
from flwr.common.constant import SUPERLINK_NODE_ID
from flwr.supercore.task_identity import TaskIdentity


@pytest.fixture(autouse=True, scope="session")
def one_torch_thread():
    # The CI box has 2 cores shared with other jobs; torch's default of one thread
    # per core oversubscribes them and makes these tiny models ~100x slower.
    torch.set_num_threads(1)


@pytest.fixture
def server_identity():
    """What Flower's ServerApp runner sets before a strategy builds messages."""
    TaskIdentity.task_id, TaskIdentity.run_id, TaskIdentity.node_id = 1, 1, SUPERLINK_NODE_ID
