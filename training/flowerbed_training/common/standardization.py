"""Federated standardization: the sites share per-feature sums, never rows; the pooled sums give
one mean and standard deviation for the whole federation (the survey, server/survey.py)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from flowerbed_training.common.data import Dataset


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
