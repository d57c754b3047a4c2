"""Backbones through timm, with the preprocessing they imply."""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass

import timm
import torch.nn as nn
from omegaconf import DictConfig

from scn.errors import UserError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Preprocessing:
    """What a model expects of its input; stored in every checkpoint."""

    input_size: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]

    def to_dict(self) -> dict:
        return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()}


def create_backbone(bcfg: DictConfig) -> nn.Module:
    """A timm model without classifier: forward() returns the pooled feature of `num_features` dims.

    The project's keys (input size, normalisation) stay out of create_model's kwargs.
    """
    try:
        return timm.create_model(bcfg.name, pretrained=False, num_classes=0)
    except RuntimeError as e:
        raise UserError(f"backbone.name={bcfg.name!r} is not a timm model: {e}") from e


def resolve_preprocessing(
    bcfg: DictConfig, image_size: int | None, backbone: nn.Module
) -> Preprocessing:
    """An explicit value wins (dataset.image_size, then backbone keys), then the model's timm config."""
    data_cfg = timm.data.resolve_model_data_config(backbone)
    size = image_size or bcfg.input_size or int(data_cfg["input_size"][-1])
    mean = tuple(float(v) for v in (bcfg.mean or data_cfg["mean"]))
    std = tuple(float(v) for v in (bcfg.std or data_cfg["std"]))
    return Preprocessing(int(size), mean, std)
