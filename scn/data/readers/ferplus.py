"""FERPlus (microsoft/FERPlus): 10 crowd votes per FER2013 image, from either source:

- folders: FERPlus's `data/` folder, `FER2013Train/`, `FER2013Valid/`, `FER2013Test/`, each
  holding the PNGs and a `label.csv` without header: `fer0000000.png,"(0, 0, 48, 48)",<10 votes>`.
  The box is always the whole 48x48 image there, so it is ignored. `dataset.root` is that folder,
  or the clone (its `data/` is used). Images are named `FER2013Train/fer0000000.png` (relative to
  the data folder).
- csv: `fer2013new.csv` (Usage, Image name, the 10 votes) next to Kaggle's `fer2013.csv`, paired
  row by row; Training / PublicTest / PrivateTest are Train / Valid / Test, rows with an empty Image
  name are dropped (FERPlus's own rule) and the pixels come from fer2013.csv. Images keep their
  Image name.

Votes are in the order neutral, happiness, surprise, sadness, anger, disgust, fear, contempt,
unknown, NF. Labels follow the majority mode of FERPlus's own ferplus.py (see `majority_labels`).
"""

from __future__ import annotations

import csv
import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from omegaconf import DictConfig

from scn.data.readers.fer2013 import CSV_NAME as FER2013_CSV
from scn.data.readers.fer2013 import class_names_of, data_rows, read_pixel_table
from scn.data.sources import DatasetFiles, FileImages, ImageList, LabeledImages, PixelImages
from scn.errors import UserError

log = logging.getLogger(__name__)

CLASS_NAMES = (
    "Neutral",
    "Happiness",
    "Surprise",
    "Sadness",
    "Anger",
    "Disgust",
    "Fear",
    "Contempt",
)
VOTE_COLUMNS = (
    "neutral",
    "happiness",
    "surprise",
    "sadness",
    "anger",
    "disgust",
    "fear",
    "contempt",
    "unknown",
    "NF",
)
CONTEMPT = 7
UNKNOWN = 8  # unknown = 8, NF (not a face) = 9
SPLITS = ("train", "valid", "test")  # FERPlus's own splits, in file order
SPLIT_FOLDERS = {"train": "FER2013Train", "valid": "FER2013Valid", "test": "FER2013Test"}
USAGE_SPLIT = {"Training": "train", "PublicTest": "valid", "PrivateTest": "test"}
LABEL_FILE = "label.csv"
NEW_CSV = "fer2013new.csv"
NEW_CSV_NAME_COLUMN = "Image name"

# why majority_labels dropped an image (labels >= 0 are kept)
NO_MAJORITY, UNKNOWN_NF, DROPPED_CONTEMPT = -1, -2, -3


def majority_labels(votes: np.ndarray, num_classes: int = 8) -> np.ndarray:
    """FERPlus's majority mode on (N, 10) vote counts: counts of 1 become 0 (outlier removal), then
    an image keeps the top class when its count is more than half of the remaining total. Ties and
    images without votes left are NO_MAJORITY, unknown/NF winners UNKNOWN_NF, and Contempt winners
    DROPPED_CONTEMPT when `num_classes` is 7."""
    v = np.where(votes <= 1, 0, votes)
    top = v.max(axis=1)
    winner = v.argmax(axis=1)
    labels = np.where(2 * top > v.sum(axis=1), winner, NO_MAJORITY)
    labels[labels >= UNKNOWN] = UNKNOWN_NF
    if num_classes == 7:
        labels[labels == CONTEMPT] = DROPPED_CONTEMPT
    return labels


@dataclass
class _Split:
    """One FERPlus split as listed: every named row's votes, and how to build its images."""

    source: Path  # the file listing it, for messages
    names: list[str]
    votes: np.ndarray  # (N, 10)
    images: ImageList
    unnamed: int | None = None  # rows without an Image name (csv source only)


def read(dcfg: DictConfig, root: Path) -> DatasetFiles:
    """Map FERPlus's data folder or its CSV pair onto train (dataset.train_splits), val and test."""
    num_classes = int(dcfg.num_classes)
    if num_classes not in (7, 8):
        raise UserError(
            f"dataset.num_classes={num_classes}; FERPlus has 8 (with Contempt) or 7 (without)"
        )
    class_names = class_names_of(
        dcfg, CLASS_NAMES[:num_classes], f"ferplus with dataset.num_classes={num_classes}"
    )
    train_splits = _train_splits(dcfg)
    needed = [s for s in SPLITS if s != "train" or "train" in train_splits]
    kind, where = _find_source(root)
    if kind == "folders":
        log.info("ferplus: reading the split folders under %s", where)
        listed = {s: _read_label_csv(where, s) for s in needed}
    else:
        log.info("ferplus: reading %s with the pixels of %s", where / NEW_CSV, where / FER2013_CSV)
        listed = _read_csv_pair(where, needed)

    kept: dict[str, LabeledImages] = {}
    notes = []
    for split in needed:
        part = listed[split]
        labels = majority_labels(part.votes, num_classes)
        keep = np.flatnonzero(labels >= 0)
        unnamed = "" if part.unnamed is None else f"{part.unnamed} without an Image name, "
        notes.append(
            f"ferplus {split} ({SPLIT_FOLDERS[split]}): {unnamed}"
            f"{int(np.sum(labels == NO_MAJORITY))} dropped (no majority), "
            f"{int(np.sum(labels == UNKNOWN_NF))} unknown/NF, "
            f"{int(np.sum(labels == DROPPED_CONTEMPT))} contempt; {len(keep)} kept"
        )
        if len(keep) == 0:
            raise UserError(
                f"{part.source}: none of the {len(part.names)} {SPLIT_FOLDERS[split]} images "
                f"keeps a label under the majority rule, so the {split} split is empty"
            )
        kept[split] = LabeledImages(part.images.subset(keep), labels[keep])
    if "train" not in train_splits:
        notes.append("ferplus: FER2013Train not used (dataset.train_splits=[valid])")

    trained = [kept[s] for s in SPLITS if s in train_splits]
    splits = {
        "train": LabeledImages(
            ImageList.concat([t.images for t in trained]),
            np.concatenate([t.labels for t in trained]),
        ),
        "test": kept["test"],
    }
    if "valid" not in train_splits:
        splits["val"] = kept["valid"]
    return DatasetFiles(class_names, splits, notes)


def _train_splits(dcfg: DictConfig) -> list[str]:
    raw = dcfg.train_splits
    items = [raw] if isinstance(raw, str) else [str(s) for s in raw]
    if not items or len(set(items)) != len(items) or not set(items) <= {"train", "valid"}:
        raise UserError(
            f"dataset.train_splits={items}; expected FERPlus splits to train on, a non-empty "
            "subset of [train, valid] (FER2013Train, FER2013Valid), e.g. [train, valid] or [train] "
            "(then FER2013Valid is the validation split); FER2013Test is always the test split"
        )
    return items


def _find_source(root: Path) -> tuple[str, Path]:
    """Which FERPlus source `root` holds: ("folders", data folder) or ("csv", root)."""
    data = next((d for d in (root, root / "data") if (d / SPLIT_FOLDERS["train"]).is_dir()), None)
    pair = (root / NEW_CSV).is_file() and (root / FER2013_CSV).is_file()
    if data is not None:
        if _has_png(data):
            return "folders", data
        if not pair:
            raise UserError(
                f"{data}: the FERPlus split folders hold no PNG images (the FERPlus repository "
                f"ships only their {LABEL_FILE}); write the images with FERPlus's "
                f"src/generate_training_data.py, or put Kaggle's {FER2013_CSV} next to {NEW_CSV} "
                f"in {root} to read the pixels from it"
            )
    if pair:
        return "csv", root
    hint = (
        f" ({NEW_CSV} is there, but Kaggle's {FER2013_CSV} is not: copy it next to it)"
        if (root / NEW_CSV).is_file()
        else ""
    )
    raise UserError(
        f"dataset.root={root} holds no FERPlus data{hint}. Looked for {root / 'FER2013Train'}/ "
        f"(FERPlus's data folder), {root / 'data' / 'FER2013Train'}/ "
        "(a clone of microsoft/FERPlus) "
        f"and {root / NEW_CSV} with {root / FER2013_CSV} (the label CSV next to Kaggle's table)"
    )


def _has_png(data: Path) -> bool:
    """Cheap: stops at the first PNG of any split folder."""
    for folder in SPLIT_FOLDERS.values():
        if not (data / folder).is_dir():
            continue
        with os.scandir(data / folder) as it:
            if any(e.name.lower().endswith(".png") for e in it):
                return True
    return False


def _votes(fields: Sequence[str], path: Path, line: int, name: str) -> list[int]:
    """The 10 vote counts of one row: whole numbers >= 0, not all 0."""
    votes = []
    for col, text in zip(VOTE_COLUMNS, fields, strict=True):
        text = text.strip()
        if not (text.isascii() and text.isdigit()):
            raise UserError(
                f"{path}:{line}: {col} vote {text!r} of {name} is not a whole number >= 0; "
                "fix or delete the row"
            )
        votes.append(int(text))
    if not any(votes):
        raise UserError(
            f"{path}:{line}: {name} has no votes (all 10 counts are 0); fix or delete the row"
        )
    return votes


def _read_label_csv(data: Path, split: str) -> _Split:
    """One split folder's label.csv: rows `name,"(x, y, w, h)",<10 votes>`, no header."""
    folder = data / SPLIT_FOLDERS[split]
    path = folder / LABEL_FILE
    if not path.is_file():
        raise UserError(
            f"{path} not found: each FERPlus split folder holds its {LABEL_FILE} "
            f"(check dataset.root={data})"
        )
    names: list[str] = []
    votes: list[list[int]] = []
    seen: dict[str, int] = {}
    width = 2 + len(VOTE_COLUMNS)
    try:
        with path.open(newline="", encoding="utf-8-sig") as f:
            reader = csv.reader(f)
            for row in reader:
                if not row:
                    continue
                line = reader.line_num
                if len(row) != width:
                    raise UserError(
                        f"{path}:{line}: {len(row)} fields, expected {width}: image name, face box "
                        f"and the 10 votes ({', '.join(VOTE_COLUMNS)}); fix or delete the row"
                    )
                name = row[0].strip()
                if not name:
                    raise UserError(f"{path}:{line}: no image name; fix or delete the row")
                if name in seen:
                    raise UserError(f"{path}:{line}: {name} already listed on line {seen[name]}")
                seen[name] = line
                votes.append(_votes(row[2:], path, line, name))
                names.append(name)
    except csv.Error as e:
        raise UserError(f"{path}: not a readable CSV file ({e})") from e
    except UnicodeDecodeError as e:
        raise UserError(f"{path}: not a UTF-8 text file ({e})") from e
    if not names:
        raise UserError(f"{path}: no rows, so the {split} split is empty")
    images = FileImages([folder / n for n in names], [f"{folder.name}/{n}" for n in names])
    return _Split(path, images.names, np.array(votes, dtype=np.int64), images)


def _read_csv_pair(root: Path, needed: Sequence[str]) -> dict[str, _Split]:
    """fer2013new.csv's votes with the pixels of fer2013.csv's row at the same position."""
    new_path = root / NEW_CSV
    rows = _read_new_csv(new_path)
    table = read_pixel_table(root / FER2013_CSV, ("Usage",))
    if len(rows) != len(table):
        raise UserError(
            f"{new_path} has {len(rows)} data rows but {table.path} has {len(table)}: "
            "FERPlus pairs them row by row, so both must be complete "
            f"(use Kaggle's original {FER2013_CSV})"
        )
    for k, (usage, line, _, _) in enumerate(rows):
        if usage != table.columns["Usage"][k]:
            raise UserError(
                f"{new_path}:{line} says Usage {usage} but {table.path}:{table.lines[k]} says "
                f"{table.columns['Usage'][k]!r}: the files are not row-aligned (FERPlus pairs them "
                f"by position; use Kaggle's original {FER2013_CSV})"
            )
    out = {}
    for split in needed:
        pos = [k for k, r in enumerate(rows) if USAGE_SPLIT[r[0]] == split]
        named = [k for k in pos if rows[k][2]]
        if not named:
            raise UserError(
                f"{new_path}: no named row with Usage {_usage_of(split)}, so the {split} split "
                "is empty"
            )
        idx = np.array(named, dtype=np.int64)
        names = [rows[k][2] for k in named]
        images = PixelImages(table.pixels[idx], names, table.path, table.lines[idx])
        votes = np.array([rows[k][3] for k in named], dtype=np.int64)
        out[split] = _Split(new_path, names, votes, images, unnamed=len(pos) - len(named))
    return out


def _usage_of(split: str) -> str:
    return next(u for u, s in USAGE_SPLIT.items() if s == split)


def _read_new_csv(path: Path) -> list[tuple[str, int, str, list[int]]]:
    """fer2013new.csv rows as (Usage, line, Image name, votes); unnamed rows carry no votes."""
    wanted = ("Usage", NEW_CSV_NAME_COLUMN, *VOTE_COLUMNS)
    rows: list[tuple[str, int, str, list[int]]] = []
    seen: dict[str, int] = {}
    try:
        with path.open(newline="", encoding="utf-8-sig") as f:
            reader = csv.reader(f)
            header = next(reader, None) or []
            index = {h.strip().lower(): k for k, h in enumerate(header)}
            missing = [c for c in wanted if c.lower() not in index]
            if missing:
                raise UserError(
                    f"{path}: no column {', '.join(missing)} in the header row (columns found: "
                    f"{', '.join(h.strip() for h in header) or 'none'}); FERPlus's {NEW_CSV} "
                    f"starts with the line {','.join(wanted)}"
                )
            usage_col = index["usage"]
            name_col = index[NEW_CSV_NAME_COLUMN.lower()]
            vote_cols = [index[c.lower()] for c in VOTE_COLUMNS]
            for line, row in data_rows(reader, header, path):
                usage = row[usage_col].strip()
                if usage not in USAGE_SPLIT:
                    raise UserError(
                        f"{path}:{line}: Usage {usage!r}, expected one of "
                        f"{', '.join(USAGE_SPLIT)}; fix or delete the row"
                    )
                name = row[name_col].strip()
                votes: list[int] = []
                if name:  # unnamed rows are dropped as FERPlus does, whatever their votes
                    if name in seen:
                        raise UserError(
                            f"{path}:{line}: {name} already listed on line {seen[name]}"
                        )
                    seen[name] = line
                    votes = _votes([row[k] for k in vote_cols], path, line, name)
                rows.append((usage, line, name, votes))
    except csv.Error as e:
        raise UserError(f"{path}: not a readable CSV file ({e})") from e
    except UnicodeDecodeError as e:
        raise UserError(f"{path}: not a UTF-8 text file ({e})") from e
    return rows
