"""Face-identity pretraining heads: an embedding layer after the pooled feature, and a margin
classifier over normalised embeddings and class centres (ArcFace, CosFace, or normalised softmax).

Memory: with C identities the B x C logits are the one large activation of a step. They are built
once in fp32 (the cosines from one matmul), scaled and changed at the target column in place (no
one-hot mask), and the loss (`logits_cross_entropy`) keeps only them and a per-row log-sum-exp for
its backward, not a log_softmax copy. Backward then holds the B x C gradient besides.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
import torch.nn as nn
import torch.nn.functional as F

from scn.errors import UserError
from scn.models.backbones import feature_dim
from scn.models.iresnet import IResNet

LOSSES = ("arcface", "cosface", "softmax")
DEFAULT_MARGIN = {"arcface": 0.5, "cosface": 0.35, "softmax": 0.0}


def arcface_target(cos: torch.Tensor, margin: float) -> torch.Tensor:
    """cos(theta + m) for the target cosine; where theta + m would pass pi (cos < -cos m) the
    angle would wrap and the margin make the target easier, so insightface's fallback
    cos(theta) - m * sin(m) is used there instead. It is not continuous at theta = pi - m: the
    margin side ends at cos(pi) = -1, the fallback starts at -cos(m) - m * sin(m), a drop of
    cos(m) + m * sin(m) - 1 (0.117 at m = 0.5). Both sides fall with theta and the jump is
    downwards, so the target still decreases monotonically with the angle."""
    sin = torch.sqrt((1.0 - cos * cos).clamp_min(1e-12))
    with_margin = cos * math.cos(margin) - sin * math.sin(margin)
    fallback = cos - margin * math.sin(margin)
    return torch.where(cos > -math.cos(margin), with_margin, fallback)


def margin_logits(cos: torch.Tensor, y: torch.Tensor, loss: str, scale: float,
                  margin: float) -> tuple[torch.Tensor, torch.Tensor]:  # fmt: skip
    """s * cos for every class, s * target(cos_y) at the label: `cos` (B, C) is modified in place
    and returned (no second B x C tensor), with the plain target cosines cos_y (B,)."""
    rows = torch.arange(len(y), device=y.device)
    # (B,), a copy; indexing saves no B x C tensor for backward (gather would)
    plain = cos[rows, y]
    target = plain
    if loss == "arcface":
        target = arcface_target(plain, margin)
    elif loss == "cosface":
        target = plain - margin
    logits = cos.mul_(scale)
    logits[rows, y] = target * scale
    return logits, plain


class _LogitsCE(torch.autograd.Function):
    """Mean cross-entropy that saves the logits and a (B,) log-sum-exp for backward instead of a
    B x C log_softmax; backward builds the one B x C gradient in place."""

    @staticmethod
    def forward(ctx, logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        lse = torch.logsumexp(logits, dim=1)
        loss = (lse - logits.gather(1, y.view(-1, 1)).squeeze(1)).mean()
        ctx.save_for_backward(logits, y, lse)
        return loss

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        logits, y, lse = ctx.saved_tensors
        g = torch.sub(logits, lse.unsqueeze(1)).exp_()  # softmax
        g.scatter_add_(1, y.view(-1, 1), torch.full_like(lse, -1.0).unsqueeze(1))
        return g.mul_(grad / logits.shape[0]), None


def logits_cross_entropy(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """F.cross_entropy(logits, y) without the extra B x C copy."""
    return _LogitsCE.apply(logits, y)


class MarginHead(nn.Module):
    """Class centres W (C, D); cosines between normalised embeddings and centres, then the loss's
    margin at the target. `softmax` is the normalised softmax (NormFace): s * cos, no margin."""

    def __init__(self, dim: int, num_classes: int, loss: str, scale: float, margin: float):
        super().__init__()
        if loss not in LOSSES:
            raise UserError(f"pretrain.loss={loss!r}; use one of {', '.join(LOSSES)}")
        self.weight = nn.Parameter(torch.empty(num_classes, dim).normal_(0, 0.01))
        self.loss, self.scale, self.margin = loss, float(scale), float(margin)

    def cosines(self, emb: torch.Tensor) -> torch.Tensor:
        return F.linear(F.normalize(emb.float()), F.normalize(self.weight.float()))

    def forward(self, emb: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """The training logits (B, C) in fp32."""
        return self.logits_and_target(emb, y)[0]

    def logits_and_target(self, emb: torch.Tensor, y: torch.Tensor):
        """The training logits and the plain target cosines (B,), to put back after backward so the
        logits' argmax is the plain identity prediction."""
        return margin_logits(self.cosines(emb), y, self.loss, self.scale, self.margin)

    @torch.no_grad()
    def without_margin(self, logits: torch.Tensor, y: torch.Tensor, plain: torch.Tensor):
        """s * cos for every class, in place (call after backward: the loss saved the logits)."""
        logits[torch.arange(len(y), device=y.device), y] = plain.detach() * self.scale
        return logits


def embedding_layer(backbone: nn.Module, dim: int) -> tuple[nn.Module, int]:
    """Linear (no bias) + BatchNorm1d from the pooled feature to `dim`, as arcface_torch's `fc` and
    `features`; an IResNet already ends in its 512-d embedding and keeps it (identity here)."""
    if isinstance(backbone, IResNet):
        return nn.Identity(), feature_dim(backbone)
    return nn.Sequential(nn.Linear(feature_dim(backbone), dim, bias=False),
                         nn.BatchNorm1d(dim)), dim  # fmt: skip


class PretrainOutput(NamedTuple):
    logits: torch.Tensor
    alpha: None = None
    features: torch.Tensor | None = None
    mu: None = None


class PretrainModel(nn.Module):
    """`backbone.*` (what backbone.pth holds), `embedding.*` and `head.*` (last.pt only).
    forward(x) returns the embedding; the margin head needs the labels and runs in the step."""

    def __init__(self, backbone: nn.Module, num_classes: int, loss: str, scale: float,
                 margin: float, embedding_dim: int):  # fmt: skip
        super().__init__()
        self.backbone = backbone
        self.embedding, dim = embedding_layer(backbone, embedding_dim)
        self.head = MarginHead(dim, num_classes, loss, scale, margin)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.embedding(self.backbone(x))
