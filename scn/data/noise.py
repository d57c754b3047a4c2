"""Synthetic label noise and stratified hold-out splits, exact-count and seeded."""

from __future__ import annotations

import numpy as np

from scn.errors import UserError


def symmetric_noise(
    labels: np.ndarray, rate: float, seed: int, num_classes: int
) -> tuple[np.ndarray, np.ndarray]:
    """Replace exactly round(rate * n) labels by a uniformly drawn *different* class.

    Returns the noisy labels and a boolean mask of the flipped positions, so a run can later tell
    which relabels fixed a wrong label and which broke a right one.
    """
    if not 0.0 <= rate <= 1.0:
        raise UserError(f"dataset.noise.rate={rate} must lie in [0, 1]")
    labels = np.asarray(labels, dtype=np.int64)
    n = len(labels)
    count = int(round(rate * n))
    rng = np.random.default_rng(seed)
    flipped = np.zeros(n, dtype=bool)
    flipped[rng.choice(n, size=count, replace=False)] = True
    noisy = labels.copy()
    # an offset in 1..C-1 added modulo C is a uniform draw over the other C-1 classes
    offsets = rng.integers(1, num_classes, size=count)
    noisy[flipped] = (labels[flipped] + offsets) % num_classes
    return noisy, flipped


def stratified_split(
    labels: np.ndarray, fraction: float, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    """Split positions into (keep, held_out) with round(fraction * n_c) held out of every class c."""
    if not 0.0 <= fraction < 1.0:
        raise UserError(f"dataset.val_fraction={fraction} must lie in [0, 1)")
    labels = np.asarray(labels)
    rng = np.random.default_rng(seed)
    held: list[np.ndarray] = []
    for c in np.unique(labels):
        members = np.flatnonzero(labels == c)
        k = int(round(fraction * len(members)))
        held.append(rng.permutation(members)[:k])
    held_out = np.sort(np.concatenate(held)) if held else np.zeros(0, dtype=np.int64)
    keep = np.setdiff1d(np.arange(len(labels)), held_out)
    return keep, held_out
