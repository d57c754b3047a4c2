"""Region Attention Networks (Wang et al., TIP 2020) and SCN+RAN: K fixed region crops plus the
whole face through one shared backbone, self- and relation-attention over the regions' features,
the region-biased loss, and SCN's head on the pooled representation for SCN+RAN."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F

from scn.errors import UserError
from scn.methods.base import Method, ModelOutput, StepContext, Term
from scn.methods.scn import SCN_ALIASES, SCNHead, SCNTerms
from scn.models.backbones import feature_dim

# the released RAN code's fixed crops (AffectNet sampling code) besides the whole face
RELEASED_CROPS = [
    [0.125, 0.25, 0.875, 1.0],  # centre-down (mouth)
    [0.0, 0.0, 0.75, 0.75],  # top-left
    [0.25, 0.0, 1.0, 0.75],  # top-right
    [0.05, 0.05, 0.95, 0.95],  # centre 0.9
    [0.1, 0.1, 0.9, 0.9],  # centre 0.8
    [0.125, 0.125, 0.875, 0.875],  # centre 0.75
    [0.125, 0.0, 0.875, 0.75],  # centre-top
]
# four corner boxes and a centred box, each 0.75 of the side (this project's first default)
CORNER_CROPS = [
    [0.0, 0.0, 0.75, 0.75],
    [0.25, 0.0, 1.0, 0.75],
    [0.0, 0.25, 0.75, 1.0],
    [0.25, 0.25, 1.0, 1.0],
    [0.125, 0.125, 0.875, 0.875],
]
CROP_SETS = {"released": RELEASED_CROPS, "corners": CORNER_CROPS}


def resolve_crops(crops) -> list:
    """`ran.crops`: a named set (released | corners) or a list of boxes."""
    if isinstance(crops, str):
        if crops not in CROP_SETS:
            raise UserError(
                f"ran.crops={crops!r}: use one of {', '.join(CROP_SETS)} or a list of "
                "[x0, y0, x1, y1] boxes"
            )
        return CROP_SETS[crops]
    return list(crops)


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

    def forward(self, f: torch.Tensor) -> ModelOutput:
        p, mu = self.attention(f)
        logits, alpha = self.classifier(p)
        return ModelOutput(logits, alpha, p, mu)


class RANModel(nn.Module):
    """State-dict keys `backbone.*` and `head.*` like SCNModel. Takes the (augmented) whole face;
    the regions are cut inside forward, so training, eval, flip TTA, predict and features all see
    the same regions. The whole face goes through the backbone at `face_size` (None: the input's
    size) and the K crops at `region_size` (None: the input's size); at one size, as one batch."""

    def __init__(self, backbone: nn.Module, num_classes: int, crops: Sequence[Sequence[float]],
                 region_size: int | None = None, scn: bool = True,
                 face_size: int | None = None):  # fmt: skip
        super().__init__()
        self.backbone = backbone
        boxes = [[0.0, 0.0, 1.0, 1.0], *check_crops(crops)]
        self.register_buffer("boxes", torch.tensor(boxes), persistent=False)
        self.region_size = region_size
        self.face_size = face_size
        self.head = RANHead(feature_dim(backbone), num_classes, scn)

    @property
    def num_regions(self) -> int:
        return int(self.boxes.shape[0])

    def _features(self, x: torch.Tensor, boxes: torch.Tensor, size: int) -> torch.Tensor:
        regions = crop_regions(x, boxes, size)
        if x.is_contiguous(memory_format=torch.channels_last):
            regions = regions.contiguous(memory_format=torch.channels_last)
        return self.backbone(regions).view(x.shape[0], boxes.shape[0], -1)

    def forward(self, x: torch.Tensor) -> ModelOutput:
        face = self.face_size or x.shape[-1]
        size = self.region_size or x.shape[-1]
        if face == size:
            features = self._features(x, self.boxes, size)
        else:
            features = torch.cat([self._features(x, self.boxes[:1], face),
                                  self._features(x, self.boxes[1:], size)], dim=1)  # fmt: skip
        with torch.autocast(x.device.type, enabled=False):  # attention and head in fp32
            return self.head(features.float())


def build_ran_model(backbone: nn.Module, num_classes: int, ran, scn: bool) -> RANModel:
    """RANModel from the `ran` group (SCN's head on the pooled representation with `scn`)."""
    for key in ("region_size", "face_size"):
        side = ran.get(key)
        if side is not None and side < 8:
            raise UserError(f"ran.{key}={side}: use null or a side of at least 8 px")
    return RANModel(backbone, num_classes, resolve_crops(ran.crops), ran.region_size, scn=scn,
                    face_size=ran.get("face_size"))  # fmt: skip


# ------------------------------------------------------------------ the region-biased loss


def region_biased_loss(mu: torch.Tensor, margin: float, reduction: str = "mean") -> torch.Tensor:
    """RB = mean over the batch of max(0, margin - (max_{i>=1} mu_i - mu_0)): some crop should
    weigh more than the whole face (region 0) by at least `margin`. `reduction="sum"`: the sum."""
    gap = mu[:, 1:].max(dim=1).values - mu[:, 0]
    hinge = torch.clamp(margin - gap, min=0.0)
    return hinge.sum() if reduction == "sum" else hinge.mean()


def ran_stat_keys(regions: int) -> tuple[str, ...]:
    """The epoch sums of RAN's region statistics."""
    return ("face_top", *(f"mu_{i}" for i in range(regions)))


def add_ran_stats(sums, mu: torch.Tensor) -> None:
    """Whole-face-top counts and per-region weight sums, on the device (no host sync)."""
    mu = mu.detach().float()
    # the whole face counts as top when no crop weighs strictly more
    sums.add("face_top", (mu[:, 0] >= mu[:, 1:].max(dim=1).values).sum())
    first = sums.index["mu_0"]  # the mu_<i> keys are consecutive: one add for all regions
    sums.values[first : first + mu.shape[1]] += mu.sum(0).double()


def ran_row(totals: dict[str, float], keys: tuple[str, ...]) -> dict[str, float]:
    """The epoch's `ran/...` metrics (means over the epoch's samples) from the sums."""
    n = max(totals["n"], 1)
    return {f"ran/{k}": totals[k] / n for k in keys}


# ------------------------------------------------------------------------------ the methods


class RAN(Method):
    """Region attention with plain CE + rb_weight * RB (hyper-parameters in the `ran` group)."""

    name = "ran"
    with_scn = False

    def __init__(self, cfg):
        super().__init__(cfg)
        self.ran = cfg.ran
        self.ran_keys = ran_stat_keys(len(resolve_crops(self.ran.crops)) + 1)
        self.stat_keys = self.ran_keys

    def build_model(self, backbone: nn.Module, num_classes: int) -> nn.Module:
        return build_ran_model(backbone, num_classes, self.ran, self.with_scn)

    def terms(self, out: ModelOutput, y: torch.Tensor, ctx: StepContext) -> dict[str, Term]:
        rb = region_biased_loss(out.mu.float(), self.ran.margin, "sum")
        return {**super().terms(out, y, ctx), "rb": Term(rb, self.ran.rb_weight)}

    def term_names(self) -> tuple[str, ...]:
        return ("ce", "rb")

    def add_stats(self, sums, out: ModelOutput, ctx: StepContext) -> None:
        add_ran_stats(sums, out.mu)

    def epoch_row(self, totals: dict[str, float]) -> dict[str, Any]:
        return ran_row(totals, self.ran_keys)

    def metric_aliases(self) -> dict[str, str]:
        return {"train/rb": "ran/rb"}


class SCNRAN(RAN):
    """SCN's importance weight, RR and relabeling on RAN's pooled representation."""

    name = "scn_ran"
    with_scn = True
    score_name = SCNTerms.score_name

    def __init__(self, cfg):
        super().__init__(cfg)
        self.parts = SCNTerms(cfg.scn)
        self.stat_keys = self.stat_keys + SCNTerms.stat_keys

    def terms(self, out: ModelOutput, y: torch.Tensor, ctx: StepContext) -> dict[str, Term]:
        return {**super().terms(out, y, ctx), "rr": self.parts.rr_term(out, ctx)}

    def term_names(self) -> tuple[str, ...]:
        return ("ce", "rb", "rr")

    def add_stats(self, sums, out: ModelOutput, ctx: StepContext) -> None:
        super().add_stats(sums, out, ctx)
        self.parts.add_stats(sums, ctx)

    def relabel(self, out: ModelOutput, y: torch.Tensor, ctx: StepContext) -> torch.Tensor | None:
        return self.parts.relabel(out, y, ctx)

    def noise_score(self, out: ModelOutput) -> torch.Tensor:
        return self.parts.noise_score(out)

    def epoch_row(self, totals: dict[str, float]) -> dict[str, Any]:
        return {**ran_row(totals, self.ran_keys), **self.parts.epoch_row(totals)}

    def metric_aliases(self) -> dict[str, str]:
        return {**super().metric_aliases(), **SCN_ALIASES}
