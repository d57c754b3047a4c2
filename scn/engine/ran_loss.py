"""RAN's region-biased loss and the per-epoch region statistics (sums, so epochs add up)."""

from __future__ import annotations

import torch
import torch.nn as nn

from scn.engine.state import DeviceSums


def region_biased_loss(mu: torch.Tensor, margin: float, reduction: str = "mean") -> torch.Tensor:
    """RB = mean over the batch of max(0, margin - (max_{i>=1} mu_i - mu_0)): some crop should
    weigh more than the whole face (region 0) by at least `margin`. `reduction="sum"`: the sum."""
    gap = mu[:, 1:].max(dim=1).values - mu[:, 0]
    hinge = torch.clamp(margin - gap, min=0.0)
    return hinge.sum() if reduction == "sum" else hinge.mean()


def rb_term(mu: torch.Tensor | None, ran) -> torch.Tensor | float:
    """What RAN adds to the loss, summed over the batch: ran.rb_weight * RB * B in fp32 (the step
    divides by the global batch); 0 for models without regions."""
    if mu is None:
        return 0.0
    return ran.rb_weight * region_biased_loss(mu.float(), ran.margin, "sum")


def ran_sum_keys(model: nn.Module) -> tuple[str, ...]:
    """DeviceSums keys of RAN's epoch statistics; () for models without regions."""
    regions = getattr(model, "num_regions", 0)
    return ("rb", "face_top", *(f"mu_{i}" for i in range(regions))) if regions else ()


def add_ran_sums(sums: DeviceSums, mu: torch.Tensor | None, ran) -> None:
    """Accumulate RB (times batch size), whole-face-top counts and per-region weight sums, on the
    device (no host sync); nothing for models without regions."""
    if mu is None:
        return
    mu = mu.detach().float()
    n = mu.shape[0]
    sums.add("rb", region_biased_loss(mu, ran.margin).double() * n)
    # the whole face counts as top when no crop weighs strictly more
    sums.add("face_top", (mu[:, 0] >= mu[:, 1:].max(dim=1).values).sum())
    first = sums.index["mu_0"]  # the mu_<i> keys are consecutive: one add for all regions
    sums.values[first : first + mu.shape[1]] += mu.sum(0).double()


def ran_row(totals: dict[str, float], keys: tuple[str, ...]) -> dict[str, float]:
    """The epoch's `ran/...` metrics (means over the epoch's samples) from the sums."""
    n = max(totals["n"], 1)
    return {f"ran/{k}": totals[k] / n for k in keys}
