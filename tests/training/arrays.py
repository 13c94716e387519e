"""Measures on models held as {name: array} dicts, for the training tests."""

import numpy as np


def global_norm(arrays) -> float:
    """The L2 norm of all entries together (what torch's clip_grad_norm_ bounds), in float64."""
    return float(np.sqrt(sum(np.sum(np.asarray(v, dtype=np.float64) ** 2) for v in arrays.values())))
