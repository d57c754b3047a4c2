"""EAC, "Learn From All: Erasing Attention Consistency" (Zhang et al., ECCV 2022).

Every train image and its horizontal flip, the flip with its own random erasing, go through the
model as one batch. Class activation maps come from the last feature map and the classifier's
weights (detached: the consistency loss trains the features, not the classifier); the loss is CE on
the originals plus `lam` times the MSE between the originals' maps and the flipped views' maps
flipped back. Only the originals get CE. Test time is a plain classifier."""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from scn.data.augment import BatchTrain
from scn.errors import UserError
from scn.methods.base import Method, ModelOutput, StepContext, Term
from scn.models.backbones import feature_dim


def class_activation_maps(fmap: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """(B, C, H, W) feature maps x (K, C) classifier rows -> (B, K, H, W), the rows detached."""
    return torch.einsum("bchw,kc->bkhw", fmap.float(), weight.detach().float())


def consistency(cam: torch.Tensor, cam_flipped: torch.Tensor) -> torch.Tensor:
    """Per sample, the mean over classes and positions of (CAM(x) - flip(CAM(flip(x))))^2: summed
    over a batch and divided by its size, EAC's MSE."""
    return (cam - cam_flipped.flip(-1)).pow(2).flatten(1).mean(1)


def spatial_map_problem(backbone: nn.Module, size: int = 64) -> str | None:
    """None when the backbone's pooled feature is the global average of its last feature map
    (CAMs then explain its classifier), else why not."""
    if not hasattr(backbone, "forward_features") or not hasattr(backbone, "forward_head"):
        return "it has no forward_features/forward_head"
    was = backbone.training
    backbone.eval()
    try:
        with torch.no_grad():
            x = torch.randn(2, 3, size, size, device=next(backbone.parameters()).device)
            fmap = backbone.forward_features(x)
            if fmap.ndim != 4 or fmap.shape[1] != feature_dim(backbone):
                return f"its last feature map has shape {tuple(fmap.shape)}"
            pooled = backbone.forward_head(fmap, pre_logits=True)
            if not torch.allclose(fmap.float().mean((2, 3)), pooled.float(), atol=1e-4, rtol=1e-3):
                return "its pooled feature is not the average of its last feature map"
    except RuntimeError as e:  # e.g. an input size the architecture cannot take
        return f"a {size} px probe failed: {e}"
    finally:
        backbone.train(was)
    return None


class CAMClassifier(nn.Module):
    """Backbone + linear classifier (keys `backbone.*`, `head.fc.*`, like the baseline), returning
    the class activation maps too while training."""

    def __init__(self, backbone: nn.Module, num_classes: int):
        super().__init__()
        self.backbone = backbone
        self.head = nn.Module()
        self.head.fc = nn.Linear(feature_dim(backbone), num_classes)

    def forward(self, x: torch.Tensor) -> ModelOutput:
        fmap = self.backbone.forward_features(x)
        pooled = self.backbone.forward_head(fmap, pre_logits=True)
        with torch.autocast(x.device.type, enabled=False):
            logits = self.head.fc(pooled.float())
            extra = (
                {"cam": class_activation_maps(fmap, self.head.fc.weight)} if self.training else None
            )
        return ModelOutput(logits, None, pooled, None, extra)


class EAC(Method):
    """Erasing attention consistency (hyper-parameters in `method`: lam, the flip's erasing)."""

    name = "eac"

    def __init__(self, cfg):
        super().__init__(cfg)
        m = cfg.method
        self.lam = float(m.lam)
        # only the erasing of BatchTrain is used: the flipped view's own box
        self.eraser = BatchTrain(8, (0, 0, 0), (1, 1, 1), flip_or_noise_p=0.0,
                                 erasing_p=m.erasing_p, erasing_scale=m.erasing_scale,
                                 erasing_ratio=m.erasing_ratio)  # fmt: skip

    def build_model(self, backbone: nn.Module, num_classes: int) -> nn.Module:
        problem = spatial_map_problem(backbone)
        if problem:
            raise UserError(
                f"method=eac needs class activation maps: a backbone whose pooled feature is the "
                f"average of its last feature map, feeding a linear classifier; backbone "
                f"{type(backbone).__name__} ({self.cfg.backbone.name}) does not: {problem}. "
                "Use e.g. backbone=resnet18 or backbone=resnet10t"
            )
        return CAMClassifier(backbone, num_classes)

    def train_inputs(self, x: torch.Tensor, ctx: StepContext) -> torch.Tensor:
        """The batch and its mirror images, each mirror with its own erasing box (drawn for the
        whole global batch, this process's share applied, as the pipeline draws its boxes)."""
        start, _ = ctx.dist.shard(ctx.global_n)
        boxes = self.eraser.erase_boxes(ctx.global_n, x.shape[-2], x.shape[-1], x.device, ctx.rng())
        flipped = boxes.slice(start, start + len(x)).apply(x.flip(-1))
        return torch.cat([x, flipped])

    def terms(self, out: ModelOutput, y: torch.Tensor, ctx: StepContext) -> dict[str, Term]:
        n = len(y)
        ce = F.cross_entropy(out.logits[:n].float(), y, reduction="sum")
        cam = out.extra["cam"]
        return {"ce": Term(ce), "cam": Term(consistency(cam[:n], cam[n:]).sum(), self.lam)}

    def term_names(self) -> tuple[str, ...]:
        return ("ce", "cam")
