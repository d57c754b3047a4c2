"""Use a trained model: load a checkpoint with its preprocessing and class names, find images, and
run batched inference that skips (and counts) unreadable files."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
from omegaconf import DictConfig, OmegaConf
from PIL import Image

from scn.checkpoints import load_checkpoint
from scn.config import BackboneConfig, complete_config
from scn.config import cache_dir as config_cache_dir
from scn.data.datasets import dataset_config, load_dataset
from scn.data.sources import FileImages, ImageList
from scn.data.transforms import EvalTransform
from scn.errors import UserError
from scn.methods import build_method
from scn.methods.base import ModelOutput
from scn.methods.scn import SCNModel
from scn.models.backbones import Preprocessing, create_backbone, resolve_preprocessing
from scn.models.weights import load_pretrained
from scn.runtime import resolve_device

log = logging.getLogger(__name__)

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp", ".gif"}


@dataclass
class LoadedModel:
    """A model ready for inference, with what it expects of its input and what it predicts."""

    model: nn.Module  # the checkpoint's method's model (scn.methods)
    preprocessing: Preprocessing
    class_names: list[str]
    device: torch.device
    config: DictConfig | None = None  # the training config (None for raw backbone weights)

    @property
    def transform(self) -> EvalTransform:
        p = self.preprocessing
        return EvalTransform(p.input_size, p.mean, p.std)

    @torch.no_grad()
    def __call__(self, batch: torch.Tensor) -> ModelOutput:
        self.model.eval()
        return self.model(batch.to(self.device))


def load_model(path: str | Path, device: str = "auto", state: dict | None = None) -> LoadedModel:
    """Load one of this project's checkpoints (best.pt / last.pt) for inference; the model is
    rebuilt by the method the checkpoint's config names. `state`: the file's contents when the
    caller has read them already (load_checkpoint), so the file is read once."""
    if state is None:
        state = load_checkpoint(path)
    cfg = complete_config(state["config"], state.get("choices"))
    class_names = list(state["class_names"])
    if cfg.get("task") == "pretrain":
        raise UserError(
            f"{path} is a task=pretrain checkpoint (face identities); use its backbone.pth with "
            "backbone.weights= in a training run"
        )
    method = build_method(cfg)
    model = method.build_model(create_backbone(cfg.backbone), len(class_names))
    try:
        model.load_state_dict(state["model"])
    except RuntimeError as e:
        raise UserError(
            f"{path}: the model entry does not fit backbone {cfg.backbone.name}: {e}"
        ) from e
    pre = state["preprocessing"]
    preprocessing = Preprocessing(pre["input_size"], tuple(pre["mean"]), tuple(pre["std"]))
    dev = resolve_device(device)
    return LoadedModel(model.to(dev).eval(), preprocessing, class_names, dev, cfg)


def load_backbone_weights(
    path: str | Path, backbone: str, device: str = "auto", strict: bool = True
) -> LoadedModel:
    """Raw pretrained backbone weights (any format scn.models.weights reads) for feature export."""
    bcfg = OmegaConf.structured(BackboneConfig(name=backbone))  # the shared backbone defaults
    model = SCNModel(create_backbone(bcfg), num_classes=1, scn=False)
    report = load_pretrained(model, path, strict=strict)
    if report.format == "scn":
        raise UserError(f"{path} is a checkpoint of this project: pass it without --backbone")
    pre = resolve_preprocessing(bcfg, None, model.backbone, report.preprocessing)
    dev = resolve_device(device)
    return LoadedModel(model.to(dev).eval(), pre, [], dev, None)


def load_any(path: str | Path, backbone: str | None, device: str = "auto") -> LoadedModel:
    """A checkpoint of this project, or raw backbone weights when `backbone` names the architecture."""
    if backbone:
        return load_backbone_weights(path, backbone, device)
    try:
        return load_model(path, device)
    except UserError as e:
        if "not a training checkpoint" in str(e):
            raise UserError(
                f"{path} is not a checkpoint of this project; for raw backbone weights pass "
                "--backbone NAME (e.g. --backbone iresnet18)"
            ) from e
        raise


def find_images(source: str | Path) -> FileImages:
    """Images of a file, a folder (recursively) or a list file (one path per line, relative to the
    list's folder), each named by its path relative to that folder (output names start from it)."""
    source = Path(source).expanduser()
    if source.is_dir():
        paths = sorted(p for p in source.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
        if not paths:
            raise UserError(
                f"no images in {source} (looked for {', '.join(sorted(IMAGE_SUFFIXES))})"
            )
        base = source
    elif not source.is_file():
        raise UserError(f"not found: {source}; pass an image, a folder or a list file")
    elif source.suffix.lower() in IMAGE_SUFFIXES:
        paths, base = [source], source.parent
    else:
        lines = [ln.strip().split()[0] for ln in source.read_text().splitlines() if ln.strip()]
        if not lines:
            raise UserError(f"{source}: empty list file; expected one image path per line")
        paths = [(source.parent / p) if not Path(p).is_absolute() else Path(p) for p in lines]
        base = source.parent
    names = [p.relative_to(base).as_posix() if p.is_relative_to(base) else p.name for p in paths]
    return FileImages(paths, names)


def dataset_images(
    name: str, root: str | Path, split: str, cache_dir: Path | None = None
) -> tuple[ImageList, np.ndarray]:
    """One split of a dataset of any format the project reads, with its clean labels."""
    data = load_dataset(dataset_config(name, root), cache_dir or config_cache_dir())
    chosen = {"train": data.train, "val": data.val, "test": data.test}[split]
    if chosen is None:
        raise UserError(f"--split val: {name} at {root} has no validation split of its own")
    return chosen.images, chosen.clean_labels


@dataclass
class Batch:
    images: torch.Tensor
    indices: list[int]  # positions in the input list


def iter_batches(
    images: ImageList, transform: EvalTransform, batch_size: int, skipped: list[tuple[str, str]]
) -> Iterator[Batch]:
    """Decode and preprocess in order; an unreadable image is recorded in `skipped`, not fatal."""
    buf: list[tuple[int, torch.Tensor]] = []
    warned = False
    for i in range(len(images)):
        try:
            img = images.load(i)
        except UserError as e:
            log.warning("skipping %s", e)
            skipped.append((images.describe(i), str(e)))
            continue
        warned = warned or _warn_size(img, images.describe(i), transform.size)
        buf.append((i, transform(img)))
        if len(buf) == batch_size:
            yield Batch(torch.stack([b[1] for b in buf]), [b[0] for b in buf])
            buf = []
    if buf:
        yield Batch(torch.stack([b[1] for b in buf]), [b[0] for b in buf])


def _warn_size(img: Image.Image, path: str, input_size: int) -> bool:
    """The model saw aligned face crops resized to `input_size`; whole photos would be misread."""
    side = max(img.size)
    if side > 4 * input_size or side * 4 < input_size:
        log.warning(
            "%s is %dx%d px but the model takes %d px aligned face crops (like its training data); "
            "crop and align faces first for meaningful predictions",
            path, *img.size, input_size,
        )  # fmt: skip
        return True
    return False


def finish_report(total: int, skipped: list[tuple[str, str]]) -> None:
    if skipped and len(skipped) == total:
        raise UserError(f"none of the {total} images could be read (first: {skipped[0][1]})")
    if skipped:
        log.warning("%d of %d images could not be read and were skipped", len(skipped), total)
