"""The order a training epoch visits its images: a seeded permutation (uniform), or a seeded draw
with replacement weighted inversely to class frequency (balanced), the common practice on
imbalanced sets such as AffectNet. Both pipelines take their order from here."""

from __future__ import annotations

import numpy as np
import torch

from scn.errors import UserError

SAMPLERS = ("uniform", "balanced")


def class_balanced_weights(labels: np.ndarray) -> torch.Tensor:
    """Per sample 1 / (its class's count): every class is drawn equally often in expectation."""
    labels = np.asarray(labels, dtype=np.int64)
    counts = np.bincount(labels)
    return torch.as_tensor(1.0 / counts[labels], dtype=torch.float64)


def epoch_order(labels: np.ndarray, seed: int, sampler: str = "uniform") -> torch.Tensor:
    """Positions to visit this epoch, a function of (labels, seed, sampler) only; as many as there
    are images, so an epoch has the same length under both samplers."""
    if sampler not in SAMPLERS:
        raise UserError(f"dataset.sampler={sampler!r}; use one of {', '.join(SAMPLERS)}")
    n = len(labels)
    gen = torch.Generator().manual_seed(int(seed))
    if sampler == "uniform":
        return torch.randperm(n, generator=gen)
    return torch.multinomial(class_balanced_weights(labels), n, replacement=True, generator=gen)
