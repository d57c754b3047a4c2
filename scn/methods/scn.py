"""SCN (Wang et al., CVPR 2020) and its plain cross-entropy baseline: the importance-weight head,
rank regularisation, the relabel rule, and the two as methods.

Under torchrun each process holds its share of the global batch. RR ranks the alphas of the whole
global batch (`scn.rr_scope: global`, gathered with the gradient flowing to each process's own
alphas) or of each share (`local`)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F

from scn.config import RelabelScope, RRScope
from scn.methods.base import ClassifierModel, Method, ModelOutput, StepContext, Term
from scn.models.backbones import feature_dim
from scn.runtime.distributed import gather_with_grad

# --------------------------------------------------------------------------------- the head


class SCNHead(nn.Module):
    """alpha = sigmoid(Linear(d, 1)(f)); logits = alpha * fc(f). Without SCN: logits = fc(f)."""

    def __init__(self, in_features: int, num_classes: int, scn: bool = True):
        super().__init__()
        self.fc = nn.Linear(in_features, num_classes)
        self.alpha = nn.Linear(in_features, 1) if scn else None

    def forward(self, features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        logits = self.fc(features)
        if self.alpha is None:
            return logits, None
        alpha = torch.sigmoid(self.alpha(features))  # (B, 1)
        return alpha * logits, alpha.flatten()


class ClassifierHead(SCNHead):
    """SCNHead as a model head: the output also carries the features it classified."""

    def forward(self, features: torch.Tensor) -> ModelOutput:
        logits, alpha = super().forward(features)
        return ModelOutput(logits, alpha, features)


class SCNModel(ClassifierModel):
    """Backbone + SCN head (`scn=False`: a plain linear classifier): keys `backbone.*`, `head.fc.*`
    and `head.alpha.*`."""

    def __init__(self, backbone: nn.Module, num_classes: int, scn: bool = True):
        super().__init__(backbone, ClassifierHead(feature_dim(backbone), num_classes, scn))


# --------------------------------------------------------------------------------- the math


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
    """CE on the alpha-weighted logits + rr_weight * RR (one process). Returns (loss, ce, stats)."""
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


def local_rr(scn) -> bool:
    """scn.rr_scope=local: RR over each process's share of the batch."""
    return scn.rr_scope == RRScope["local"]


def scn_rr(alpha: torch.Tensor, scn, dist, global_n: int) -> RRStats:
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


# ------------------------------------------------------------------------------ the methods


class Baseline(Method):
    """Plain cross-entropy on plain logits: the reference every noisy-label paper reports."""

    name = "baseline"

    def build_model(self, backbone: nn.Module, num_classes: int) -> nn.Module:
        return SCNModel(backbone, num_classes, scn=False)


class SCNTerms:
    """SCN's parts on any model whose output carries alpha: RR, the group statistics and the
    relabel rule (`scn` = the run's `scn` group). Shared by SCN and SCN+RAN."""

    stat_keys = ("high", "low", "high_n", "low_n")
    score_name = "1 - alpha"

    def __init__(self, scn):
        self.scn = scn

    def rr_term(self, out: ModelOutput, ctx: StepContext) -> Term:
        rr = scn_rr(out.alpha.float(), self.scn, ctx.dist, ctx.global_n)
        ctx.stats["rr"] = rr
        return Term(rr.rr, self.scn.rr_weight, per_sample=False, local=local_rr(self.scn))

    def add_stats(self, sums, ctx: StepContext) -> None:
        rr: RRStats = ctx.stats["rr"]
        sums.add("high", rr.high_sum.double())
        sums.add("low", rr.low_sum.double())
        sums.add("high_n", rr.high_count)
        sums.add("low_n", rr.low_count)

    def relabel(self, out: ModelOutput, y: torch.Tensor, ctx: StepContext) -> torch.Tensor | None:
        if ctx.epoch < self.scn.relabel_epoch:
            return None
        low = ctx.stats["rr"].low if self.scn.relabel_scope == RelabelScope.low else None
        return relabel(out.logits, y, self.scn.margin_2, low)

    @staticmethod
    def epoch_row(totals: dict[str, float]) -> dict[str, Any]:
        def mean(key: str) -> float | None:
            return totals[key] / totals[f"{key}_n"] if totals[f"{key}_n"] else None

        return {"scn/alpha_high": mean("high"), "scn/alpha_low": mean("low")}

    @staticmethod
    def noise_score(out: ModelOutput) -> torch.Tensor:
        return 1 - out.alpha.detach().float()


# today's SCN metric names, kept for SCN runs (the `noise/` family is every method's)
SCN_ALIASES = {"noise/auc": "scn/noise_auc", "noise/precision": "scn/noise_precision"}


class SCN(Method):
    """Self-Cure Network: alpha-weighted logits, CE + rr_weight * RR, relabeling from
    `scn.relabel_epoch` (hyper-parameters in the `scn` group)."""

    name = "scn"
    score_name = SCNTerms.score_name
    stat_keys = SCNTerms.stat_keys

    def __init__(self, cfg):
        super().__init__(cfg)
        self.parts = SCNTerms(cfg.scn)

    def build_model(self, backbone: nn.Module, num_classes: int) -> nn.Module:
        return SCNModel(backbone, num_classes, scn=True)

    def terms(self, out: ModelOutput, y: torch.Tensor, ctx: StepContext) -> dict[str, Term]:
        return {**super().terms(out, y, ctx), "rr": self.parts.rr_term(out, ctx)}

    def term_names(self) -> tuple[str, ...]:
        return ("ce", "rr")

    def add_stats(self, sums, out: ModelOutput, ctx: StepContext) -> None:
        self.parts.add_stats(sums, ctx)

    def relabel(self, out: ModelOutput, y: torch.Tensor, ctx: StepContext) -> torch.Tensor | None:
        return self.parts.relabel(out, y, ctx)

    def noise_score(self, out: ModelOutput) -> torch.Tensor:
        return self.parts.noise_score(out)

    def epoch_row(self, totals: dict[str, float]) -> dict[str, Any]:
        return self.parts.epoch_row(totals)

    def metric_aliases(self) -> dict[str, str]:
        return SCN_ALIASES
