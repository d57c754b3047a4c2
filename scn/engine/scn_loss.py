"""The SCN math: rank regularization, the training loss and the relabel rule (paper + original code)."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F


def split_groups(alpha: torch.Tensor, beta: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Indices of the high-importance group (the floor(beta * B) largest alphas) and of the rest."""
    order = torch.argsort(alpha.detach(), descending=True, stable=True)
    m = int(beta * alpha.shape[0])  # int() floors a positive number, as the original code does
    return order[:m], order[m:]


@dataclass
class RRStats:
    """Sums and counts (not means) so epochs and processes can add them up. The sums stay 0-d
    tensors on the model's device, so a training step never waits for the device."""

    rr: torch.Tensor
    high_sum: torch.Tensor
    high_count: int
    low_sum: torch.Tensor
    low_count: int
    low: torch.Tensor | None = None  # (B,) bool: which of the batch's samples are in the low group


def rank_regularization(alpha: torch.Tensor, beta: float, margin_1: float) -> RRStats:
    """RR = max(0, margin_1 - (mean(alpha_high) - mean(alpha_low))); 0 when a group is empty."""
    high, low = split_groups(alpha, beta)
    a = alpha.detach()
    in_low = torch.zeros_like(a, dtype=torch.bool)
    in_low[low] = True
    stats = RRStats(alpha.new_zeros(()), a[high].sum(), len(high), a[low].sum(), len(low), in_low)
    if len(high) and len(low):
        gap = alpha[high].mean() - alpha[low].mean()
        stats.rr = torch.clamp(margin_1 - gap, min=0.0)
    return stats


def scn_loss(
    logits: torch.Tensor,
    alpha: torch.Tensor,
    targets: torch.Tensor,
    beta: float,
    margin_1: float,
    rr_weight: float = 1.0,
) -> tuple[torch.Tensor, torch.Tensor, RRStats]:
    """CE on the alpha-weighted logits + rr_weight * RR. Returns (loss, ce, rr stats)."""
    ce = F.cross_entropy(logits.float(), targets)
    stats = rank_regularization(alpha.float(), beta, margin_1)
    return ce + rr_weight * stats.rr, ce, stats


def relabel(
    logits: torch.Tensor,
    labels: torch.Tensor,
    margin_2: float,
    candidates: torch.Tensor | None = None,
) -> torch.Tensor:
    """New labels: argmax(p) where max(p) - p[label] > margin_2, p = softmax(logits); else unchanged.

    `candidates` (bool mask) limits who may change: the low-importance group in the paper's variant.
    """
    probs = torch.softmax(logits.detach().float(), dim=1)
    p_max, predicted = probs.max(dim=1)
    p_label = probs.gather(1, labels.view(-1, 1)).squeeze(1)
    change = (p_max - p_label) > margin_2
    if candidates is not None:
        change &= candidates
    return torch.where(change, predicted, labels)
