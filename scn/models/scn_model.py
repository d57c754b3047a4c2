"""Backbone + SCN head: importance weight alpha and alpha-weighted logits."""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn as nn

from scn.models.backbones import feature_dim


class SCNOutput(NamedTuple):
    logits: (
        torch.Tensor
    )  # alpha * fc(f) with SCN, fc(f) without; used for CE, argmax and relabeling
    alpha: torch.Tensor | None  # importance weight in (0, 1), shape (B,); None for the baseline
    features: torch.Tensor  # pooled backbone feature f (RAN: the image representation P)
    mu: torch.Tensor | None = None  # RAN's region weights (B, K+1), the whole face first; else None


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


class SCNModel(nn.Module):
    """State-dict keys: `backbone.*` for the feature extractor, `head.*` for the SCN head."""

    def __init__(self, backbone: nn.Module, num_classes: int, scn: bool = True):
        super().__init__()
        self.backbone = backbone
        self.head = SCNHead(feature_dim(backbone), num_classes, scn)

    def forward(self, x: torch.Tensor) -> SCNOutput:
        features = self.backbone(x)
        # the head in fp32 under any autocast: alpha and the weighted logits feed RR and relabeling
        with torch.autocast(x.device.type, enabled=False):
            logits, alpha = self.head(features.float())
        return SCNOutput(logits, alpha, features)
