"""Region Attention Networks (Wang et al., TIP 2020) and SCN+RAN: K fixed region crops plus the
whole face through one shared backbone, self- and relation-attention over the regions' features,
and SCN's head on the pooled representation when SCN is on."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F
from omegaconf import DictConfig

from scn.errors import UserError
from scn.models.backbones import feature_dim
from scn.models.scn_model import SCNHead, SCNModel, SCNOutput


def check_crops(crops: Sequence[Sequence[float]], key: str = "ran.crops") -> list[list[float]]:
    """Boxes as [x0, y0, x1, y1] fractions inside [0, 1] with x1 > x0 and y1 > y0; a bad one
    stops the run before any training, naming the entry."""
    if not crops:
        raise UserError(f"{key} is empty; list at least one [x0, y0, x1, y1] box")
    boxes = []
    for i, raw in enumerate(crops):
        try:
            box = [float(v) for v in raw]
        except (TypeError, ValueError):
            box = []
        if len(box) != 4:
            raise UserError(f"{key}[{i}]={raw}: a box is [x0, y0, x1, y1] (4 numbers)")
        boxes.append(box)
    for i, box in enumerate(boxes):
        x0, y0, x1, y1 = box
        if min(box) < 0 or max(box) > 1:
            raise UserError(f"{key}[{i}]={box}: coordinates are fractions of the face in [0, 1]")
        if x1 <= x0 or y1 <= y0:
            raise UserError(f"{key}[{i}]={box}: needs x1 > x0 and y1 > y0")
    return boxes


def region_grid(boxes: torch.Tensor, size: int) -> torch.Tensor:
    """Sampling grids (R, size, size, 2) in grid_sample's [-1, 1] coordinates: output pixel j of a
    box [x0, x1] samples the input at fraction x0 + (j + 0.5) / size * (x1 - x0), so a box whose
    pixel size equals `size` copies its pixels exactly."""
    # built on the boxes' device from a buffer: no host-to-device copy in the training step
    steps = (torch.arange(size, dtype=torch.float32, device=boxes.device) + 0.5) / size  # (S,)
    b = boxes.float()
    xs = b[:, 0:1] + steps * (b[:, 2:3] - b[:, 0:1])  # (R, S)
    ys = b[:, 1:2] + steps * (b[:, 3:4] - b[:, 1:2])
    gx = (2 * xs - 1)[:, None, :].expand(-1, size, -1)
    gy = (2 * ys - 1)[:, :, None].expand(-1, -1, size)
    return torch.stack([gx, gy], dim=-1)


def crop_regions(x: torch.Tensor, boxes: torch.Tensor, size: int) -> torch.Tensor:
    """Cut every box out of every image and resize it to size x size in one batched bilinear
    sampling: (B, C, H, W) -> (B * R, C, size, size), the regions of an image consecutive."""
    b, r = x.shape[0], boxes.shape[0]
    grid = region_grid(boxes.to(x.device), size)
    grid = grid.unsqueeze(0).expand(b, -1, -1, -1, -1).reshape(b * r, size, size, 2)
    src = x.unsqueeze(1).expand(-1, r, -1, -1, -1).reshape(b * r, *x.shape[1:])
    return F.grid_sample(src, grid.to(src.dtype), mode="bilinear", padding_mode="border",
                         align_corners=False)  # fmt: skip


class RegionAttention(nn.Module):
    """mu_i = sigmoid(Linear(d, 1)(f_i)); F = sum mu_i f_i / sum mu_i;
    nu_i = sigmoid(Linear(2d, 1)([f_i; F])); P = sum mu_i nu_i [f_i; F] / sum mu_i nu_i."""

    def __init__(self, dim: int):
        super().__init__()
        self.self_att = nn.Linear(dim, 1)
        self.rel_att = nn.Linear(2 * dim, 1)

    def forward(self, f: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """f: (B, R, d) -> (P (B, 2d), mu (B, R))."""
        mu = torch.sigmoid(self.self_att(f)).squeeze(-1)  # (B, R)
        pooled = (mu.unsqueeze(-1) * f).sum(1) / mu.sum(1, keepdim=True)  # (B, d)
        pairs = torch.cat([f, pooled.unsqueeze(1).expand_as(f)], dim=-1)  # (B, R, 2d)
        w = mu * torch.sigmoid(self.rel_att(pairs)).squeeze(-1)  # mu_i * nu_i
        return (w.unsqueeze(-1) * pairs).sum(1) / w.sum(1, keepdim=True), mu


class RANHead(nn.Module):
    """Region attention, then SCN's head (or a plain classifier) on the 2d-dim representation P."""

    def __init__(self, in_features: int, num_classes: int, scn: bool = True):
        super().__init__()
        self.attention = RegionAttention(in_features)
        self.classifier = SCNHead(2 * in_features, num_classes, scn)

    def forward(self, f: torch.Tensor):
        p, mu = self.attention(f)
        logits, alpha = self.classifier(p)
        return logits, alpha, p, mu


class RANModel(nn.Module):
    """State-dict keys `backbone.*` and `head.*` like SCNModel. Takes the (augmented) whole face;
    the regions are cut inside forward, so training, eval, flip TTA, predict and features all see
    the same regions, and the whole face plus K crops go through the backbone as one batch."""

    def __init__(self, backbone: nn.Module, num_classes: int, crops: Sequence[Sequence[float]],
                 region_size: int | None = None, scn: bool = True):  # fmt: skip
        super().__init__()
        self.backbone = backbone
        boxes = [[0.0, 0.0, 1.0, 1.0], *check_crops(crops)]
        self.register_buffer("boxes", torch.tensor(boxes), persistent=False)
        self.region_size = region_size
        self.head = RANHead(feature_dim(backbone), num_classes, scn)

    @property
    def num_regions(self) -> int:
        return int(self.boxes.shape[0])

    def forward(self, x: torch.Tensor) -> SCNOutput:
        b, r = x.shape[0], self.num_regions
        size = self.region_size or x.shape[-1]
        regions = crop_regions(x, self.boxes, size)
        if x.is_contiguous(memory_format=torch.channels_last):
            regions = regions.contiguous(memory_format=torch.channels_last)
        features = self.backbone(regions)
        with torch.autocast(x.device.type, enabled=False):  # attention and head in fp32
            f = features.float().view(b, r, -1)
            logits, alpha, p, mu = self.head(f)
        return SCNOutput(logits, alpha, p, mu)


def build_model(backbone: nn.Module, num_classes: int, cfg: DictConfig) -> nn.Module:
    """SCNModel, or RANModel when `ran.enabled` (SCN+RAN with `scn.enabled`); configs written before
    the `ran` group existed build SCNModel."""
    ran = cfg.get("ran")
    if ran is None or not ran.enabled:
        return SCNModel(backbone, num_classes, scn=cfg.scn.enabled)
    if ran.region_size is not None and ran.region_size < 8:
        raise UserError(f"ran.region_size={ran.region_size}: use null or a side of at least 8 px")
    return RANModel(backbone, num_classes, ran.crops, ran.region_size, scn=cfg.scn.enabled)
