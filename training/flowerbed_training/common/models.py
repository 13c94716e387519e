"""The models: a tabular MLP and a small CNN for images, built identically everywhere from the run's seed.

Pure PyTorch, no Flower. The weights travel as numpy arrays named by the model's
state_dict keys (`get_weights`, `set_weights`).
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import torch
from torch import nn

from flowerbed_training.common.data import DataError, DataSpec
from flowerbed_training.common.run_config import MODELS, RunConfig
from flowerbed_training.common.task import seed_torch


class TabularMLP(nn.Module):
    def __init__(self, num_features: int, num_classes: int, hidden: int) -> None:
        super().__init__()
        self.layers = nn.Sequential(
            nn.Linear(num_features, hidden), nn.ReLU(),
            nn.Linear(hidden, hidden), nn.ReLU(),
            nn.Linear(hidden, num_classes),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layers(x)


class SmallCNN(nn.Module):
    """Two 3x3 convolutions for small images (8x8 digits). No BatchNorm: Opacus cannot
    compute per-sample gradients through it, and its running statistics do not average."""

    def __init__(self, image_shape: tuple[int, ...], num_classes: int, hidden: int) -> None:
        super().__init__()
        channels, height, width = image_shape
        self.image_shape = tuple(image_shape)
        self.features = nn.Sequential(
            nn.Conv2d(channels, 16, 3, padding=1), nn.ReLU(),
            nn.Conv2d(16, 32, 3, padding=1), nn.ReLU(),
            nn.MaxPool2d(2),
        )
        self.head = nn.Sequential(
            nn.Flatten(),
            nn.Linear(32 * (height // 2) * (width // 2), hidden), nn.ReLU(),
            nn.Linear(hidden, num_classes),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x.view(-1, *self.image_shape)))


def build_model(name: str, spec: DataSpec, hidden: int = 64) -> nn.Module:
    """`mlp`, `cnn` (image data only) or `auto` (cnn for images, mlp otherwise)."""
    if name not in MODELS:
        raise DataError(f"model: {name!r} is not one of {', '.join(MODELS)}")
    if name == "auto":
        name = "cnn" if spec.image_shape else "mlp"
    if name == "cnn":
        if not spec.image_shape:
            raise DataError("model: cnn needs image data (NPZ x of shape (n, h, w) or (n, c, h, w))")
        return SmallCNN(spec.image_shape, spec.num_classes, hidden)
    return TabularMLP(spec.num_features, spec.num_classes, hidden)


def model_for(config: RunConfig, spec: DataSpec) -> nn.Module:
    """The run's model, initialised identically everywhere from the run's seed."""
    seed_torch(config.seed)
    return build_model(config.model, spec, config.hidden_units)


def get_weights(model: nn.Module) -> dict[str, np.ndarray]:
    return {key: value.detach().cpu().numpy().copy() for key, value in model.state_dict().items()}


def set_weights(model: nn.Module, weights: Mapping[str, np.ndarray]) -> None:
    model.load_state_dict({k: torch.from_numpy(np.asarray(v)) for k, v in weights.items()})
