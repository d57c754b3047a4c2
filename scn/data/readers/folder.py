"""Any `root/<split>/<class>/<image>` tree: the ImageFolder layout POSTER++, DDAMFN and torchvision
use, so a dataset someone already sorted into class folders trains without a label file.

Split folder names come from `dataset.split_dirs`; classes are the class folders sorted (numerically
when every name is an integer, so `1..10` keep their order), or the order of `dataset.class_names`.
Images are the files with an image suffix anywhere below a class folder; each is named by its path
relative to the root (`train/happy/0001.jpg`), which is unique and what label CSVs and reports use.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import numpy as np
from omegaconf import DictConfig

from scn.data.sources import DatasetFiles, FileImages, LabeledImages
from scn.errors import UserError

log = logging.getLogger(__name__)

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff")
SPLITS = ("train", "test", "val")


def read(dcfg: DictConfig, root: Path) -> DatasetFiles:
    """Class folders of every configured split -> labelled file lists."""
    split_dirs = _split_dirs(dcfg.split_dirs)
    found: dict[str, dict[str, list[str]]] = {}  # split -> class folder -> image names
    ignored: dict[str, int] = {}
    for split, dirname in split_dirs.items():
        found[split], ignored[split] = _scan_split(root, split, dirname)
    class_names = _class_names(dcfg.class_names, found, split_dirs, root)
    index = {c: i for i, c in enumerate(class_names)}
    splits: dict[str, LabeledImages] = {}
    notes: list[str] = []
    for split, classes in found.items():
        names: list[str] = []
        labels: list[int] = []
        for cls in sorted(classes, key=index.__getitem__):
            names.extend(classes[cls])
            labels.extend([index[cls]] * len(classes[cls]))
        if not names:
            raise UserError(
                f"{root / split_dirs[split]}: the {split} split has no images (files ending in "
                f"{' '.join(IMAGE_SUFFIXES)} inside its class folders)"
            )
        images = FileImages([root / n for n in names], names)
        splits[split] = LabeledImages(images, np.asarray(labels, dtype=np.int64))
        notes.append(
            f"folder {split} ({split_dirs[split]}/): {len(names)} images in "
            f"{len(classes)} class folders, {ignored[split]} non-image or hidden files ignored"
        )
    log.debug("folder dataset under %s: classes %s", root, class_names)
    return DatasetFiles(class_names, splits, notes)


def _split_dirs(cfg: object) -> dict[str, str]:
    """{split: folder name}; train and test are required, val is optional."""
    given = dict(cfg) if cfg is not None else {}
    unknown = sorted(set(given) - set(SPLITS))
    if unknown:
        raise UserError(
            f"dataset.split_dirs has unknown split(s) {', '.join(unknown)}; use train, test, val"
        )
    out: dict[str, str] = {}
    for split in SPLITS:
        value = given.get(split)
        if value is None or str(value) == "":
            if split != "val":
                raise UserError(
                    f"dataset.split_dirs.{split} is not set; name the folder under dataset.root "
                    f"that holds the {split} images' class folders"
                )
            continue
        out[split] = str(value)
    return out


def _scan_split(root: Path, split: str, dirname: str) -> tuple[dict[str, list[str]], int]:
    """Class folder -> sorted image names (root-relative posix paths), and the files ignored."""
    folder = root / dirname
    if not folder.is_dir():
        raise UserError(
            f"{split} folder not found: {folder}; the folder layout is "
            f"<dataset.root>/<split>/<class>/<image> (set dataset.split_dirs.{split} if your "
            f"{split} folder has another name)"
        )
    classes: dict[str, list[str]] = {}
    ignored = 0
    with os.scandir(folder) as it:
        entries = sorted(it, key=lambda e: e.name)
    for entry in entries:
        if entry.name.startswith("."):
            ignored += 1
            continue  # .DS_Store, .ipynb_checkpoints/: never classes
        if entry.is_dir():
            classes[entry.name], skipped = _images_below(root, Path(entry.path))
            ignored += skipped
        elif entry.name.lower().endswith(IMAGE_SUFFIXES):
            raise UserError(
                f"{Path(entry.path)} is an image directly in the {split} folder; every image must "
                f"sit in a class folder ({folder}/<class>/...): move it into one or delete it"
            )
        else:
            ignored += 1
    return classes, ignored


def _images_below(root: Path, folder: Path) -> tuple[list[str], int]:
    """Image files anywhere below `folder`, sorted; hidden files (e.g. macOS `._x.jpg`) skipped."""
    names: list[str] = []
    ignored = 0
    for dirpath, dirnames, filenames in os.walk(folder, followlinks=True):
        hidden = [d for d in dirnames if d.startswith(".")]
        dirnames[:] = [d for d in dirnames if not d.startswith(".")]
        ignored += len(hidden)
        rel = Path(dirpath).relative_to(root).as_posix()
        for f in filenames:
            if f.startswith(".") or not f.lower().endswith(IMAGE_SUFFIXES):
                ignored += 1
            else:
                names.append(f"{rel}/{f}")
    names.sort()
    return names, ignored


def _is_int(name: str) -> bool:
    return name.isascii() and name.isdigit()


def _class_names(
    given: object, found: dict[str, dict[str, list[str]]], split_dirs: dict[str, str], root: Path
) -> list[str]:
    """The configured names in their order, or the class folders sorted; every class has train
    images (a model cannot learn a class it never sees)."""
    folders = sorted({c for classes in found.values() for c in classes})
    if given is None:
        if all(_is_int(c) for c in folders):
            names = sorted(folders, key=lambda c: (int(c), c))
        else:
            names = folders
    else:
        names = [str(n) for n in given]
        dup = sorted({n for n in names if names.count(n) > 1})
        if dup:
            raise UserError(f"dataset.class_names lists {', '.join(dup)} more than once")
        allowed = set(names)
        for split, classes in found.items():
            for c in classes:
                if c not in allowed:
                    raise UserError(
                        f"class folder {root / split_dirs[split] / c} is not one of "
                        f"dataset.class_names [{', '.join(names)}]; add it to the list (in label "
                        "order), rename the folder, or set dataset.class_names=null to use the "
                        "folder names"
                    )
    train_dir = root / split_dirs["train"]
    for c in names:
        if not found["train"].get(c):
            raise UserError(
                f"class {c!r} has no train images: {train_dir / c} is missing or holds no image "
                "files; add its images or remove the class"
            )
    return names
