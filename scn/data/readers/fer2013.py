"""FER2013 as distributed, in either of its two releases:

- csv: Kaggle's `fer2013.csv`, a header row `emotion,pixels,Usage`, then one row per image: the
  expression id, 2304 space-separated grey values (48x48, row-major) and the Usage (Training,
  PublicTest, PrivateTest). Images are named `<Usage>/<index>.png`, the index being the 0-based data
  row in the whole file (header not counted), e.g. `Training/0.png`, `PublicTest/28709.png`.
- folders: the image-folder release `train/<class>/*.jpg` and `test/<class>/*.jpg` with lowercase
  class folders (angry, disgust, fear, happy, neutral, sad, surprise); an image is named by its path
  relative to the root. Its test/ holds PublicTest and PrivateTest together.

Ids 0..6 are Angry, Disgust, Fear, Happy, Sad, Surprise, Neutral. Training is the train split;
PublicTest + PrivateTest the test split, or one of them with `dataset.test_usage` (PrivateTest as
the test split makes PublicTest the validation split, as it was the competition's public
leaderboard).

The pixel parsing here is shared with the FERPlus reader, whose CSV source takes its pixels from
`fer2013.csv`.
"""

from __future__ import annotations

import csv
import logging
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from omegaconf import DictConfig

from scn.data.sources import DatasetFiles, FileImages, LabeledImages, PixelImages
from scn.errors import UserError

log = logging.getLogger(__name__)

CLASS_NAMES = ("Angry", "Disgust", "Fear", "Happy", "Sad", "Surprise", "Neutral")
FOLDER_CLASSES = ("angry", "disgust", "fear", "happy", "sad", "surprise", "neutral")  # id order
CSV_NAME = "fer2013.csv"
SIDE = 48
NUM_PIXELS = SIDE * SIDE
USAGES = ("Training", "PublicTest", "PrivateTest")
TEST_USAGES = ("both", "PublicTest", "PrivateTest")
FOLDER_SPLITS = ("train", "test")
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp")
PARSE_CHUNK = 4096  # rows parsed at once: ~36 MB of text held, not the whole 287 MB file


@dataclass
class PixelTable:
    """A FER2013-style table as read: the requested text columns, every row's pixels and line."""

    path: Path
    columns: dict[str, list[str]]  # requested column (as asked for) -> one stripped value per row
    pixels: np.ndarray  # (N, 48, 48) uint8
    lines: np.ndarray  # (N,) 1-based line number of each data row in the file (header = line 1)

    def __len__(self) -> int:
        return len(self.lines)


def parse_pixels(texts: Sequence[str], path: Path, lines: Sequence[int]) -> np.ndarray:
    """`pixels` cells -> (N, 48, 48) uint8. np.fromstring parses each row in C, the range is checked
    once for all rows, and only a failing row is re-examined in Python, to say what is wrong."""
    out = np.empty((len(texts), NUM_PIXELS), dtype=np.int16)
    for k, text in enumerate(texts):
        try:
            values = np.fromstring(text, dtype=np.int16, sep=" ")
        except ValueError:  # text that is not a number (older numpy stops early instead)
            values = None
        if values is None or values.size != NUM_PIXELS:
            raise UserError(f"{path}:{lines[k]}: {_pixel_problem(texts[k])}; fix or delete the row")
        out[k] = values
    bad = np.flatnonzero((out < 0).any(axis=1) | (out > 255).any(axis=1))
    if len(bad):
        k = int(bad[0])
        raise UserError(f"{path}:{lines[k]}: {_pixel_problem(texts[k])}; fix or delete the row")
    return out.astype(np.uint8).reshape(-1, SIDE, SIDE)


def _pixel_problem(text: str) -> str:
    tokens = text.split()
    for k, tok in enumerate(tokens, start=1):
        if not (tok.isascii() and tok.isdigit()) or int(tok) > 255:
            return f"pixel {k} is {_short(tok)}, expected a whole number 0..255"
    return (
        f"{len(tokens)} pixel values, expected {NUM_PIXELS} ({SIDE}x{SIDE} grey values separated "
        "by spaces)"
    )


def _short(text: str, limit: int = 24) -> str:
    return repr(text if len(text) <= limit else text[:limit] + "...")


def data_rows(reader, header: list[str], path: Path) -> Iterator[tuple[int, list[str]]]:
    """(line number, row) of each data row of a csv.reader past its header; blank lines hold no row,
    and a row with another number of fields than the header is named."""
    for row in reader:
        if not row:
            continue
        if len(row) != len(header):
            raise UserError(
                f"{path}:{reader.line_num}: {len(row)} fields, expected {len(header)} "
                f"({', '.join(h.strip() for h in header)}); fix or delete the row"
            )
        yield reader.line_num, row


def read_pixel_table(path: Path, columns: Sequence[str]) -> PixelTable:
    """Read a table with a header row and a `pixels` column (plus `columns`), matching column names
    case-insensitively and ignoring surrounding spaces (Kaggle's icml_face_data.csv writes
    `emotion, Usage, pixels`). Every row's pixels are parsed and checked."""
    start = time.perf_counter()
    wanted = [*columns, "pixels"]
    try:
        with path.open(newline="", encoding="utf-8-sig") as f:
            reader = csv.reader(f)
            header = next(reader, None)
            if header is None:
                raise UserError(
                    f"{path}: the file is empty; expected a header row with columns "
                    f"{', '.join(wanted)}"
                )
            index = {h.strip().lower(): k for k, h in enumerate(header)}
            missing = [c for c in wanted if c.lower() not in index]
            if missing:
                found = ", ".join(_short(h.strip(), 30) for h in header)
                raise UserError(
                    f"{path}: no column {', '.join(missing)} in the header row (columns found: "
                    f"{found}); the first line must name the columns, as Kaggle's {CSV_NAME} does "
                    "(emotion,pixels,Usage)"
                )
            cols = {c: index[c.lower()] for c in columns}
            pixel_col = index["pixels"]
            values: dict[str, list[str]] = {c: [] for c in columns}
            pixels: list[np.ndarray] = []
            texts: list[str] = []
            lines: list[int] = []
            for line, row in data_rows(reader, header, path):
                for c, k in cols.items():
                    values[c].append(row[k].strip())
                texts.append(row[pixel_col])
                lines.append(line)
                if len(texts) == PARSE_CHUNK:  # parse as we go: the cells are 9 kB of text each
                    pixels.append(parse_pixels(texts, path, lines[-len(texts) :]))
                    texts = []
            pixels.append(parse_pixels(texts, path, lines[len(lines) - len(texts) :]))
    except csv.Error as e:
        raise UserError(f"{path}: not a readable CSV file ({e})") from e
    except UnicodeDecodeError as e:
        raise UserError(f"{path}: not a UTF-8 text file ({e})") from e
    stacked = np.concatenate(pixels)
    log.info("%s: %d rows parsed in %.1f s", path, len(lines), time.perf_counter() - start)
    return PixelTable(path, values, stacked, np.asarray(lines, dtype=np.int64))


def class_names_of(dcfg: DictConfig, defaults: Sequence[str], what: str) -> list[str]:
    """The dataset's own class names, or the user's `dataset.class_names` renaming them in order."""
    names = dcfg.class_names
    if names is None:
        return list(defaults)
    names = [str(n) for n in names]
    if len(names) != len(defaults):
        raise UserError(
            f"dataset.class_names has {len(names)} names, but {what} has {len(defaults)} classes "
            f"({', '.join(defaults)}); give {len(defaults)} names in that order, or null for these"
        )
    return names


def read(dcfg: DictConfig, root: Path) -> DatasetFiles:
    """Map Kaggle's fer2013.csv (preferred when present) or the image-folder release onto splits."""
    class_names = class_names_of(dcfg, CLASS_NAMES, "fer2013")
    test_usage = _test_usage(dcfg)
    csv_path = root / CSV_NAME
    if csv_path.is_file():
        log.info("fer2013: reading %s", csv_path)
        return _read_csv(csv_path, class_names, test_usage)
    if all((root / s).is_dir() for s in FOLDER_SPLITS):
        log.info("fer2013: reading the image folders under %s", root)
        return _read_folders(root, class_names, test_usage)
    raise UserError(
        f"dataset.root={root} holds neither {CSV_NAME} (Kaggle's table) nor the train/ and test/ "
        "class folders of the image-folder release; point dataset.root at the folder holding one"
    )


def _test_usage(dcfg: DictConfig) -> str:
    value = str(dcfg.test_usage)
    for usage in TEST_USAGES:
        if value.lower() == usage.lower():
            return usage
    raise UserError(f"dataset.test_usage={value!r}; use one of {', '.join(TEST_USAGES)}")


def _read_csv(path: Path, class_names: list[str], test_usage: str) -> DatasetFiles:
    table = read_pixel_table(path, ("emotion", "Usage"))
    labels = np.empty(len(table), dtype=np.int64)
    ids = ", ".join(f"{i} {n}" for i, n in enumerate(CLASS_NAMES))
    for k, (text, line) in enumerate(zip(table.columns["emotion"], table.lines, strict=True)):
        if not (text.isascii() and text.isdigit()) or int(text) >= len(CLASS_NAMES):
            raise UserError(
                f"{path}:{line}: emotion {_short(text)} is not an expression id ({ids}); "
                "fix or delete the row"
            )
        labels[k] = int(text)
    usages = np.array(table.columns["Usage"], dtype=object)
    for text, line in zip(usages, table.lines, strict=True):
        if text not in USAGES:
            raise UserError(
                f"{path}:{line}: Usage {_short(text)}, expected one of {', '.join(USAGES)}; "
                "fix or delete the row"
            )
    names = [f"{u}/{k}.png" for k, u in enumerate(usages)]

    def split(*wanted: str) -> LabeledImages:
        pos = np.flatnonzero(np.isin(usages, wanted))
        if len(pos) == 0:
            raise UserError(
                f"{path}: no row with Usage {' or '.join(wanted)}, so that split is empty; "
                f"{CSV_NAME} must hold Training, PublicTest and PrivateTest rows"
            )
        images = PixelImages(table.pixels[pos], [names[i] for i in pos], path, table.lines[pos])
        return LabeledImages(images, labels[pos])

    notes = []
    splits = {"train": split("Training")}
    if test_usage == "both":
        splits["test"] = split("PublicTest", "PrivateTest")
    elif test_usage == "PrivateTest":
        splits["test"] = split("PrivateTest")
        splits["val"] = split("PublicTest")
    else:
        splits["test"] = split("PublicTest")
        unused = int(np.sum(usages == "PrivateTest"))
        notes.append(
            f"fer2013: {unused} PrivateTest images not used (dataset.test_usage=PublicTest)"
        )
    return DatasetFiles(class_names, splits, notes)


def _read_folders(root: Path, class_names: list[str], test_usage: str) -> DatasetFiles:
    if test_usage != "both":
        raise UserError(
            f"dataset.test_usage={test_usage}, but the image-folder release under {root} keeps "
            f"PublicTest and PrivateTest together in test/; use Kaggle's {CSV_NAME} to tell them "
            "apart, or set dataset.test_usage=both"
        )
    splits = {}
    ignored: list[Path] = []
    for split in FOLDER_SPLITS:
        paths: list[Path] = []
        labels: list[int] = []
        for entry in sorted((root / split).iterdir()):
            if not entry.is_dir():
                ignored.append(entry)
                continue
            cls = entry.name.lower()
            if cls not in FOLDER_CLASSES:
                raise UserError(
                    f"{entry}: class folder {entry.name!r} is not one of FER2013's "
                    f"{', '.join(sorted(FOLDER_CLASSES))}; rename or move it out of {root / split}"
                )
            for file in sorted(entry.iterdir()):
                if file.is_file() and file.suffix.lower() in IMAGE_SUFFIXES:
                    paths.append(file)
                    labels.append(FOLDER_CLASSES.index(cls))
                else:
                    ignored.append(file)
        if not paths:
            raise UserError(
                f"{root / split}: no images in its class folders ({', '.join(FOLDER_CLASSES)}), "
                f"so the {split} split is empty"
            )
        names = [p.relative_to(root).as_posix() for p in paths]
        splits[split] = LabeledImages(FileImages(paths, names), np.array(labels, dtype=np.int64))
    notes = []
    if ignored:
        shown = ", ".join(p.relative_to(root).as_posix() for p in ignored[:3])
        more = f" and {len(ignored) - 3} more" if len(ignored) > 3 else ""
        notes.append(
            f"fer2013: {len(ignored)} non-image entries in the split folders ignored "
            f"({shown}{more})"
        )
    return DatasetFiles(class_names, splits, notes)
