"""Contribution scores: how far each site's update points the way the federation went."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
from flwr.app import Message

from flowerbed_training.common.protocol import ARRAYS, from_record

Arrays = dict[str, np.ndarray]


def flatten(arrays: Arrays) -> np.ndarray:
    return np.concatenate([np.ravel(arrays[k]).astype(np.float64) for k in sorted(arrays)])


def cosine_contributions(global_model: Arrays, site_models: dict[str, Arrays], new_model: Arrays) -> dict[str, float]:
    """Cosine between each site's update (y_i - x) and the aggregate update (x_new - x).

    Near 1: the site pulled the way the federation went; near 0: a free rider
    sending noise or an unchanged model; negative: it pulled against the others."""
    x = flatten(global_model)
    aggregate = flatten(new_model) - x
    scores: dict[str, float] = {}
    for site, model in site_models.items():
        update = flatten(model) - x
        norms = np.linalg.norm(update) * np.linalg.norm(aggregate)
        scores[site] = float(update @ aggregate / norms) if norms > 0 else 0.0
    return scores


def plain_site_models(answered: list[Message], global_model: Arrays,
                      site_name: Callable[[Message], str]) -> dict[str, Arrays]:
    """Site -> its model, for the replies that carry a plain model named like the global one.

    Taken before aggregating: some Flower strategies (FedMedian) empty the replies'
    records. A masked update (secure aggregation) gets no score."""
    site_models: dict[str, Arrays] = {}
    for message in answered:
        model = from_record(message.content.array_records[ARRAYS])
        if model.keys() == global_model.keys():
            site_models[site_name(message)] = model
    return site_models
