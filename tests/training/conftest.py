"""Shared fixtures for the training app's tests."""

import pytest
import torch


@pytest.fixture(autouse=True, scope="session")
def one_torch_thread():
    # The CI box has 2 cores shared with other jobs; torch's default of one thread
    # per core oversubscribes them and makes these tiny models ~100x slower.
    torch.set_num_threads(1)
