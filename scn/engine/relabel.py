"""Label correction: writing a batch's new labels into the run's label tensor, deterministically
and the same on every process, with the audit against the clean reference."""

from __future__ import annotations

import torch


def apply_relabels(
    labels: torch.Tensor, idx: torch.Tensor, new: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """labels[idx] = new, where a position that occurs several times in `idx` (a class-balanced
    sampler draws with replacement) takes the label of its LAST occurrence. Every occurrence
    writes that same value, so the result does not depend on the order of the writes (which CUDA
    leaves unspecified), and no step waits for the device. Returns (old labels, the labels written,
    kept), `kept` True at each position's last occurrence (the one the audit counts)."""
    order = torch.arange(len(idx), device=idx.device)
    last = torch.full((len(labels),), -1, dtype=torch.long, device=idx.device)
    last.scatter_reduce_(0, idx, order, reduce="amax")
    winner = new[last[idx]]
    old = labels[idx]
    labels[idx] = winner
    return old, winner, last[idx] == order


def relabel_batch(labels: torch.Tensor, clean: torch.Tensor, idx: torch.Tensor, new: torch.Tensor,
                  sums, dist, global_n: int) -> torch.Tensor:  # fmt: skip
    """Apply a method's new labels for one batch, count them against the clean reference (the
    `relabeled`, `fixed`, `broken` sums), and return (position, old, new, kept) rows. Under
    torchrun the processes exchange their changes first, so every one holds the labels a single
    process would."""
    if dist.enabled:
        sizes = dist.sizes(global_n)
        idx, new = (dist.all_gather_cat(t, sizes) for t in (idx, new))
    old, new, keep = apply_relabels(labels, idx, new)
    if dist.main:  # every process holds the whole batch's changes: one counts them
        changed = (new != old) & keep
        truth = clean[idx]
        sums.add("relabeled", changed.sum())
        sums.add("fixed", (changed & (old != truth) & (new == truth)).sum())
        sums.add("broken", (changed & (old == truth) & (new != truth)).sum())
    return torch.stack([idx, old, new, keep.long()])
