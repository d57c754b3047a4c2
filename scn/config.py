"""Config schemas for the `method`, `scn`, `ran` and `pretrain` groups and the single
`instantiate` entry point."""

from __future__ import annotations

import datetime
from collections.abc import Sequence
from dataclasses import dataclass
from enum import Enum
from pathlib import Path
from typing import Any

import hydra.utils
from hydra.core.config_store import ConfigStore
from omegaconf import MISSING, Container, DictConfig, OmegaConf


class RelabelScope(str, Enum):
    """Which samples of a batch may be relabeled."""

    all = "all"  # every sample (the original code)
    low = "low"  # the low-importance group only (the paper)


# Over which alphas RR ranks under torchrun (one process: the same): `global` = the whole global
# batch, gathered (the single-process value); `local` = each process's share (cheaper, other maths).
# ("global" is a Python keyword, hence the functional form; OmegaConf matches members by name.)
RRScope = Enum("RRScope", {"global": "global", "local": "local"}, type=str)


# The schemas below give the groups' keys and types (a typo such as `scn.margn_1` or a wrong type
# fails when the config is composed); the values and what each key means are in the group's YAML
# (conf/scn/default.yaml, ...), the one source of every default. Tools outside run.py compose
# conf/ (compose_config) rather than build these classes.


@dataclass
class SCNConfig:
    """Typed `scn` group. `enabled` is the switch `method=` replaced: left null; set, the run
    stops naming the option."""

    enabled: bool | None = None
    beta: float = MISSING
    margin_1: float = MISSING
    margin_2: float = MISSING
    relabel_epoch: int = MISSING
    relabel_scope: RelabelScope = MISSING
    rr_weight: float = MISSING
    rr_scope: RRScope = MISSING


class PretrainLoss(str, Enum):
    """The identity loss of task=pretrain."""

    arcface = "arcface"  # additive angular margin: s * cos(theta + m) at the label
    cosface = "cosface"  # additive cosine margin: s * (cos(theta) - m)
    softmax = "softmax"  # normalised softmax: s * cos(theta), no margin


@dataclass
class PretrainConfig:
    """Typed `pretrain` group."""

    loss: PretrainLoss = MISSING
    scale: float = MISSING
    margin: float | None = MISSING  # None: the loss's usual one
    embedding_dim: int = MISSING
    teacher: str | None = MISSING  # distil a teacher's embeddings instead (facenet_casia)


@dataclass
class RANConfig:
    """Typed `ran` group (Region Attention Networks). `enabled`: replaced by `method=ran` /
    `method=scn_ran` (see SCNConfig)."""

    enabled: bool | None = None
    crops: Any = MISSING  # a named set (scn.methods.ran.CROP_SETS) or boxes, checked there
    region_size: int | None = MISSING
    face_size: int | None = MISSING
    margin: float = MISSING
    rb_weight: float = MISSING


@dataclass
class BackboneConfig:
    """The keys every `backbone` option shares, with their defaults (each option file sets `name`
    and what its model implies): the one place these are written."""

    name: str = MISSING  # a timm model name (this project registers iresnet*, inception_resnet_v1)
    # a local pretrained file (format detected from its content: SCN MS-Celeb, msceleb, arcface,
    # ImageNet, this project's checkpoint or backbone.pth, a FaceNet .pb graph) or a registered
    # name (facenet_casia); null = random init. Nothing is downloaded
    weights: str | None = None
    weights_strict: bool = (
        True  # every backbone tensor must come from the file; false = load what matches
    )
    weights_unsafe: bool = False  # allow full unpickling of a trusted file weights_only refuses
    input_size: int | None = (
        None  # native input side; null = what the weights imply, else timm's config
    )
    mean: list[float] | None = None  # per-channel mean; null = what the weights imply, else timm's
    std: list[float] | None = None  # per-channel std; null = what the weights imply, else timm's


@dataclass
class MethodConfig:
    """A `method` option without hyper-parameters of its own (scn, baseline, ran, scn_ran: theirs
    are in the `scn` and `ran` groups)."""

    name: str = MISSING


@dataclass
class EACConfig:
    """Typed `method=eac` (Erasing Attention Consistency)."""

    name: str = MISSING
    lam: float = MISSING
    erasing_p: float = MISSING
    erasing_scale: list[float] = MISSING
    erasing_ratio: list[float] = MISSING


@dataclass
class RULConfig:
    """Typed `method=rul` (Relative Uncertainty Learning)."""

    name: str = MISSING
    dim: int = MISSING
    grid: int = MISSING
    dropout: float = MISSING
    fc_lr_mult: float = MISSING


def register_configs() -> None:
    """Make `scn/schema` and `ran/schema` available to the defaults lists of their groups."""
    ConfigStore.instance().store(group="scn", name="schema", node=SCNConfig)
    ConfigStore.instance().store(group="ran", name="schema", node=RANConfig)
    ConfigStore.instance().store(group="pretrain", name="schema", node=PretrainConfig)
    # the method options' schemas live outside the `method` group, so `method=` lists methods only
    for name, node in (("plain", MethodConfig), ("eac", EACConfig), ("rul", RULConfig)):
        ConfigStore.instance().store(group="schema/method", name=name, node=node)
    ConfigStore.instance().store(group="schema/backbone", name="base", node=BackboneConfig)


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


def cache_dir(cfg: DictConfig | None = None) -> Path:
    """`paths.cache_dir` as a path (shared caches: decoded images, generated data, compiled code,
    converted weights, teacher embeddings), resolved here for every caller; without a run's
    config, the one conf/paths composes to (SCN_CACHE_DIR, else ~/.cache/scn)."""
    if cfg is None or "paths" not in cfg or cfg.paths.get("cache_dir") is None:
        cfg = compose_config()
    return Path(str(cfg.paths.cache_dir)).expanduser()


CONF_DIR = Path(__file__).resolve().parents[1] / "conf"


def group_options(group: str) -> list[str]:
    """The options of conf/<group> a command line may choose (`_`-files are abstract bases)."""
    return sorted(p.stem for p in (CONF_DIR / group).glob("[!_]*.yaml"))


def compose_config(overrides: Sequence[str] = ()) -> DictConfig:
    """conf/ composed with `overrides` as run.py composes it, without running a job: how tools
    outside run.py (predict, features, inspect, bench) read a group option, so every default has
    its one source in conf/. Works inside a Hydra job too (its global state is put back)."""
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    outer = GlobalHydra.instance()
    saved = outer.hydra if outer.is_initialized() else None
    outer.clear()
    try:
        with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
            return compose("config", overrides=list(overrides))
    finally:
        GlobalHydra.instance().clear()
        if saved is not None:
            GlobalHydra.instance().initialize(saved)


# groups whose options set only Hydra's own settings (sweeper, launcher): no run keys to complete
_HYDRA_ONLY_GROUPS = ("hparams_search", "launcher")


def complete_config(stored: dict, choices: dict[str, str] | None = None) -> DictConfig:
    """A config stored in a checkpoint, with every key it lacks (it was written before the key
    existed) taken from conf/'s defaults for the group options it was composed from (`choices`),
    so the YAML stays the one source of defaults for old checkpoints too. Stored values win."""
    overrides = [
        f"{group}={option}"
        for group, option in (choices or {}).items()
        if group not in _HYDRA_ONLY_GROUPS and (CONF_DIR / group / f"{option}.yaml").is_file()
    ]
    # plain (schema-free) defaults, so a stored key today's conf/ no longer has is kept
    defaults = OmegaConf.to_container(compose_config(overrides), resolve=False)
    return OmegaConf.merge(OmegaConf.create(defaults), stored)


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
