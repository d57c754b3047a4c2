"""RAF-DB "basic" as distributed: EmoLabel/list_patition_label.txt and Image/aligned/*_aligned.jpg,
split by the name prefix (train_* / test_*), labels 1..7 in the file."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from omegaconf import DictConfig

from scn.data.labels import (
    RAFDB_CLASS_NAMES,
    RAFDB_LABEL_FILE,
    image_path,
    parse_label_file,
    split_of,
)
from scn.data.sources import DatasetFiles, FileImages, LabeledImages
from scn.errors import UserError


def read(dcfg: DictConfig, root: Path) -> DatasetFiles:
    class_names = list(dcfg.class_names or RAFDB_CLASS_NAMES)
    label_path = root / RAFDB_LABEL_FILE
    if not label_path.is_file():
        raise UserError(
            f"label file not found: {label_path}; a RAF-DB root holds {RAFDB_LABEL_FILE} "
            f"(check dataset.root={dcfg.root})"
        )
    entries = parse_label_file(label_path, "rafdb", class_names)
    by_split: dict[str, list] = {"train": [], "test": []}
    for e in entries:
        split = split_of(e.name)
        if not split:
            raise UserError(
                f"{label_path}:{e.line}: {e.name} starts with neither 'train' nor 'test', "
                "which is how RAF-DB assigns splits; rename the image or remove the line"
            )
        by_split[split].append(e)
    splits = {}
    for split, rows in by_split.items():
        if not rows:
            raise UserError(f"{label_path}: the {split} split is empty (no '{split}_*' lines)")
        images = FileImages([image_path(root, e.name) for e in rows], [e.name for e in rows])
        labels = np.array([e.label for e in rows], dtype=np.int64)
        splits[split] = LabeledImages(images, labels)
    return DatasetFiles(class_names, splits)
