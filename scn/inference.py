"""Use a trained model: load a checkpoint with its preprocessing and class names, find images, and
run batched inference that skips (and counts) unreadable files."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import torch
from omegaconf import DictConfig, OmegaConf
from PIL import Image

from scn.data.datasets import load_rgb
from scn.data.transforms import EvalTransform
from scn.engine.checkpoint import load_checkpoint
from scn.errors import UserError
from scn.models.backbones import Preprocessing, create_backbone, resolve_preprocessing
from scn.models.scn_model import SCNModel, SCNOutput
from scn.models.weights import load_pretrained
from scn.runtime import resolve_device

log = logging.getLogger(__name__)

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp", ".gif"}


@dataclass
class LoadedModel:
    """A model ready for inference, with what it expects of its input and what it predicts."""

    model: SCNModel
    preprocessing: Preprocessing
    class_names: list[str]
    device: torch.device
    config: DictConfig | None = None  # the training config (None for raw backbone weights)

    @property
    def transform(self) -> EvalTransform:
        p = self.preprocessing
        return EvalTransform(p.input_size, p.mean, p.std)

    @torch.no_grad()
    def __call__(self, batch: torch.Tensor) -> SCNOutput:
        self.model.eval()
        return self.model(batch.to(self.device))


def load_model(path: str | Path, device: str = "auto") -> LoadedModel:
    """Load one of this project's checkpoints (best.pt / last.pt) for inference."""
    state = load_checkpoint(path)
    cfg = OmegaConf.create(state["config"])
    class_names = list(state["class_names"])
    model = SCNModel(create_backbone(cfg.backbone), len(class_names), scn=cfg.scn.enabled)
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
    bcfg = OmegaConf.create({"name": backbone, "input_size": None, "mean": None, "std": None})
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


def find_images(source: str | Path) -> tuple[list[Path], Path]:
    """Images of a file, a folder (recursively) or a list file (one path per line, relative to the
    list's folder). Returns the paths and the base folder that relative output names start from."""
    source = Path(source).expanduser()
    if source.is_dir():
        paths = sorted(p for p in source.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
        if not paths:
            raise UserError(
                f"no images in {source} (looked for {', '.join(sorted(IMAGE_SUFFIXES))})"
            )
        return paths, source
    if not source.is_file():
        raise UserError(f"not found: {source}; pass an image, a folder or a list file")
    if source.suffix.lower() in IMAGE_SUFFIXES:
        return [source], source.parent
    lines = [line.strip().split()[0] for line in source.read_text().splitlines() if line.strip()]
    if not lines:
        raise UserError(f"{source}: empty list file; expected one image path per line")
    return [
        (source.parent / p) if not Path(p).is_absolute() else Path(p) for p in lines
    ], source.parent


@dataclass
class Batch:
    paths: list[Path]
    images: torch.Tensor
    indices: list[int]  # positions in the input list


def iter_batches(
    paths: list[Path], transform: EvalTransform, batch_size: int, skipped: list[tuple[Path, str]]
) -> Iterator[Batch]:
    """Decode and preprocess in order; an unreadable image is recorded in `skipped`, not fatal."""
    buf: list[tuple[int, Path, torch.Tensor]] = []
    warned = False
    for i, path in enumerate(paths):
        try:
            img = load_rgb(path)
        except UserError as e:
            log.warning("skipping %s", e)
            skipped.append((path, str(e)))
            continue
        warned = warned or _warn_size(img, path, transform.size)
        buf.append((i, path, transform(img)))
        if len(buf) == batch_size or i == len(paths) - 1:
            yield Batch([b[1] for b in buf], torch.stack([b[2] for b in buf]), [b[0] for b in buf])
            buf = []
    if buf:  # the last path was unreadable
        yield Batch([b[1] for b in buf], torch.stack([b[2] for b in buf]), [b[0] for b in buf])


def _warn_size(img: Image.Image, path: Path, input_size: int) -> bool:
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


def finish_report(total: int, skipped: list[tuple[Path, str]]) -> None:
    if skipped and len(skipped) == total:
        raise UserError(f"none of the {total} images could be read (first: {skipped[0][1]})")
    if skipped:
        log.warning("%d of %d images could not be read and were skipped", len(skipped), total)
