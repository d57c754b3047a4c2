"""FaceNet's InceptionResnetV1 (Sandberg's TF-slim network), registered with timm so
`timm.create_model("inception_resnet_v1", num_classes=0)` works.

Module and parameter names follow the common PyTorch port (facenet-pytorch): `conv2d_1a.conv`,
`conv2d_1a.bn`, `repeat_1.0.branch1.1`, `mixed_6a`, `block8`, `last_linear`, `last_bn`. As a
classification backbone it keeps timm's conventions: forward() returns the pooled 1792-d feature
(`num_features`), forward_features() the last spatial map (B, 1792, h, w) so CAM-based methods work.
`embed()` gives the L2-normalised 512-d face embedding (bottleneck Linear + BatchNorm1d), what a
teacher distils. The bottleneck is not on forward()'s path, so its parameters start frozen
(DistributedDataParallel needs a gradient for every trainable parameter); unfreeze them to train it.

Inputs: 160 px natively, standardised as (x * 255 - 127.5) / 128, i.e. mean 127.5/255 and std
128/255 on [0, 1] pixels. Every stride-2 layer is unpadded ("VALID"), so inputs below 75 px leave
nothing for Mixed_7a: `min_input_size` says so and the preprocessing check refuses them.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F
from timm.models import register_model

MIN_INPUT_SIZE = 75  # 75 -> 37 -> 35 -> 17 -> 15 -> 7 -> 3 -> 1 (stem, Mixed_6a, Mixed_7a)
BN_EPS = 0.001  # TF-slim's batch norm epsilon in FaceNet's training
PRETRAINED_CFG = {
    "input_size": (3, 160, 160),
    "min_input_size": (3, MIN_INPUT_SIZE, MIN_INPUT_SIZE),
    # FaceNet's fixed standardisation (x - 127.5) / 128 on 0..255 pixels, written for [0, 1] inputs
    "mean": (127.5 / 255, 127.5 / 255, 127.5 / 255),
    "std": (128 / 255, 128 / 255, 128 / 255),
    "interpolation": "bilinear",
    "crop_pct": 1.0,
    "pool_size": (3, 3),
    "first_conv": "conv2d_1a.conv",
    "classifier": "head",
}


class BasicConv2d(nn.Module):
    """conv (no bias) -> BatchNorm (TF's eps) -> ReLU: TF-slim's conv2d with its normalizer."""

    def __init__(
        self,
        in_planes: int,
        out_planes: int,
        kernel_size: int | tuple[int, int],
        stride: int = 1,
        padding: int | tuple[int, int] = 0,
    ):
        super().__init__()
        self.conv = nn.Conv2d(in_planes, out_planes, kernel_size, stride, padding, bias=False)
        self.bn = nn.BatchNorm2d(out_planes, eps=BN_EPS)
        self.relu = nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.relu(self.bn(self.conv(x)))


class _Residual(nn.Module):
    """Inception-ResNet block: branches concatenated, a 1x1 conv with bias (no BN) back to the
    input width, scaled and added to the input, then ReLU (not after the final Block8)."""

    def __init__(self, scale: float, relu: bool):
        super().__init__()
        self.scale = scale
        self.relu = nn.ReLU(inplace=True) if relu else nn.Identity()

    def branches(self, x: torch.Tensor) -> list[torch.Tensor]:
        raise NotImplementedError

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.conv2d(torch.cat(self.branches(x), 1))
        return self.relu(out * self.scale + x)


class Block35(_Residual):
    def __init__(self, scale: float = 1.0):
        super().__init__(scale, relu=True)
        self.branch0 = BasicConv2d(256, 32, 1)
        self.branch1 = nn.Sequential(BasicConv2d(256, 32, 1), BasicConv2d(32, 32, 3, padding=1))
        self.branch2 = nn.Sequential(
            BasicConv2d(256, 32, 1), BasicConv2d(32, 32, 3, padding=1),
            BasicConv2d(32, 32, 3, padding=1),
        )  # fmt: skip
        self.conv2d = nn.Conv2d(96, 256, 1)

    def branches(self, x: torch.Tensor) -> list[torch.Tensor]:
        return [self.branch0(x), self.branch1(x), self.branch2(x)]


class Block17(_Residual):
    def __init__(self, scale: float = 1.0):
        super().__init__(scale, relu=True)
        self.branch0 = BasicConv2d(896, 128, 1)
        self.branch1 = nn.Sequential(
            BasicConv2d(896, 128, 1), BasicConv2d(128, 128, (1, 7), padding=(0, 3)),
            BasicConv2d(128, 128, (7, 1), padding=(3, 0)),
        )  # fmt: skip
        self.conv2d = nn.Conv2d(256, 896, 1)

    def branches(self, x: torch.Tensor) -> list[torch.Tensor]:
        return [self.branch0(x), self.branch1(x)]


class Block8(_Residual):
    def __init__(self, scale: float = 1.0, no_relu: bool = False):
        super().__init__(scale, relu=not no_relu)
        self.branch0 = BasicConv2d(1792, 192, 1)
        self.branch1 = nn.Sequential(
            BasicConv2d(1792, 192, 1), BasicConv2d(192, 192, (1, 3), padding=(0, 1)),
            BasicConv2d(192, 192, (3, 1), padding=(1, 0)),
        )  # fmt: skip
        self.conv2d = nn.Conv2d(384, 1792, 1)

    def branches(self, x: torch.Tensor) -> list[torch.Tensor]:
        return [self.branch0(x), self.branch1(x)]


class Mixed6a(nn.Module):
    """Reduction 35 -> 17: 384 + 256 + 256 (max pool) = 896 channels."""

    def __init__(self):
        super().__init__()
        self.branch0 = BasicConv2d(256, 384, 3, stride=2)
        self.branch1 = nn.Sequential(
            BasicConv2d(256, 192, 1), BasicConv2d(192, 192, 3, padding=1),
            BasicConv2d(192, 256, 3, stride=2),
        )  # fmt: skip
        self.branch2 = nn.MaxPool2d(3, stride=2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat((self.branch0(x), self.branch1(x), self.branch2(x)), 1)


class Mixed7a(nn.Module):
    """Reduction 17 -> 8: 384 + 256 + 256 + 896 (max pool) = 1792 channels."""

    def __init__(self):
        super().__init__()
        self.branch0 = nn.Sequential(BasicConv2d(896, 256, 1), BasicConv2d(256, 384, 3, stride=2))
        self.branch1 = nn.Sequential(BasicConv2d(896, 256, 1), BasicConv2d(256, 256, 3, stride=2))
        self.branch2 = nn.Sequential(
            BasicConv2d(896, 256, 1), BasicConv2d(256, 256, 3, padding=1),
            BasicConv2d(256, 256, 3, stride=2),
        )  # fmt: skip
        self.branch3 = nn.MaxPool2d(3, stride=2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        branches = (self.branch0(x), self.branch1(x), self.branch2(x), self.branch3(x))
        return torch.cat(branches, 1)


class InceptionResnetV1(nn.Module):
    """Stem, 5x Block35 (0.17), Mixed_6a, 10x Block17 (0.10), Mixed_7a, 5x Block8 (0.20), Block8
    without ReLU; global average pool; a 512-d bottleneck used by embed() only."""

    min_input_size = MIN_INPUT_SIZE

    def __init__(
        self,
        num_classes: int = 0,
        in_chans: int = 3,
        drop_rate: float = 0.0,
        embedding_dim: int = 512,
        **kwargs,
    ):
        super().__init__()
        self.conv2d_1a = BasicConv2d(in_chans, 32, 3, stride=2)
        self.conv2d_2a = BasicConv2d(32, 32, 3)
        self.conv2d_2b = BasicConv2d(32, 64, 3, padding=1)
        self.maxpool_3a = nn.MaxPool2d(3, stride=2)
        self.conv2d_3b = BasicConv2d(64, 80, 1)
        self.conv2d_4a = BasicConv2d(80, 192, 3)
        self.conv2d_4b = BasicConv2d(192, 256, 3, stride=2)
        self.repeat_1 = nn.Sequential(*[Block35(0.17) for _ in range(5)])
        self.mixed_6a = Mixed6a()
        self.repeat_2 = nn.Sequential(*[Block17(0.10) for _ in range(10)])
        self.mixed_7a = Mixed7a()
        self.repeat_3 = nn.Sequential(*[Block8(0.20) for _ in range(5)])
        self.block8 = Block8(no_relu=True)
        self.avgpool_1a = nn.AdaptiveAvgPool2d(1)
        self.dropout = nn.Dropout(drop_rate)
        self.num_features = self.head_hidden_size = 1792
        self.embedding_dim = embedding_dim
        self.last_linear = nn.Linear(self.num_features, embedding_dim, bias=False)
        self.last_bn = nn.BatchNorm1d(embedding_dim, eps=BN_EPS)
        for p in (*self.last_linear.parameters(), *self.last_bn.parameters()):
            p.requires_grad = False  # not on forward()'s path; see the module docstring
        self.head = nn.Linear(self.num_features, num_classes) if num_classes else nn.Identity()
        self.num_classes = num_classes
        self.pretrained_cfg = self.default_cfg = dict(PRETRAINED_CFG)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """The last spatial map (B, 1792, h, w): 1x1 from 75 px, 2x2 from 107, 3x3 from 139 (160)."""
        x = self.conv2d_2b(self.conv2d_2a(self.conv2d_1a(x)))
        x = self.conv2d_4b(self.conv2d_4a(self.conv2d_3b(self.maxpool_3a(x))))
        x = self.mixed_7a(self.repeat_2(self.mixed_6a(self.repeat_1(x))))
        return self.block8(self.repeat_3(x))

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        x = self.dropout(torch.flatten(self.avgpool_1a(x), 1))
        return x if pre_logits else self.head(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        """FaceNet's L2-normalised embedding (B, 512): pooled feature -> bottleneck -> BN -> L2."""
        pooled = self.forward_head(self.forward_features(x), pre_logits=True)
        return F.normalize(self.last_bn(self.last_linear(pooled)), dim=1)

    def get_classifier(self) -> nn.Module:
        return self.head

    def reset_classifier(self, num_classes: int, global_pool: str | None = None) -> None:
        self.num_classes = num_classes
        self.head = nn.Linear(self.num_features, num_classes) if num_classes else nn.Identity()


@register_model
def inception_resnet_v1(pretrained: bool = False, **kwargs) -> InceptionResnetV1:
    """FaceNet's InceptionResnetV1; face-identity weights come from backbone.weights=facenet_casia."""
    if pretrained:
        raise ValueError(
            "inception_resnet_v1: no download; use backbone.weights=facenet_casia or a local file"
        )
    kwargs.pop("pretrained_cfg", None)
    kwargs.pop("pretrained_cfg_overlay", None)
    return InceptionResnetV1(**kwargs)
