"""One optimisation step, composing the method's loss terms: objective = sum of weight * term.

Under torchrun each process holds its share of the global batch. Per-sample terms are summed and
divided by the global batch size; a batch-level term (SCN's RR over the gathered alphas) is the same
on every process, its gradient reaching only this process's inputs. The objective each process
backpropagates is scaled by the process count, so that DistributedDataParallel's average of the
processes' gradients is the single-process gradient."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from scn.engine.accel import Accel
from scn.methods.base import Method, ModelOutput, StepContext, Term


@dataclass
class StepResult:
    """What a step leaves for the epoch's metrics: sums over this process's samples, on the device."""

    out: ModelOutput  # what the loop reads (the original images' rows)
    loss_sum: (
        torch.Tensor
    )  # the loss times this share's size (batch-level terms counted per sample)
    term_sums: dict[str, torch.Tensor]  # each term unweighted, times this share's size


def compose(terms: dict[str, Term], n: int, world: int, global_n: int):
    """(objective to backpropagate, loss sum, per-term sums) from a step's terms."""
    objective = torch.zeros((), device=next(iter(terms.values())).value.device)
    loss_sum = torch.zeros_like(objective)
    sums = {}
    for name, t in terms.items():
        if t.per_sample:
            objective = objective + t.weight * t.value * (world / global_n)
            sums[name] = t.value.detach()
        else:
            # global: every process holds the global value; local: the mean of the processes'
            objective = objective + t.weight * t.value * (1 if t.local else world)
            sums[name] = t.value.detach() * n
        loss_sum = loss_sum + t.weight * sums[name]
    return objective, loss_sum, sums


def train_step(forward, optimizer, accel: Accel, scaler, method: Method, x: torch.Tensor,
               y: torch.Tensor, ctx: StepContext) -> StepResult:  # fmt: skip
    """One optimisation step: the model runs in the configured precision, the losses in fp32.
    `ctx.global_n`: the global batch size (this process holds `dist.shard(global_n)` of it).
    Nothing here waits for the device."""
    accel.step_begin()
    with accel.autocast():
        out = forward(method.train_inputs(x, ctx))
    terms = method.terms(out, y, ctx)
    objective, loss_sum, sums = compose(terms, len(y), ctx.dist.world, ctx.global_n)
    optimizer.zero_grad(set_to_none=True)
    if scaler is not None:
        scaler.scale(objective).backward()
        scaler.step(optimizer)
        scaler.update()
    else:
        objective.backward()
        optimizer.step()
    return StepResult(method.train_output(out, y, ctx), loss_sum, sums)
