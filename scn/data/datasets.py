"""RAF-DB layout on disk -> train/val/test lists with the labels a run trains on."""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from omegaconf import DictConfig
from PIL import Image, UnidentifiedImageError
from torch.utils.data import Dataset

from scn.data.labels import (
    RAFDB_IMAGE_DIR,
    RAFDB_LABEL_FILE,
    image_path,
    parse_label_file,
    split_of,
)
from scn.data.noise import stratified_split, symmetric_noise
from scn.errors import UserError

log = logging.getLogger(__name__)


def load_rgb(path: Path) -> Image.Image:
    """Any mode (grey, palette, RGBA, CMYK) -> RGB; an unreadable file names itself."""
    try:
        with Image.open(path) as img:
            img.load()
            if img.mode == "P":
                img = img.convert("RGBA")
            return img.convert("RGB")
    except (OSError, UnidentifiedImageError, ValueError) as e:
        raise UserError(
            f"cannot read image {path}: {e}. Replace the file, or remove its line from the label file."
        ) from e


class FaceImages(Dataset):
    """Images by position; returns (tensor, index) so the trainer owns the labels."""

    def __init__(self, paths: list[Path], transform: Callable[[Image.Image], torch.Tensor]):
        self.paths = paths
        self.transform = transform

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        return self.transform(load_rgb(self.paths[index])), index


@dataclass
class Split:
    """Image paths with the labels this run uses for them (0-based), and where the images sit in the
    dataset split they come from (`source`, `rows`), so held-out subsets share one decoded cache."""

    paths: list[Path]
    labels: np.ndarray
    clean_labels: np.ndarray  # the dataset's own labels: the reference for noise and relabel audits
    source: str = ""  # the dataset split ("train" / "test") the images are listed under
    rows: np.ndarray | None = None  # positions in that split's list; None = all, in order

    def __post_init__(self) -> None:
        if self.rows is None:
            self.rows = np.arange(len(self.paths), dtype=np.int64)

    def __len__(self) -> int:
        return len(self.paths)

    @property
    def noisy(self) -> np.ndarray:
        return self.labels != self.clean_labels

    def subset(self, positions: np.ndarray) -> Split:
        return Split(
            [self.paths[i] for i in positions],
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
    label_file: Path | None = None  # the dataset's own label file (part of the decoded cache's key)
    files: dict[str, list[Path]] = field(default_factory=dict)  # every image per dataset split


def resolve_root(dcfg: DictConfig, cache_dir: Path) -> Path:
    """The dataset folder; the synthetic set is generated into the cache on first use."""
    if dcfg.name == "synthetic" and dcfg.root is None:
        from scn.data.synthetic import ensure_synthetic

        return ensure_synthetic(cache_dir, **dcfg.synthetic)
    if dcfg.root is None:
        raise UserError(
            "dataset.root is not set; point it at the folder holding EmoLabel/ and Image/"
        )
    root = Path(str(dcfg.root)).expanduser()
    if not root.is_dir():
        raise UserError(
            f"dataset root not found: {root.resolve()} (dataset.root={dcfg.root}). Point dataset.root "
            f"or SCN_DATA_DIR at RAF-DB's raf-basic folder (holding {RAFDB_LABEL_FILE} and "
            f"{RAFDB_IMAGE_DIR}/), or try the built-in data: python run.py experiment=demo"
        )
    return root


def _labels_from_file(dcfg: DictConfig, names: list[str], num_classes: int) -> np.ndarray:
    """Train labels from dataset.label_file, in the order of `names`; every train image must appear."""
    path = Path(str(dcfg.label_file)).expanduser()
    entries = parse_label_file(path, dcfg.label_format, num_classes)
    by_name = {e.name: e for e in entries}
    missing = [n for n in names if n not in by_name]
    if missing:
        raise UserError(
            f"{path} has no label for {len(missing)} of {len(names)} train images "
            f"(first: {missing[:3]}); a train label file must label every train image"
        )
    known = set(names)
    extra = [e for e in entries if e.name not in known]
    if extra:
        raise UserError(
            f"{path}:{extra[0].line}: {extra[0].name} is not a train image of the dataset "
            f"({len(extra)} such lines); label files for dataset.label_file hold train rows only"
        )
    return np.array([by_name[n].label for n in names], dtype=np.int64)


def load_dataset(dcfg: DictConfig, cache_dir: Path) -> DataBundle:
    """Read the RAF-DB layout, apply label_file / noise / val split as configured."""
    root = resolve_root(dcfg, cache_dir)
    class_names = list(dcfg.class_names)
    num_classes = len(class_names)
    label_path = root / RAFDB_LABEL_FILE
    if not label_path.is_file():
        raise UserError(
            f"label file not found: {label_path}; a RAF-DB root holds {RAFDB_LABEL_FILE} "
            f"(check dataset.root={dcfg.root})"
        )
    entries = parse_label_file(label_path, "rafdb", num_classes)
    by_split: dict[str, list] = {"train": [], "test": []}
    for e in entries:
        split = split_of(e.name)
        if not split:
            raise UserError(
                f"{label_path}:{e.line}: {e.name} starts with neither 'train' nor 'test', "
                "which is how RAF-DB assigns splits; rename the image or remove the line"
            )
        by_split[split].append(e)
    for split, rows in by_split.items():
        if not rows:
            raise UserError(f"{label_path}: the {split} split is empty (no '{split}_*' lines)")

    splits: dict[str, Split] = {}
    for split, rows in by_split.items():
        paths = [image_path(root, e.name) for e in rows]
        missing = [p for p in paths if not p.is_file()]
        if missing:
            raise UserError(
                f"{len(missing)} {split} images listed in {label_path} are missing, e.g. {missing[0]}; "
                f"images belong at {root / RAFDB_IMAGE_DIR}/<name>_aligned.jpg"
            )
        labels = np.array([e.label for e in rows], dtype=np.int64)
        splits[split] = Split(paths, labels.copy(), labels, split)

    train = splits["train"]
    notes: list[str] = []
    if dcfg.label_file:
        train.labels = _labels_from_file(dcfg, [e.name for e in by_split["train"]], num_classes)
        notes.append(
            f"train labels from {dcfg.label_file}: {int(train.noisy.sum())} differ from clean"
        )
    if dcfg.noise.rate > 0:
        train.labels, flipped = symmetric_noise(
            train.labels, dcfg.noise.rate, dcfg.noise.seed, num_classes
        )
        notes.append(f"symmetric noise: {int(flipped.sum())} of {len(train)} train labels flipped")
    val = None
    if dcfg.val_fraction > 0:
        # stratified by the labels in use: a researcher with noisy labels has only those
        keep, held = stratified_split(train.labels, dcfg.val_fraction, dcfg.val_seed)
        train, val = train.subset(keep), train.subset(held)
        notes.append(f"validation: {len(val)} images held out of train for model selection")
    files = {name: sp.paths for name, sp in splits.items()}
    return DataBundle(root, class_names, train, splits["test"], val, notes, label_path, files)
