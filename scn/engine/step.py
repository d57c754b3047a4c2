"""One optimisation step, composing the method's loss terms: CE (on SCN's weighted logits, or plain
logits for the baseline), SCN's rank regularisation, and RAN's region-biased loss.

Under torchrun each process holds its share of the global batch. Per-sample terms are summed and
divided by the global batch size; RR ranks the alphas of the whole global batch (`scn.rr_scope:
global`, gathered with the gradient flowing to each process's own alphas) or of each share
(`local`). The objective each process backpropagates is scaled by the process count, so that
DistributedDataParallel's average of the processes' gradients is the single-process gradient."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from scn.config import RRScope
from scn.engine.accel import Accel
from scn.engine.distributed import SINGLE, Dist, gather_with_grad
from scn.engine.ran_loss import rb_term
from scn.engine.scn_loss import RRStats, rank_regularization


@dataclass
class StepResult:
    """What a step leaves for the epoch's metrics: sums over this process's samples, on the device."""

    out: object  # the model output (logits, alpha, mu)
    loss_sum: torch.Tensor  # the loss times this share's size (RR counted per sample)
    ce_sum: torch.Tensor
    rr: RRStats | None  # SCN's group statistics; counted by one process under rr_scope=global


def local_rr(scn) -> bool:
    """scn.rr_scope=local (checkpoints from before the key: global, the single-process maths)."""
    return scn.get("rr_scope", "global") == RRScope["local"]


def scn_rr(alpha: torch.Tensor, scn, dist: Dist, global_n: int) -> RRStats:
    """RR over the global batch's alphas (or this share's, rr_scope=local). With the global scope
    every process holds the same RR and group sums: rank 0 counts them, so their sums over processes
    are the single-process values; `low` marks this share's low-group samples either way."""
    if not dist.enabled or local_rr(scn):
        return rank_regularization(alpha, scn.beta, scn.margin_1)
    stats = rank_regularization(gather_with_grad(alpha, dist, global_n), scn.beta, scn.margin_1)
    start, end = dist.shard(global_n)
    stats.low = stats.low[start:end]
    if not dist.main:
        zero = stats.high_sum.new_zeros(())
        stats.high_sum, stats.low_sum, stats.high_count, stats.low_count = zero, zero, 0, 0
    return stats


def train_step(forward, optimizer, accel: Accel, scaler, scn, x: torch.Tensor, y: torch.Tensor,
               ran=None, dist: Dist = SINGLE, global_n: int | None = None) -> StepResult:  # fmt: skip
    """One optimisation step: the model runs in the configured precision, the losses in fp32.
    `global_n`: the global batch size (this process holds `dist.shard(global_n)` of it). Nothing
    here waits for the device."""
    n = len(y)
    global_n = global_n or n
    accel.step_begin()
    with accel.autocast():
        out = forward(x)
    ce_sum = F.cross_entropy(out.logits.float(), y, reduction="sum")
    per_sample = ce_sum + rb_term(out.mu, ran)  # RAN: rb_weight * region-biased loss; else 0
    rr = None
    # DDP averages the processes' gradients: each objective is scaled by the process count
    objective = per_sample * (dist.world / global_n)
    loss_sum = per_sample.detach()
    if scn.enabled:
        rr = scn_rr(out.alpha.float(), scn, dist, global_n)
        # global: every process holds the global RR, its gradient reaching only its own alphas;
        # local: the mean of the processes' RRs
        objective = objective + scn.rr_weight * rr.rr * (1 if local_rr(scn) else dist.world)
        loss_sum = loss_sum + scn.rr_weight * rr.rr.detach() * n
    optimizer.zero_grad(set_to_none=True)
    if scaler is not None:
        scaler.scale(objective).backward()
        scaler.step(optimizer)
        scaler.update()
    else:
        objective.backward()
        optimizer.step()
    return StepResult(out, loss_sum, ce_sum.detach(), rr)
