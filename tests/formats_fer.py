"""Tiny generated FER2013 and FERPlus datasets in the exact on-disk layouts users have: Kaggle's
fer2013.csv, the FER2013 image-folder release, FERPlus's data/ folder (or a clone of the repository)
and fer2013new.csv next to fer2013.csv. The reader tests and the end-to-end `python run.py
dataset=...` tests use them, so each writes what the real release writes (header rows, quoting,
column order, file names, LF line ends). Faces are the project's cartoon faces drawn in grey, one
expression per class, so a model can learn them.

FERPlus generators share one plan per seed: the folder and CSV sources of the same arguments hold
the same images with the same votes (names differ only by the split folder prefix)."""

from __future__ import annotations

import functools
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from scn.data.synthetic import render_face

FER2013_HEADER = "emotion,pixels,Usage"
FER2013_CLASSES = ("Angry", "Disgust", "Fear", "Happy", "Sad", "Surprise", "Neutral")  # ids 0..6
FER2013_FOLDERS = ("angry", "disgust", "fear", "happy", "sad", "surprise", "neutral")  # id order
FERPLUS_CLASSES = (
    "Neutral",
    "Happiness",
    "Surprise",
    "Sadness",
    "Anger",
    "Disgust",
    "Fear",
    "Contempt",
)
FERPLUS_NEW_HEADER = (
    "Usage,Image name,neutral,happiness,surprise,sadness,anger,disgust,fear,contempt,unknown,NF"
)
FERPLUS_FOLDERS = {
    "Training": "FER2013Train",
    "PublicTest": "FER2013Valid",
    "PrivateTest": "FER2013Test",
}
FERPLUS_BOX = '"(0, 0, 48, 48)"'  # label.csv's face box: always the whole image, quoted
UNNAMED_VOTES = (0, 0, 0, 0, 0, 0, 0, 0, 0, 10)  # what fer2013new.csv's rows without a name hold
# rows the majority rule drops, added to each split when `dropped=True`: (reason, votes)
FERPLUS_DROPPED = (
    ("no majority", (4, 0, 0, 1, 3, 2, 0, 0, 0, 0)),  # 4 of 9 after removing single votes
    ("unknown/NF", (2, 0, 0, 0, 0, 0, 0, 0, 8, 0)),  # unknown wins
    ("unknown/NF", (0, 0, 0, 0, 0, 0, 0, 0, 0, 10)),  # not a face
)

# which cartoon expression (scn.data.synthetic's RAF-DB order) draws each class
_FER2013_FACE = (5, 2, 1, 3, 4, 0, 6)
_FERPLUS_FACE = (6, 3, 0, 4, 5, 2, 1, 2)  # Contempt has no cartoon: drawn as Disgust
_FERPLUS_TO_FER2013 = (6, 3, 5, 4, 0, 1, 2, 1)  # fer2013.csv's own emotion for each FERPlus class


def face(rng: np.random.Generator, expression: int, size: int = 48) -> np.ndarray:
    """One grey face (size, size) uint8 of a cartoon expression (RAF-DB order 0..6)."""
    return np.asarray(render_face(rng, expression, size).convert("L"))


def pixel_text(pixels: np.ndarray) -> str:
    """fer2013.csv's pixels cell: grey values row-major, separated by single spaces."""
    return " ".join(map(str, np.asarray(pixels).ravel().tolist()))


def fer2013_row(emotion: int | str, pixels: np.ndarray | str, usage: str) -> str:
    """One fer2013.csv line (no quotes: the pixels cell holds no comma)."""
    text = pixels if isinstance(pixels, str) else pixel_text(pixels)
    return f"{emotion},{text},{usage}"


def write_lines(path: Path, lines: Sequence[str], newline: str = "\n") -> Path:
    """A text file of `lines`, each ended by `newline` (the releases use LF)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes("".join(f"{ln}{newline}" for ln in lines).encode())
    return path


def _usage_order(rng: np.random.Generator, per_class: int, num_classes: int) -> np.ndarray:
    return rng.permutation(np.repeat(np.arange(num_classes), per_class))


def write_fer2013_csv(
    root: Path,
    train_per_class: int = 8,
    public_per_class: int = 2,
    private_per_class: int = 2,
    size: int = 48,
    seed: int = 0,
) -> Path:
    """`root/fer2013.csv` as Kaggle ships it: header `emotion,pixels,Usage`, Training rows, then
    PublicTest, then PrivateTest, classes shuffled within each. `size` other than 48 writes a file
    the reader must reject. Returns the folder to pass as dataset.root."""
    rng = np.random.default_rng(seed)
    lines = [FER2013_HEADER]
    for usage, per_class in (
        ("Training", train_per_class),
        ("PublicTest", public_per_class),
        ("PrivateTest", private_per_class),
    ):
        for label in _usage_order(rng, per_class, len(FER2013_CLASSES)):
            lines.append(fer2013_row(int(label), face(rng, _FER2013_FACE[label], size), usage))
    write_lines(root / "fer2013.csv", lines)
    return root


def write_fer2013_folders(
    root: Path, train_per_class: int = 8, test_per_class: int = 4, size: int = 48, seed: int = 0
) -> Path:
    """The image-folder release: `train/<class>/Training_<n>.jpg` and `test/<class>/` holding
    `PublicTest_<n>.jpg` and `PrivateTest_<n>.jpg` (grey JPEGs, lowercase class folders).
    Returns the folder to pass as dataset.root."""
    rng = np.random.default_rng(seed)
    serial = 10_000_000  # the release numbers files with 8-digit ids
    for split, per_class in (("train", train_per_class), ("test", test_per_class)):
        for k, label in enumerate(_usage_order(rng, per_class, len(FER2013_CLASSES))):
            usage = "Training" if split == "train" else ("PublicTest", "PrivateTest")[k % 2]
            folder = root / split / FER2013_FOLDERS[label]
            folder.mkdir(parents=True, exist_ok=True)
            serial += int(rng.integers(1, 5000))
            img = Image.fromarray(face(rng, _FER2013_FACE[label], size))
            img.save(folder / f"{usage}_{serial}.jpg", quality=95)
    return root


def ferplus_votes(rng: np.random.Generator, label: int) -> tuple[int, ...]:
    """10 votes whose majority (after removing single votes) is `label` (0..7)."""
    votes = [0] * 10
    top = int(rng.integers(6, 11))
    votes[label] = top
    for _ in range(10 - top):
        other = int(rng.choice([c for c in range(10) if c != label]))
        votes[other] += 1
    return tuple(votes)


def ferplus_label_row(name: str, votes: Sequence[int | str]) -> str:
    """One label.csv line: `fer0000000.png,"(0, 0, 48, 48)",v1,...,v10`."""
    return f"{name},{FERPLUS_BOX}," + ",".join(map(str, votes))


def fer2013new_row(usage: str, name: str, votes: Sequence[int | str]) -> str:
    """One fer2013new.csv line: `Training,fer0000000.png,v1,...,v10` (name empty when dropped)."""
    return f"{usage},{name}," + ",".join(map(str, votes))


@dataclass(frozen=True)
class FerPlusRow:
    """One row of the FER2013 table as FERPlus labels it; `name` empty for rows FERPlus dropped."""

    usage: str
    name: str
    votes: tuple[int, ...]
    label: int  # the majority label, -1 when the rule drops the row
    pixels: np.ndarray


def ferplus_plan(
    train_per_class: int = 6,
    valid_per_class: int = 2,
    test_per_class: int = 4,
    size: int = 48,
    dropped: bool = True,
    seed: int = 0,
) -> list[FerPlusRow]:
    """The rows both FERPlus generators write, in fer2013.csv order (Training, PublicTest,
    PrivateTest). With `dropped`, each usage also gets the FERPLUS_DROPPED rows (named, the
    majority rule drops them) and one row without an Image name. Cached: drawing is the slow part,
    and the pixel arrays are read-only."""
    return list(_plan(train_per_class, valid_per_class, test_per_class, size, dropped, seed))


@functools.lru_cache(maxsize=8)
def _plan(
    train_per_class: int,
    valid_per_class: int,
    test_per_class: int,
    size: int,
    dropped: bool,
    seed: int,
) -> tuple[FerPlusRow, ...]:
    rng = np.random.default_rng(seed)
    rows: list[FerPlusRow] = []
    for usage, per_class in (
        ("Training", train_per_class),
        ("PublicTest", valid_per_class),
        ("PrivateTest", test_per_class),
    ):
        entries: list[tuple[int, tuple[int, ...] | None]] = [
            (int(c), None) for c in np.repeat(np.arange(len(FERPLUS_CLASSES)), per_class)
        ]
        if dropped:
            entries += [(-1, votes) for _, votes in FERPLUS_DROPPED] + [(-2, UNNAMED_VOTES)]
        for k in rng.permutation(len(entries)):
            label, votes = entries[k]
            expression = _FERPLUS_FACE[label] if label >= 0 else 6
            pixels = face(rng, expression, size)
            pixels.setflags(write=False)
            if label == -2:
                rows.append(FerPlusRow(usage, "", votes, -1, pixels))
                continue
            name = f"fer{len(rows):07d}.png"
            rows.append(FerPlusRow(usage, name, votes or ferplus_votes(rng, label), label, pixels))
    return tuple(rows)


def write_ferplus_folders(
    root: Path,
    train_per_class: int = 6,
    valid_per_class: int = 2,
    test_per_class: int = 4,
    size: int = 48,
    dropped: bool = True,
    clone: bool = False,
    seed: int = 0,
) -> Path:
    """FERPlus's data/ folder after its generate_training_data.py: FER2013Train/, FER2013Valid/,
    FER2013Test/, each with grey PNGs and a header-less label.csv. `clone=True` writes a clone of
    the repository instead (`root/data/...` plus `root/fer2013new.csv`, as the repository ships it).
    Returns the folder to pass as dataset.root (the data folder, or the clone)."""
    data = root / "data" if clone else root
    plan = ferplus_plan(train_per_class, valid_per_class, test_per_class, size, dropped, seed)
    lines: dict[str, list[str]] = {u: [] for u in FERPLUS_FOLDERS}
    for row in plan:
        if not row.name:  # FERPlus writes no image for rows without a name
            continue
        folder = data / FERPLUS_FOLDERS[row.usage]
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(row.pixels).save(folder / row.name, compress_level=0)
        lines[row.usage].append(ferplus_label_row(row.name, row.votes))
    for usage, rows in lines.items():
        write_lines(data / FERPLUS_FOLDERS[usage] / "label.csv", rows)
    if clone:
        _write_fer2013new(root, plan)
    return root


def write_ferplus_csv(
    root: Path,
    train_per_class: int = 6,
    valid_per_class: int = 2,
    test_per_class: int = 4,
    size: int = 48,
    dropped: bool = True,
    seed: int = 0,
) -> Path:
    """`root/fer2013new.csv` (FERPlus's votes) next to Kaggle's `root/fer2013.csv`, row-aligned, as
    a user holds them before running FERPlus's generate_training_data.py. Returns root."""
    plan = ferplus_plan(train_per_class, valid_per_class, test_per_class, size, dropped, seed)
    _write_fer2013new(root, plan)
    fer_lines = [FER2013_HEADER]
    for row in plan:
        emotion = _FERPLUS_TO_FER2013[row.label] if row.label >= 0 else 6
        fer_lines.append(fer2013_row(emotion, row.pixels, row.usage))
    write_lines(root / "fer2013.csv", fer_lines)
    return root


def _write_fer2013new(root: Path, plan: Sequence[FerPlusRow]) -> None:
    lines = [FERPLUS_NEW_HEADER] + [fer2013new_row(r.usage, r.name, r.votes) for r in plan]
    write_lines(root / "fer2013new.csv", lines)
