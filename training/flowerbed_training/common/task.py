"""Local training and evaluation: pure PyTorch, no Flower (Flower's quickstart calls this module task.py).

The ClientApp trains and evaluates with it, the ServerApp evaluates the global model on
the server's test set, and the centralized baseline (baseline.py) trains the same way on
pooled data.
"""

from __future__ import annotations

import random
from collections.abc import Iterable, Mapping
from contextlib import nullcontext
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from flowerbed_training.common.data import DataError, Dataset


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
    local-DP training keeps torch.optim.SGD (client/privacy.py)."""

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
