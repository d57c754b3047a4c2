"""Label files as researchers have them: RAF-DB's list, the original SCN noisy lists, and a CSV of
`path,label` rows for any dataset."""

from __future__ import annotations

import csv
import io
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from scn.errors import UserError

RAFDB_LABEL_FILE = Path("EmoLabel/list_patition_label.txt")  # sic: RAF-DB's own spelling
RAFDB_IMAGE_DIR = Path("Image/aligned")
ALIGNED_SUFFIX = "_aligned.jpg"
LABEL_FORMATS = ("auto", "rafdb", "scn_list", "csv")
RAFDB_CLASS_NAMES = ("Surprise", "Fear", "Disgust", "Happiness", "Sadness", "Anger", "Neutral")


@dataclass(frozen=True)
class LabelEntry:
    """One line of a label file: the image as the dataset names it and a 0-based label."""

    name: str
    label: int
    line: int


def name_from_token(token: str, fmt: str) -> str:
    """RAF-DB name of the first token: `train_00001.jpg` as is, or `<dir>/train_00001_aligned.jpg`."""
    if fmt == "rafdb":
        return token
    base = token.replace("\\", "/").rsplit("/", 1)[-1]
    return base[: -len(ALIGNED_SUFFIX)] + ".jpg"


def detect_format(first_token: str) -> str:
    """The original SCN lists name aligned files; RAF-DB's own list names the plain image."""
    return "scn_list" if first_token.endswith(ALIGNED_SUFFIX) else "rafdb"


def parse_label_file(
    path: Path, fmt: str = "auto", class_names: Sequence[str] = RAFDB_CLASS_NAMES
) -> list[LabelEntry]:
    """Read a label file; labels come back 0-based.

    `rafdb`: `<name> <1..C>` lines; `scn_list`: `<dir>/<name>_aligned.jpg <0..C-1>` lines (both
    tolerate CRLF, blank lines, extra spaces and no final newline); `csv`: `path,label` rows with an
    optional header, label a class name or a 0-based index. `auto` picks csv for a `.csv` file or a
    first line with a comma, else tells the two RAF-DB list formats apart by the first name.
    """
    if fmt not in LABEL_FORMATS:
        raise UserError(f"unknown label format {fmt!r}; use one of {', '.join(LABEL_FORMATS)}")
    path = Path(path)
    if not path.is_file():
        raise UserError(f"label file not found: {path}")
    try:
        text = path.read_bytes().decode("utf-8-sig")
    except UnicodeDecodeError as e:
        raise UserError(
            f"{path}: not a UTF-8 text file ({e}); expected '<image> <label>' lines"
        ) from e
    first = next((line for line in text.splitlines() if line.strip()), "")
    if fmt == "csv" or (fmt == "auto" and (path.suffix.lower() == ".csv" or "," in first)):
        return _parse_csv(path, text, list(class_names))
    num_classes = len(class_names)
    entries: list[LabelEntry] = []
    seen: dict[str, int] = {}
    for lineno, raw in enumerate(text.splitlines(), start=1):
        line = raw.strip()
        if not line:
            continue
        parts = line.split()
        if len(parts) != 2:
            raise UserError(
                f"{path}:{lineno}: expected '<image name> <label>', got {raw!r}; fix or delete the line"
            )
        token, label_text = parts
        if fmt == "auto":
            fmt = detect_format(token)
        if fmt == "scn_list" and not token.endswith(ALIGNED_SUFFIX):
            raise UserError(
                f"{path}:{lineno}: {token!r} does not end in {ALIGNED_SUFFIX!r} as the SCN list format "
                "requires; set dataset.label_format=rafdb if this file names plain images"
            )
        try:
            label = int(label_text)
        except ValueError:
            raise UserError(f"{path}:{lineno}: label {label_text!r} is not an integer") from None
        low, high = (1, num_classes) if fmt == "rafdb" else (0, num_classes - 1)
        if not low <= label <= high:
            other = "scn_list (0-based)" if fmt == "rafdb" else "rafdb (1-based)"
            raise UserError(
                f"{path}:{lineno}: label {label} outside {low}..{high} for the {fmt} format; "
                f"fix the line, or set dataset.label_format={other.split()[0]} if the file is {other}"
            )
        name = name_from_token(token, fmt)
        if name in seen:
            raise UserError(f"{path}:{lineno}: {name} already labelled on line {seen[name]}")
        seen[name] = lineno
        entries.append(LabelEntry(name, label - low, lineno))
    if not entries:
        raise UserError(f"{path}: no labelled lines; expected '<image name> <label>' per line")
    return entries


def _parse_csv(path: Path, text: str, class_names: list[str]) -> list[LabelEntry]:
    """`path,label` rows; the label is a class name (as the dataset names classes) or 0-based index."""
    by_name = {n: i for i, n in enumerate(class_names)}
    entries: list[LabelEntry] = []
    seen: dict[str, int] = {}
    for lineno, row in enumerate(csv.reader(io.StringIO(text)), start=1):
        if not row or not "".join(row).strip():
            continue
        if len(row) != 2:
            raise UserError(
                f"{path}:{lineno}: expected 2 columns 'path,label', got {len(row)}: {row!r}"
            )
        name, label_text = row[0].strip(), row[1].strip()
        if lineno == 1 and (name.lower(), label_text.lower()) == ("path", "label"):
            continue  # the header
        if label_text in by_name:
            label = by_name[label_text]
        elif label_text.isdigit() and int(label_text) < len(class_names):
            label = int(label_text)
        else:
            raise UserError(
                f"{path}:{lineno}: label {label_text!r} is neither a class name "
                f"({', '.join(class_names)}) nor an index 0..{len(class_names) - 1}"
            )
        if name in seen:
            raise UserError(f"{path}:{lineno}: {name} already labelled on line {seen[name]}")
        seen[name] = lineno
        entries.append(LabelEntry(name, label, lineno))
    if not entries:
        raise UserError(f"{path}: no labelled rows; expected 'path,label' per row")
    return entries


def image_path(root: Path, name: str) -> Path:
    """RAF-DB keeps `train_00001.jpg`'s aligned crop at `Image/aligned/train_00001_aligned.jpg`."""
    return root / RAFDB_IMAGE_DIR / (Path(name).stem + ALIGNED_SUFFIX)


def split_of(name: str) -> str:
    """RAF-DB splits by name prefix."""
    for split in ("train", "test"):
        if name.startswith(split):
            return split
    return ""
