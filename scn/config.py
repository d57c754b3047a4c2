"""Config schemas for the `scn` and `ran` groups and the single `instantiate` entry point."""

from __future__ import annotations

import datetime
from dataclasses import dataclass, field
from enum import Enum
from typing import Any

import hydra.utils
from hydra.core.config_store import ConfigStore
from omegaconf import Container, DictConfig, OmegaConf


class RelabelScope(str, Enum):
    """Which samples of a batch may be relabeled."""

    all = "all"  # every sample (the original code)
    low = "low"  # the low-importance group only (the paper)


# Over which alphas RR ranks under torchrun (one process: the same): `global` = the whole global
# batch, gathered (the single-process value); `local` = each process's share (cheaper, other maths).
# ("global" is a Python keyword, hence the functional form; OmegaConf matches members by name.)
RRScope = Enum("RRScope", {"global": "global", "local": "local"}, type=str)


@dataclass
class SCNConfig:
    """Typed `scn` group: a typo (`scn.margn_1`) or a wrong type fails when the config is composed."""

    enabled: bool = True
    beta: float = 0.7
    margin_1: float = 0.07
    margin_2: float = 0.2
    relabel_epoch: int = 10
    relabel_scope: RelabelScope = RelabelScope.all
    rr_weight: float = 1.0
    rr_scope: RRScope = RRScope["global"]


class PretrainLoss(str, Enum):
    """The identity loss of task=pretrain."""

    arcface = "arcface"  # additive angular margin: s * cos(theta + m) at the label
    cosface = "cosface"  # additive cosine margin: s * (cos(theta) - m)
    softmax = "softmax"  # normalised softmax: s * cos(theta), no margin


@dataclass
class PretrainConfig:
    """Typed `pretrain` group: typos and wrong types fail at compose time."""

    loss: PretrainLoss = PretrainLoss.arcface
    scale: float = 64.0
    margin: float | None = None  # None: 0.5 for arcface, 0.35 for cosface, 0 for softmax
    embedding_dim: int = 512


def _default_crops() -> list[list[float]]:
    """The four corner boxes and a centred box, each 0.75 of the side."""
    return [[0.0, 0.0, 0.75, 0.75], [0.25, 0.0, 1.0, 0.75], [0.0, 0.25, 0.75, 1.0],
            [0.25, 0.25, 1.0, 1.0], [0.125, 0.125, 0.875, 0.875]]  # fmt: skip


@dataclass
class RANConfig:
    """Typed `ran` group (Region Attention Networks): typos and wrong types fail at compose time."""

    enabled: bool = False
    crops: list[Any] = field(default_factory=_default_crops)  # boxes checked by scn.models.ran
    region_size: int | None = None
    margin: float = 0.02
    rb_weight: float = 1.0


def register_configs() -> None:
    """Make `scn/schema` and `ran/schema` available to the defaults lists of their groups."""
    ConfigStore.instance().store(group="scn", name="schema", node=SCNConfig)
    ConfigStore.instance().store(group="ran", name="schema", node=RANConfig)
    ConfigStore.instance().store(group="pretrain", name="schema", node=PretrainConfig)


register_configs()


_run_start: datetime.datetime | None = None


def set_run_start(when: datetime.datetime) -> None:
    """Fix the time run directories are named from (rank 0's, under torchrun)."""
    global _run_start
    _run_start = when


def _format_run_start(pattern: str) -> str:
    return (_run_start or datetime.datetime.now()).strftime(pattern)


# `${run_start:%H-%M-%S}` in hydra.run.dir / hydra.sweep.dir: like Hydra's `${now:}`, but every
# process of a torchrun job resolves it to the same time, so all ranks share one run directory
OmegaConf.register_new_resolver("run_start", _format_run_start, use_cache=True, replace=True)


def instantiate(node: DictConfig, **kwargs: Any) -> Any:
    """Every object built from config goes through here, so Hydra-version changes live in one place."""
    return hydra.utils.instantiate(node, **kwargs)


def to_container(cfg: DictConfig) -> dict:
    """The run's config as a plain, resolved dict (enums as strings) without Hydra's own node:
    what JSON, W&B and checkpoints store."""
    out = {}
    for key in cfg:
        if key == "hydra":
            continue
        node = cfg._get_node(key)
        out[key] = (
            OmegaConf.to_container(node, resolve=True, enum_to_str=True)
            if isinstance(node, Container)
            else cfg[key]
        )
    return out


def hydra_choices() -> dict[str, str]:
    """The group options this run was composed from (`dataset: synthetic`, ...); empty outside Hydra."""
    from hydra.core.hydra_config import HydraConfig

    if not HydraConfig.initialized():
        return {}
    choices = HydraConfig.get().runtime.choices
    return {k: str(v) for k, v in choices.items() if not k.startswith("hydra") and v is not None}
