"""Models, data selection, training and evaluation: pure PyTorch, no Flower.

`client_app.py` and `server_app.py` stay thin and call into this module; so do
the tests and `bench/` (through `centralized_baseline`).
"""

from __future__ import annotations

import random
import time
from collections.abc import Iterable, Mapping
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from flowerbed_training.data import (
    BUILTIN_PREFIX,
    BuiltinOptions,
    BuiltinShare,
    DataError,
    Dataset,
    DataSpec,
    builtin_site_split,
    builtin_split,
    load_directory,
    train_test_split,
)
from flowerbed_training.partitions import PARTITION_SITES, Partition
from flowerbed_training.run_config import MODELS, RunConfig


# --- configuration ----------------------------------------------------------------------


def builtin_options(config: RunConfig) -> BuiltinOptions:
    return BuiltinOptions(
        partitioning=config.partitioning,
        alpha=config.dirichlet_alpha,
        test_fraction=config.test_fraction,
        seed=config.seed,
        labels_per_site=config.labels_per_site,
    )


def builtin_name(dataset: str) -> str | None:
    """`builtin:digits` -> `digits`; a study path -> None."""
    return dataset[len(BUILTIN_PREFIX) :] if dataset.startswith(BUILTIN_PREFIX) else None


def study_dataset(config: RunConfig, node_config: Mapping[str, Any]) -> Dataset:
    """The site's own study data: run config `dataset` (`<study>/<dataset>`) under node config `data-root`."""
    data_root = Path(str(node_config.get("data-root", "/data")))
    return load_directory(data_root / config.dataset, config.label_column)


def builtin_share(config: RunConfig, partition: Partition | None) -> BuiltinShare:
    """What shapes a site's built-in data: the run's source and options and the `partition`
    the server assigned the site (partitions.py); DataError without one."""
    name = builtin_name(config.dataset)
    if name is None:
        raise DataError(f"dataset {config.dataset!r}: not a {BUILTIN_PREFIX} source")
    if partition is None:
        raise DataError(
            f"dataset {config.dataset!r}: the server assigned this site no partition ({PARTITION_SITES} "
            "missing from the message config)"
        )
    return BuiltinShare(name, builtin_options(config), partition.index, partition.count)


def builtin_site_train_sets(config: RunConfig, num_sites: int) -> list[Dataset]:
    """The training set of each of `num_sites` sites sharing the run's built-in source (index = partition),
    exactly as each site computes its own (data.builtin_site_split)."""
    return [builtin_site_split(builtin_share(config, Partition(i, num_sites))).train for i in range(num_sites)]


def local_split(data: Dataset, config: RunConfig) -> tuple[Dataset, Dataset]:
    """A site's own train/validation split, used for federated evaluation."""
    split = train_test_split(data, config.test_fraction, config.seed)
    return split.train, split.test


def server_test_set(config: RunConfig) -> Dataset | None:
    """The global held-out test set: exists for built-in sources only (study data stays at sites)."""
    name = builtin_name(config.dataset)
    return builtin_split(name, builtin_options(config)).test if name else None


# --- standardization (federated: sites share sums, never rows) ---------------------------


@dataclass(frozen=True)
class FeatureSums:
    count: int
    total: np.ndarray  # (num_features,)
    total_sq: np.ndarray

    @staticmethod
    def of(x: np.ndarray) -> FeatureSums:
        x64 = x.astype(np.float64)
        return FeatureSums(len(x), x64.sum(axis=0), (x64**2).sum(axis=0))

    def __add__(self, other: FeatureSums) -> FeatureSums:
        return FeatureSums(self.count + other.count, self.total + other.total,
                           self.total_sq + other.total_sq)


@dataclass(frozen=True)
class Standardizer:
    mean: np.ndarray
    std: np.ndarray

    @staticmethod
    def from_sums(sums: FeatureSums) -> Standardizer:
        mean = sums.total / sums.count
        var = np.maximum(sums.total_sq / sums.count - mean**2, 0.0)
        std = np.sqrt(var)
        # Constant features (e.g. blank border pixels) are centred, not divided by zero.
        return Standardizer(mean.astype(np.float32), np.where(std > 1e-8, std, 1.0).astype(np.float32))

    def apply(self, data: Dataset) -> Dataset:
        return Dataset(x=(data.x - self.mean) / self.std, y=data.y, spec=data.spec)


# --- models ------------------------------------------------------------------------------


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


# --- runtime -----------------------------------------------------------------------------


def device(preference: str = "auto") -> torch.device:
    """Node config `device`: `auto` (the pod's GPU when it has one, else CPU), `cpu`, `cuda`, `cuda:<n>`."""
    if preference == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if preference != "cpu" and not preference.startswith("cuda"):
        raise DataError(f"node config device: {preference!r} must be auto, cpu, cuda or cuda:<n>")
    if preference.startswith("cuda") and not torch.cuda.is_available():
        raise DataError(f"node config device: {preference!r} asked for, but this pod sees no GPU")
    return torch.device(preference)


def seed_torch(seed: int) -> None:
    """`torch.manual_seed` for the devices `device()` offers (CPU, CUDA). Without CUDA,
    `torch.manual_seed` still queues a deferred CUDA seed and records a Python stack
    trace for it on every call: milliseconds per message on a busy CPU."""
    torch.default_generator.manual_seed(seed)
    if torch.cuda.is_available():
        torch.cuda.manual_seed_all(seed)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    seed_torch(seed)


def loader(data: Dataset, batch_size: int, shuffle: bool, seed: int = 0) -> DataLoader:
    tensors = TensorDataset(torch.from_numpy(data.x), torch.from_numpy(data.y))
    generator = torch.Generator().manual_seed(seed)
    return DataLoader(tensors, batch_size=batch_size, shuffle=shuffle, generator=generator)


@dataclass(frozen=True)
class TrainStats:
    loss: float  # mean training loss over all batches
    steps: int  # optimizer steps taken (SCAFFOLD's K)
    examples: int  # examples seen per epoch


def _autocast(dev: torch.device, amp: bool):
    return torch.autocast(device_type="cuda", dtype=torch.float16) if amp and dev.type == "cuda" else nullcontext()


def train(
    model: nn.Module,
    train_loader: DataLoader,
    optimizer: torch.optim.Optimizer | PlainSgd,
    epochs: int,
    dev: torch.device,
    *,
    proximal_mu: float = 0.0,
    global_params: Mapping[str, torch.Tensor] | None = None,
    gradient_correction: Mapping[str, torch.Tensor] | None = None,
    max_grad_norm: float = 0.0,
    amp: bool = False,
) -> TrainStats:
    """Local SGD on the data loss, plus two data-independent drift terms applied as extra
    SGD steps: FedProx's gradient mu * (w - w_global) and SCAFFOLD's correction c - c_i.

    They are added to the parameters directly, not to `.grad`, so they work unchanged
    when Opacus' DP optimizer (which rebuilds `.grad` from clipped per-sample
    gradients) does the step, and they cost no privacy budget.

    `max_grad_norm` > 0 scales each minibatch's data gradient down to at most that global
    L2 norm (torch.nn.utils.clip_grad_norm_) before the step; the drift terms are not
    clipped. Under SCAFFOLD's option II this bounds the control variates: with K plain-SGD
    steps g_k + c - c_i, c_i+ = c_i - c + (x - y_i) / (K lr) = mean_k g_k, so every
    ||c_i|| and ||c|| stays <= max_grad_norm. Meaningless under Opacus (its step
    overwrites `.grad`): pass 0 there."""
    model.to(dev).train()
    criterion = nn.CrossEntropyLoss()
    scaler = torch.amp.GradScaler("cuda", enabled=amp and dev.type == "cuda")
    named = dict(model.named_parameters())
    total_loss, steps = 0.0, 0
    for _ in range(epochs):
        for x, y in train_loader:
            if len(y) == 0:  # Opacus' Poisson sampling can draw an empty batch
                continue
            x, y = x.to(dev), y.to(dev)
            optimizer.zero_grad()
            with _autocast(dev, amp):
                loss = criterion(model(x), y)
            scaler.scale(loss).backward()
            if max_grad_norm > 0:
                scaler.unscale_(optimizer)  # type: ignore[arg-type]  # clip the true gradient, not the loss-scaled one
                nn.utils.clip_grad_norm_(named.values(), max_grad_norm)
            drift = _drift(named, proximal_mu, global_params, gradient_correction)
            scaler.step(optimizer)
            scaler.update()
            if drift:
                with torch.no_grad():
                    lr = optimizer.param_groups[0]["lr"]
                    for key, delta in drift.items():
                        named[key].sub_(lr * delta)
            total_loss += loss.item()
            steps += 1
    examples = len(train_loader.dataset)  # type: ignore[arg-type]
    return TrainStats(loss=total_loss / max(steps, 1), steps=steps, examples=examples)


def _drift(
    named: Mapping[str, nn.Parameter],
    proximal_mu: float,
    global_params: Mapping[str, torch.Tensor] | None,
    gradient_correction: Mapping[str, torch.Tensor] | None,
) -> dict[str, torch.Tensor]:
    """Per-parameter extra gradient, evaluated at the pre-step weights (exact SGD on the sum)."""
    drift: dict[str, torch.Tensor] = {}
    with torch.no_grad():
        for key, param in named.items():
            terms = []
            if proximal_mu > 0 and global_params is not None:
                terms.append(proximal_mu * (param - global_params[key]))
            if gradient_correction is not None:
                terms.append(gradient_correction[key])
            if terms:
                drift[key] = sum(terms)  # type: ignore[assignment]
    return drift


@torch.no_grad()
def evaluate(model: nn.Module, test_loader: DataLoader, dev: torch.device) -> tuple[float, float]:
    """(mean cross-entropy, accuracy) over the loader."""
    model.to(dev).eval()
    criterion = nn.CrossEntropyLoss(reduction="sum")
    loss, correct, count = 0.0, 0, 0
    for x, y in test_loader:
        x, y = x.to(dev), y.to(dev)
        logits = model(x)
        loss += criterion(logits, y).item()
        correct += (logits.argmax(dim=1) == y).sum().item()
        count += len(y)
    return loss / max(count, 1), correct / max(count, 1)


class PlainSgd:
    """Plain SGD, w <- w - lr * grad, with the part of torch.optim.Optimizer's interface that
    `train` and torch's GradScaler use (`param_groups`, `zero_grad`, `step`).

    The same update as torch.optim.SGD with its defaults (no momentum, no weight decay; a test
    checks both give identical weights). Why not that class: every torch Optimizer imports
    torch._dynamo and sympy when it is built (torch/optim/optimizer.py), 1.2-1.7 s of CPU
    measured on this project's machine, and Flower starts a fresh ClientApp process for every
    message, so each site paid it in every round. Opacus wraps a real torch Optimizer, so
    local-DP training keeps torch.optim.SGD (client_app.py)."""

    def __init__(self, params: Iterable[nn.Parameter], lr: float) -> None:
        self.param_groups: list[dict[str, Any]] = [{"params": list(params), "lr": lr}]

    def zero_grad(self) -> None:
        for group in self.param_groups:
            for param in group["params"]:
                param.grad = None

    @torch.no_grad()
    def step(self) -> None:
        for group in self.param_groups:
            for param in group["params"]:
                if param.grad is not None:
                    param.add_(param.grad, alpha=-group["lr"])


def sgd(model: nn.Module, lr: float) -> PlainSgd:
    """Plain SGD: FedProx's and SCAFFOLD's analyses assume it (no momentum state to average)."""
    return PlainSgd(model.parameters(), lr)


# --- centralized baseline (the same model on pooled data; bench/ compares against it) ------


def centralized_baseline(config: RunConfig, sites: int | None = None) -> dict[str, float]:
    """Train the run's model on the pooled built-in training data for
    `num-server-rounds x local-epochs` epochs; evaluate on the same global test set.

    With `sites`, pool exactly what that many sites train on (`pooled_training_data`)
    instead of the whole training pool. Returns accuracy (0-1), loss (mean cross-entropy),
    seconds (wall), epochs and examples (rows trained on). Raises DataError for study data."""
    name = builtin_name(config.dataset)
    if name is None:
        raise DataError("dataset: the centralized baseline needs a builtin: source (study data never pools)")
    started = time.perf_counter()
    seed_everything(config.seed)
    split = builtin_split(name, builtin_options(config))
    pool = split.train if sites is None else pooled_training_data(config, sites)
    standardizer = Standardizer.from_sums(FeatureSums.of(pool.x))
    train_set, test_set = standardizer.apply(pool), standardizer.apply(split.test)
    spec = DataSpec(train_set.spec.num_features, int(split.train.y.max()) + 1, train_set.spec.image_shape)
    model = model_for(config, spec)
    dev = device()
    epochs = config.num_server_rounds * config.local_epochs
    train(model, loader(train_set, config.batch_size, True, config.seed), sgd(model, config.lr),
          epochs, dev, max_grad_norm=config.local_max_grad_norm, amp=config.amp)
    loss, accuracy = evaluate(model, loader(test_set, 256, False), dev)
    return {"accuracy": accuracy, "loss": loss, "seconds": time.perf_counter() - started,
            "epochs": float(epochs), "examples": float(len(train_set.y))}


def pooled_training_data(config: RunConfig, sites: int) -> Dataset:
    """The union of what `sites` sites train on in a run with this config (built-in data):
    each site's share of the run's partitioning, less the validation hold-out (`test-fraction`)
    it keeps at home (builtin_site_train_sets); rows site by site, unstandardized. It depends on
    the partition: the hold-outs are stratified per site, so another partitioning pools other
    rows. DataError for study data (builtin_share)."""
    parts = builtin_site_train_sets(config, sites)
    return Dataset(x=np.concatenate([p.x for p in parts]), y=np.concatenate([p.y for p in parts]), spec=parts[0].spec)
