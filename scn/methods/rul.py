"""RUL, "Relative Uncertainty Learning for Facial Expression Recognition" (Zhang et al., NeurIPS 2021).

Two heads on the last feature map give a mean feature and a log-variance (64-d). While training,
each sample is paired with another of the batch (a random permutation); the pair's features are
mixed with weights from their uncertainties u = mean(exp(logvar)), normalised over the pair, and the
mixed feature is classified with the add-up loss: half CE to each label. At test time the
classifier takes the mean feature. The mean uncertainty is each sample's noise score.

The feature map is average-pooled to `method.grid` x `method.grid` before the heads (7 x 7, the
released code's map for ResNet-18 at 224 px, where the pooling changes nothing), so one head fits
every input size. Under torchrun the pairs are drawn within each process's share."""

from __future__ import annotations

from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F

from scn.errors import UserError
from scn.methods.base import Method, ModelOutput, StepContext, Term
from scn.models.backbones import feature_dim

BN_EPS = 2e-5  # the released heads' BatchNorm epsilon


def branch(channels: int, grid: int, dim: int, dropout: float) -> nn.Sequential:
    """BatchNorm2d (no affine) -> Dropout -> flatten -> Linear -> BatchNorm1d, as released."""
    return nn.Sequential(
        nn.BatchNorm2d(channels, affine=False, eps=BN_EPS),
        nn.Dropout(dropout),
        nn.Flatten(),
        nn.Linear(channels * grid * grid, dim),
        nn.BatchNorm1d(dim, eps=BN_EPS),
    )


def mix(mu: torch.Tensor, logvar: torch.Tensor, perm: torch.Tensor):
    """The pair-mixed feature z = w1 * mu + w2 * mu[perm], w1 = u / (u + u[perm]),
    u = mean(exp(logvar)) per sample. Returns (z, w1)."""
    u = logvar.exp().mean(1, keepdim=True)
    w1 = u / (u + u[perm])
    return w1 * mu + (1 - w1) * mu[perm], w1.squeeze(1)


def add_up_loss(logits: torch.Tensor, y: torch.Tensor, perm: torch.Tensor) -> torch.Tensor:
    """Summed over the batch: 0.5 * CE(logits, y) + 0.5 * CE(logits, y[perm])."""
    return 0.5 * (F.cross_entropy(logits, y, reduction="sum")
                  + F.cross_entropy(logits, y[perm], reduction="sum"))  # fmt: skip


class RULHead(nn.Module):
    def __init__(self, channels: int, num_classes: int, grid: int, dim: int, dropout: float):
        super().__init__()
        self.pool = nn.AdaptiveAvgPool2d(grid)
        self.mean = branch(channels, grid, dim, dropout)
        self.logvar = branch(channels, grid, dim, dropout)
        self.fc = nn.Linear(dim, num_classes)

    def forward(self, fmap: torch.Tensor) -> ModelOutput:
        f = self.pool(fmap)
        mu, logvar = self.mean(f), self.logvar(f)
        return ModelOutput(self.fc(mu), None, mu, None, {"logvar": logvar})


class RULModel(nn.Module):
    """Keys `backbone.*` and `head.{mean,logvar,fc}.*`; forward gives fc(mean) as the logits."""

    def __init__(self, backbone: nn.Module, head: RULHead):
        super().__init__()
        self.backbone = backbone
        self.head = head

    def forward(self, x: torch.Tensor) -> ModelOutput:
        fmap = self.backbone.forward_features(x)
        with torch.autocast(x.device.type, enabled=False):
            return self.head(fmap.float())


class RUL(Method):
    """Relative uncertainty learning (hyper-parameters in `method`: dim, grid, dropout,
    fc_lr_mult)."""

    name = "rul"
    score_name = "uncertainty"

    def build_model(self, backbone: nn.Module, num_classes: int) -> nn.Module:
        m = self.cfg.method
        if not hasattr(backbone, "forward_features"):
            raise UserError(
                f"method=rul needs the backbone's last feature map; backbone "
                f"{self.cfg.backbone.name} has no forward_features"
            )
        head = RULHead(feature_dim(backbone), num_classes, m.grid, m.dim, m.dropout)
        self.fc = head.fc  # classifies the mixed features in the loss
        return RULModel(backbone, head)

    def param_groups(self, model: nn.Module, lr: float) -> list[dict[str, Any]]:
        """The classifier at `fc_lr_mult` times the lr (the released recipe: 10x)."""
        fc = list(model.head.fc.parameters())
        ids = {id(p) for p in fc}
        rest = [p for p in model.parameters() if id(p) not in ids]
        mult = float(self.cfg.method.fc_lr_mult)
        if mult == 1.0:
            return [{"params": rest + fc}]
        return [{"params": rest}, {"params": fc, "lr": lr * mult}]

    def terms(self, out: ModelOutput, y: torch.Tensor, ctx: StepContext) -> dict[str, Term]:
        rng = ctx.rng()
        perm = torch.randperm(len(y), generator=rng, device=rng.device).to(y.device)
        z, _ = mix(out.features.float(), out.extra["logvar"].float(), perm)
        return {"ce": Term(add_up_loss(self.fc(z), y, perm))}

    def noise_score(self, out: ModelOutput) -> torch.Tensor:
        return out.extra["logvar"].detach().float().exp().mean(1)
