"""IResNet (insightface arcface_torch) with its module and parameter names, so an arcface
`backbone.pth` loads strictly; registered with timm so `timm.create_model("iresnet18")` works.

Forward returns the 512-d face embedding (fc + features BatchNorm1d). At inputs other than 112 px
the layer4 map is adaptively pooled to 7x7 before the flatten, so `fc` keeps its shape.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F
from timm.models import register_model

DEPTHS = {"iresnet18": (2, 2, 2, 2), "iresnet34": (3, 4, 6, 3), "iresnet50": (3, 4, 14, 3),
          "iresnet100": (3, 13, 30, 3)}  # fmt: skip
PRETRAINED_CFG = {
    "input_size": (3, 112, 112),
    "mean": (0.5, 0.5, 0.5),  # (x / 255 - 0.5) / 0.5, as arcface_torch trains
    "std": (0.5, 0.5, 0.5),
    "interpolation": "bilinear",
    "crop_pct": 1.0,
    "classifier": "head",
}


class IBasicBlock(nn.Module):
    """bn1 -> conv1 3x3 -> bn2 -> prelu -> conv2 3x3 (stride) -> bn3, plus identity/downsample."""

    def __init__(
        self, inplanes: int, planes: int, stride: int = 1, downsample: nn.Module | None = None
    ):
        super().__init__()
        self.bn1 = nn.BatchNorm2d(inplanes, eps=1e-05)
        self.conv1 = nn.Conv2d(inplanes, planes, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes, eps=1e-05)
        self.prelu = nn.PReLU(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(planes, eps=1e-05)
        self.downsample = downsample

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.bn3(self.conv2(self.prelu(self.bn2(self.conv1(self.bn1(x))))))
        return out + identity


class IResNet(nn.Module):
    def __init__(self, layers: tuple[int, ...], num_features: int = 512, dropout: float = 0.0,
                 num_classes: int = 0, in_chans: int = 3, **kwargs):  # fmt: skip
        super().__init__()
        self.conv1 = nn.Conv2d(in_chans, 64, 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(64, eps=1e-05)
        self.prelu = nn.PReLU(64)
        widths = (64, 128, 256, 512)
        inplanes = 64
        for i, (width, blocks) in enumerate(zip(widths, layers, strict=True), start=1):
            downsample = nn.Sequential(
                nn.Conv2d(inplanes, width, 1, 2, bias=False), nn.BatchNorm2d(width, eps=1e-05)
            )
            stage = [IBasicBlock(inplanes, width, 2, downsample)]
            stage += [IBasicBlock(width, width) for _ in range(1, blocks)]
            setattr(self, f"layer{i}", nn.Sequential(*stage))
            inplanes = width
        self.bn2 = nn.BatchNorm2d(512, eps=1e-05)
        self.dropout = nn.Dropout(p=dropout, inplace=True)
        self.fc = nn.Linear(512 * 7 * 7, num_features)
        self.features = nn.BatchNorm1d(num_features, eps=1e-05)
        nn.init.constant_(self.features.weight, 1.0)
        self.features.weight.requires_grad = False  # frozen, as in arcface_torch
        self.num_features = self.head_hidden_size = num_features
        self.head = nn.Linear(num_features, num_classes) if num_classes else nn.Identity()
        self.pretrained_cfg = dict(PRETRAINED_CFG)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        x = self.prelu(self.bn1(self.conv1(x)))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        x = self.bn2(x)
        if x.shape[-2:] != (7, 7):
            x = F.adaptive_avg_pool2d(x, 7)
        return self.features(self.fc(torch.flatten(self.dropout(x), 1)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.forward_features(x))


def _create(name: str, pretrained: bool, **kwargs) -> IResNet:
    if pretrained:
        raise ValueError(f"{name}: no download; pass a local file as backbone.weights")
    kwargs.pop("pretrained_cfg", None)
    kwargs.pop("pretrained_cfg_overlay", None)
    return IResNet(DEPTHS[name], **kwargs)


@register_model
def iresnet18(pretrained: bool = False, **kwargs) -> IResNet:
    return _create("iresnet18", pretrained, **kwargs)


@register_model
def iresnet34(pretrained: bool = False, **kwargs) -> IResNet:
    return _create("iresnet34", pretrained, **kwargs)


@register_model
def iresnet50(pretrained: bool = False, **kwargs) -> IResNet:
    return _create("iresnet50", pretrained, **kwargs)


@register_model
def iresnet100(pretrained: bool = False, **kwargs) -> IResNet:
    return _create("iresnet100", pretrained, **kwargs)
