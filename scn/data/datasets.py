"""A dataset on disk -> train/val/test splits with the labels a run trains on, the same way for
every format (each format's files are read by its reader in scn/data/readers/)."""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from omegaconf import DictConfig
from PIL import Image
from torch.utils.data import Dataset

from scn.config import compose_config, group_options
from scn.data.check import unreadable_images
from scn.data.labels import parse_label_file
from scn.data.noise import stratified_split, symmetric_noise
from scn.data.readers import get_reader
from scn.data.sources import ImageList, LabeledImages
from scn.errors import UserError

log = logging.getLogger(__name__)


class FaceImages(Dataset):
    """Images by position; returns (tensor, index) so the trainer owns the labels."""

    def __init__(self, images: ImageList, transform: Callable[[Image.Image], torch.Tensor]):
        self.images = images
        self.transform = transform

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        return self.transform(self.images.load(index)), index


@dataclass
class Split:
    """Images with the labels this run uses for them (0-based), and where the images sit in the
    dataset split they come from (`source`, `rows`), so held-out subsets share one decoded cache."""

    images: ImageList
    labels: np.ndarray
    clean_labels: np.ndarray  # the dataset's own labels: the reference for noise and relabel audits
    source: str = ""  # the dataset split ("train" / "val" / "test") the images are listed under
    rows: np.ndarray | None = None  # positions in that split's list; None = all, in order

    def __post_init__(self) -> None:
        if self.rows is None:
            self.rows = np.arange(len(self.images), dtype=np.int64)

    def __len__(self) -> int:
        return len(self.images)

    @property
    def names(self) -> list[str]:
        return self.images.names

    @property
    def noisy(self) -> np.ndarray:
        return self.labels != self.clean_labels

    def subset(self, positions: np.ndarray) -> Split:
        return Split(
            self.images.subset(positions),
            self.labels[positions],
            self.clean_labels[positions],
            self.source,
            self.rows[positions],
        )


@dataclass
class DataBundle:
    """Everything a run needs to know about its data."""

    root: Path
    class_names: list[str]
    train: Split
    test: Split
    val: Split | None = None
    notes: list[str] = field(default_factory=list)
    files: dict[str, ImageList] = field(default_factory=dict)  # every image per dataset split


def dataset_config(name: str, root: str | Path) -> DictConfig:
    """The `dataset=<name>` option as run.py composes it, with `root`: the dataset settings a tool
    outside run.py (predict, features, inspect) reads a dataset with."""
    from hydra.errors import ConfigCompositionException

    try:
        cfg = compose_config([f"dataset={name}"])
    except ConfigCompositionException as e:
        known = ", ".join(group_options("dataset"))
        raise UserError(f"unknown dataset {name!r} (--dataset); known: {known}") from e
    dcfg = cfg.dataset
    dcfg.root = str(root)
    return dcfg


def resolve_root(dcfg: DictConfig, cache_dir: Path) -> Path:
    """The dataset folder; the synthetic set is generated into the cache on first use."""
    if dcfg.name == "synthetic" and dcfg.root is None:
        from scn.data.synthetic import ensure_synthetic

        return ensure_synthetic(cache_dir, **dcfg.synthetic)
    if dcfg.root is None:
        raise UserError(
            f"dataset.root is not set; point it at your {dcfg.name} folder "
            f"(python run.py dataset={dcfg.name} dataset.root=<folder>); the README's dataset "
            "table says what goes where"
        )
    root = Path(str(dcfg.root)).expanduser()
    if not root.is_dir():
        raise UserError(
            f"dataset root not found: {root.resolve()} (dataset.root={dcfg.root}). Point "
            f"dataset.root or SCN_DATA_DIR at your {dcfg.name} folder (the README's dataset table "
            "says what goes where), or try the built-in data: python run.py experiment=demo"
        )
    return root


def _labels_from_file(dcfg: DictConfig, names: list[str], class_names: list[str]) -> np.ndarray:
    """Train labels from dataset.label_file, in the order of `names`; every train image must appear."""
    path = Path(str(dcfg.label_file)).expanduser()
    entries = parse_label_file(path, dcfg.label_format, class_names)
    by_name = {e.name: e for e in entries}
    missing = [n for n in names if n not in by_name]
    if missing:
        raise UserError(
            f"{path} has no label for {len(missing)} of {len(names)} train images "
            f"(first: {missing[:3]}); a train label file must label every train image, named as "
            "the dataset names them (see relabels.csv of a run)"
        )
    known = set(names)
    extra = [e for e in entries if e.name not in known]
    if extra:
        raise UserError(
            f"{path}:{extra[0].line}: {extra[0].name} is not a train image of the dataset "
            f"({len(extra)} such lines); label files for dataset.label_file hold train rows only"
        )
    return np.array([by_name[n].label for n in names], dtype=np.int64)


def _drop_missing(
    dcfg: DictConfig, split: str, found: LabeledImages, cache_dir: Path
) -> tuple[LabeledImages, str | None]:
    """Refuse (or with dataset.skip_unreadable, log and drop) images that are absent or unreadable."""
    images = found.images
    missing = images.missing()
    skip = bool(dcfg.skip_unreadable)
    if missing and not skip:
        raise UserError(
            f"{len(missing)} {split} images are missing, e.g. {images.describe(missing[0])}; "
            "restore them, or set dataset.skip_unreadable=true to skip missing and unreadable "
            "images (each is logged)"
        )
    if not skip:
        return found, None
    bad = {i: "missing" for i in missing}
    bad.update(unreadable_images(images, cache_dir, exclude=set(missing)))
    if not bad:
        return found, None
    for i in sorted(bad):
        log.warning("skipping %s image %s: %s", split, images.describe(i), bad[i])
    keep = [i for i in range(len(images)) if i not in bad]
    if not keep:
        raise UserError(f"none of the {len(images)} {split} images could be read")
    kept = LabeledImages(images.subset(keep), found.labels[keep])
    return (
        kept,
        f"{split}: {len(bad)} missing or unreadable images skipped (dataset.skip_unreadable)",
    )


def load_dataset(dcfg: DictConfig, cache_dir: Path) -> DataBundle:
    """Read the dataset with its format's reader, then apply label_file / noise / val split the
    same way for every format."""
    root = resolve_root(dcfg, cache_dir)
    found = get_reader(dcfg.format)(dcfg, root)
    class_names = list(found.class_names)
    num_classes = len(class_names)
    notes = list(found.notes)
    splits: dict[str, Split] = {}
    for name, labeled in found.splits.items():
        if len(labeled.images) == 0:
            raise UserError(f"the {name} split of {root} holds no images; check dataset.root")
        labeled, note = _drop_missing(dcfg, name, labeled, cache_dir)
        if note:
            notes.append(note)
        splits[name] = Split(labeled.images, labeled.labels.copy(), labeled.labels, name)

    train = splits["train"]
    if dcfg.label_file:
        train.labels = _labels_from_file(dcfg, train.names, class_names)
        notes.append(
            f"train labels from {dcfg.label_file}: {int(train.noisy.sum())} differ from clean"
        )
    if dcfg.noise.rate > 0:
        train.labels, flipped = symmetric_noise(
            train.labels, dcfg.noise.rate, dcfg.noise.seed, num_classes
        )
        notes.append(f"symmetric noise: {int(flipped.sum())} of {len(train)} train labels flipped")
    val = splits.get("val")
    if dcfg.val_fraction > 0:
        if val is not None:
            raise UserError(
                f"dataset.val_fraction={dcfg.val_fraction}, but {dcfg.name} has its own validation "
                "split; set dataset.val_fraction=0 to select on it"
            )
        # stratified by the labels in use: a researcher with noisy labels has only those
        keep, held = stratified_split(train.labels, dcfg.val_fraction, dcfg.val_seed)
        train, val = train.subset(keep), train.subset(held)
        notes.append(f"validation: {len(val)} images held out of train for model selection")
    files = {name: sp.images for name, sp in splits.items()}
    return DataBundle(root, class_names, train, splits["test"], val, notes, files)
