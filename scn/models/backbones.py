"""Backbones through timm, with the preprocessing they imply."""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass

import timm
import torch.nn as nn
from omegaconf import DictConfig, OmegaConf

import scn.models.inception_resnet_v1  # noqa: F401  (registers inception_resnet_v1 with timm)
import scn.models.iresnet  # noqa: F401  (registers iresnet18/34/50/100 with timm)
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
    """A timm model without classifier: forward() returns the pooled feature of `feature_dim` dims.

    The project's keys (weights, input size, normalisation) stay out of create_model's kwargs.
    """
    if OmegaConf.is_missing(bcfg, "name") or not bcfg.name:
        raise UserError("backbone.name is not set; e.g. backbone=timm backbone.name=convnext_atto")
    try:
        return timm.create_model(bcfg.name, pretrained=False, num_classes=0)
    except RuntimeError as e:
        raise UserError(f"backbone.name={bcfg.name!r} is not a timm model: {e}") from e


def feature_dim(backbone: nn.Module) -> int:
    """Size of what forward() returns: VGG's 4096-d hidden layer, 512 for (I)ResNet-18."""
    return int(getattr(backbone, "head_hidden_size", None) or backbone.num_features)


def resolve_preprocessing(
    bcfg: DictConfig,
    image_size: int | None,
    backbone: nn.Module,
    implied: dict | None = None,
) -> Preprocessing:
    """An explicit value wins (dataset.image_size, then backbone keys), then what the loaded weights
    imply (e.g. [0, 1] inputs for the original SCN MS-Celeb file), then the model's timm config."""
    implied = implied or {}
    data_cfg = timm.data.resolve_model_data_config(backbone)
    size = (
        image_size
        or bcfg.input_size
        or implied.get("input_size")
        or int(data_cfg["input_size"][-1])
    )
    mean = tuple(float(v) for v in (bcfg.mean or implied.get("mean") or data_cfg["mean"]))
    std = tuple(float(v) for v in (bcfg.std or implied.get("std") or data_cfg["std"]))
    check_input_size(backbone, int(size), bcfg, image_size)
    return Preprocessing(int(size), mean, std)


def check_input_size(
    backbone: nn.Module, size: int, bcfg: DictConfig | None = None, image_size: int | None = None
) -> None:
    """A model that declares `min_input_size` (e.g. unpadded stride-2 stems) refuses smaller inputs
    here, before a shape error deep in the first forward pass."""
    minimum = getattr(backbone, "min_input_size", None)
    if minimum and size < minimum:
        key = "dataset.image_size" if image_size else "backbone.input_size"
        name = bcfg.name if bcfg is not None and "name" in bcfg else type(backbone).__name__
        raise UserError(
            f"{key}={size} is below the minimum input size of {name} ({minimum} px); "
            f"set {key}={minimum} or more"
        )
