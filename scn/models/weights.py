"""Pretrained files researchers bring, loaded strictly: one filter per file format (timm's
`checkpoint_filter_fn` pattern) maps the file onto the backbone's names, drops only what the format
names (face-ID or ImageNet heads), and every remaining mismatch is an error listing the keys.
"""

from __future__ import annotations

import logging
import pickle
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn

from scn.config import cache_dir as config_cache_dir
from scn.errors import UserError
from scn.models import facenet
from scn.models.backbones import Preprocessing, resolve_preprocessing

log = logging.getLogger(__name__)

Filter = Callable[[dict[str, Any], nn.Module], tuple[dict[str, torch.Tensor], list[str]]]


@dataclass
class LoadReport:
    """What a weights file gave the model."""

    path: str
    format: str
    loaded: int
    total: int
    dropped: list[str] = field(default_factory=list)  # keys the format says do not belong
    missing: list[str] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)
    mismatched: list[str] = field(default_factory=list)
    heads_loaded: bool = False
    preprocessing: dict[str, Any] = field(default_factory=dict)  # what the file implies


def read_weights_file(path: Path, unsafe: bool = False) -> Any:
    """Tensors and plain data only (weights_only=True) unless the user opts in for a trusted file."""
    if not path.is_file():
        raise UserError(f"weights file not found: {path} (backbone.weights)")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        try:
            return load_file(str(path))
        except Exception as e:
            raise UserError(f"cannot read safetensors file {path}: {e}") from e
    try:
        return torch.load(path, map_location="cpu", weights_only=not unsafe)
    except pickle.UnpicklingError as e:
        raise UserError(
            f"{path} holds Python objects beyond tensors and plain data, which weights_only loading "
            f"refuses ({str(e).splitlines()[0]}). If you trust the file, set "
            "backbone.weights_unsafe=true to unpickle it fully"
        ) from e
    except Exception as e:  # truncated or not a torch file
        raise UserError(f"cannot load weights file {path}: {e}") from e


def _strip(prefix: str, sd: dict[str, Any]) -> dict[str, Any]:
    return {k[len(prefix) :] if k.startswith(prefix) else k: v for k, v in sd.items()}


def _split_off(sd: dict[str, Any], prefixes: tuple[str, ...]) -> tuple[dict, list[str]]:
    dropped = [k for k in sd if k.startswith(prefixes)]
    return {k: v for k, v in sd.items() if not k.startswith(prefixes)}, dropped


def _classifier_prefixes(model: nn.Module) -> tuple[str, ...]:
    """The model's own classifier (removed when built with num_classes=0), e.g. `fc.` or `head.fc.`."""
    names = model.pretrained_cfg.get("classifier") if hasattr(model, "pretrained_cfg") else None
    names = [names] if isinstance(names, str) else list(names or [])
    return tuple(f"{n}." for n in names)


def filter_scn_msceleb(obj: dict, model: nn.Module) -> tuple[dict, list[str]]:
    """Original SCN `ijba_res18_naive.pth.tar`: DataParallel `module.` prefix, face-ID head
    `feature` (512->256) and `fc` (256->87020) that do not belong to the backbone."""
    return _split_off(_strip("module.", obj["state_dict"]), ("feature.", "fc."))


def filter_msceleb(obj: dict, model: nn.Module) -> tuple[dict, list[str]]:
    """`resnet18_msceleb.pth` (RUL, EAC, DAN): torchvision names under 'state_dict', 1000-way fc."""
    return _split_off(_strip("module.", obj["state_dict"]), ("fc.",))


def filter_arcface(obj: dict, model: nn.Module) -> tuple[dict, list[str]]:
    """insightface arcface_torch `backbone.pth`: the IResNet's own names, nothing to drop."""
    return dict(obj), []


def filter_imagenet(obj: dict, model: nn.Module) -> tuple[dict, list[str]]:
    """torchvision / timm ImageNet weights: drop the 1000-way classifier; torchvision VGG's
    linear `classifier.0/3` become timm's convolutional `pre_logits.fc1/fc2`."""
    sd = _strip("module.", dict(obj.get("state_dict", obj)))
    if "classifier.0.weight" in sd and "pre_logits.fc1.weight" in model.state_dict():
        for src, dst, shape in (("classifier.0", "pre_logits.fc1", (4096, 512, 7, 7)),
                                ("classifier.3", "pre_logits.fc2", (4096, 4096, 1, 1))):  # fmt: skip
            sd[f"{dst}.weight"] = sd.pop(f"{src}.weight").reshape(shape)
            sd[f"{dst}.bias"] = sd.pop(f"{src}.bias")
        return _split_off(sd, ("classifier.6.",))
    return _split_off(sd, _classifier_prefixes(model) or ("fc.",))


def filter_backbone(obj: dict, model: nn.Module) -> tuple[dict, list[str]]:
    """This project's `backbone.pth` (task=pretrain): the backbone's own names, nothing to drop."""
    return dict(obj["state_dict"]), []


def filter_scn(obj: dict, model: nn.Module) -> tuple[dict, list[str]]:
    """This project's checkpoints: the backbone is `backbone.*`; heads are handled by the caller."""
    sd = {k[len("backbone.") :]: v for k, v in obj["model"].items() if k.startswith("backbone.")}
    return sd, [k for k in obj["model"] if not k.startswith("backbone.")]


FILTERS: dict[str, Filter] = {
    "scn": filter_scn,
    "backbone": filter_backbone,
    "scn_msceleb": filter_scn_msceleb,
    "msceleb": filter_msceleb,
    "arcface": filter_arcface,
    "imagenet": filter_imagenet,
}
# what a format says about its inputs (filled in only where the file's training differs)
IMPLIED_PREPROCESSING = {
    "scn_msceleb": {"mean": (0.0, 0.0, 0.0), "std": (1.0, 1.0, 1.0)},
    facenet.FORMAT: facenet.PREPROCESSING,  # 160 px, (x - 127.5) / 128
}
# backbone.weights names that stand for a file found at run time (when no file of that name exists)
NAMED_WEIGHTS: dict[str, Callable[[], Path]] = {facenet.FACENET_CASIA: facenet.facenet_casia_graph}


def resolve_weights_path(weights: str | Path) -> Path:
    """`backbone.weights` as a path: a registered name (e.g. facenet_casia) resolves to its file
    unless a file of that name exists."""
    path = Path(str(weights)).expanduser()
    if not path.exists() and str(weights) in NAMED_WEIGHTS:
        return NAMED_WEIGHTS[str(weights)]()
    return path


def detect_format(obj: Any, path: Path) -> str:
    if not isinstance(obj, dict):
        raise UserError(
            f"{path}: expected a state dict or a checkpoint dict, got {type(obj).__name__}"
        )
    if "model" in obj and "config" in obj and "version" in obj:
        return "scn"
    if set(obj) == {"state_dict", "preprocessing"}:  # task=pretrain's backbone.pth
        return "backbone"
    if isinstance(obj.get("state_dict"), dict):
        keys = list(obj["state_dict"])
        if any(k.startswith("module.feature.") for k in keys):
            return "scn_msceleb"
        if any(k in ("fc.weight", "module.fc.weight") for k in keys):
            return "msceleb"
        return "imagenet"
    if "prelu.weight" in obj and "features.weight" in obj:
        return "arcface"
    if any(isinstance(v, torch.Tensor) for v in obj.values()):
        return "imagenet"
    raise UserError(f"{path}: no tensors found; not a weights file this project knows")


def _listing(keys: list[str], n: int = 8) -> str:
    return ", ".join(keys[:n]) + (f" ... ({len(keys)} in all)" if len(keys) > n else "")


def load_pretrained(
    model: nn.Module,
    path: str | Path,
    strict: bool = True,
    unsafe: bool = False,
    cache_dir: Path | None = None,
) -> LoadReport:
    """Load `path` (or a registered name, see NAMED_WEIGHTS) into `model.backbone` (and `model.head`
    from this project's checkpoints when the shapes agree). Every backbone parameter and buffer must
    come from the file unless strict=False. `cache_dir` keeps converted foreign graphs (FaceNet's)."""
    path = resolve_weights_path(path)
    if path.is_file() and facenet.is_graphdef(path):  # a TensorFlow graph, converted once
        obj, fmt = None, facenet.FORMAT
        sd, dropped = facenet.graph_state_dict(path, cache_dir or config_cache_dir()), []
    else:
        obj = read_weights_file(path, unsafe)
        fmt = detect_format(obj, path)
        sd, dropped = FILTERS[fmt](obj, model.backbone)
    target = model.backbone.state_dict()
    optional = ("num_batches_tracked",)  # older files omit these counters
    missing = [k for k in target if k not in sd and not k.endswith(optional)]
    unexpected = [k for k in sd if k not in target]
    mismatched = [
        f"{k} {tuple(sd[k].shape)} vs {tuple(target[k].shape)}"
        for k in sd
        if k in target and tuple(sd[k].shape) != tuple(target[k].shape)
    ]
    report = LoadReport(str(path), fmt, 0, len(target), dropped, missing, unexpected, mismatched)
    problems = [
        f"{name}: {_listing(keys)}"
        for name, keys in (
            ("missing", missing),
            ("unexpected", unexpected),
            ("mis-shaped", mismatched),
        )
        if keys
    ]
    if problems:
        message = (
            f"{path} (read as format '{fmt}') does not fit backbone {type(model.backbone).__name__}: "
            + "; ".join(problems)
            + ". Check backbone=… matches the file"
            + (" (FaceNet's graph: backbone=inception_resnet_v1)" if fmt == facenet.FORMAT else "")
        )
        if strict:
            raise UserError(message + ", or set backbone.weights_strict=false to load what matches")
        log.warning("%s; loading the %d matching tensors", message, len(target) - len(missing))
    usable = {
        k: v for k, v in sd.items() if k in target and tuple(v.shape) == tuple(target[k].shape)
    }
    model.backbone.load_state_dict(usable, strict=False)
    report.loaded = len(usable)
    if fmt == "backbone":  # the preprocessing it was pretrained with
        report.preprocessing = dict(obj["preprocessing"])
    elif fmt == "scn":
        heads = {k[len("head.") :]: v for k, v in obj["model"].items() if k.startswith("head.")}
        own = model.head.state_dict()
        if heads.keys() == own.keys() and all(heads[k].shape == own[k].shape for k in own):
            model.head.load_state_dict(heads)
            report.heads_loaded = True
        report.preprocessing = dict(obj.get("preprocessing", {}))
    else:
        report.preprocessing = dict(IMPLIED_PREPROCESSING.get(fmt, {}))
    log.info(
        "backbone weights %s (format %s): loaded %d of %d tensors, dropped %d (%s)%s",
        path,
        fmt,
        report.loaded,
        report.total,
        len(dropped),
        _listing(dropped, 4) or "none",
        "; heads loaded too" if report.heads_loaded else "",
    )
    return report


def initial_weights(model: nn.Module, backbone: nn.Module, cfg, saved: dict | None = None):
    """A training run's starting point: `saved` preprocessing (a resumed run's, whose checkpoint
    then replaces the weights), or `backbone.weights` loaded into `model` with the preprocessing
    the file implies, else the config's and the backbone's. Returns the Preprocessing."""
    if saved is not None:
        return Preprocessing(saved["input_size"], tuple(saved["mean"]), tuple(saved["std"]))
    implied = None
    b = cfg.backbone
    if b.weights:
        implied = load_pretrained(
            model, b.weights, b.weights_strict, b.weights_unsafe, config_cache_dir(cfg)
        ).preprocessing
    return resolve_preprocessing(b, cfg.dataset.image_size, backbone, implied)
