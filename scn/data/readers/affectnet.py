"""AffectNet as distributed, in either of its two releases:

- csv: `Manually_Annotated_file_lists/{training,validation}.csv` (a header row, then one row per
  image: subDirectory_filePath, face_x, face_y, face_width, face_height, facial_landmarks,
  expression, valence, arousal) with the images under `Manually_Annotated_Images/`; each image is
  cropped to its face box when decoded, as the release intends.
- npy: `{train_set,val_set}/images/<id>.jpg` (already cropped) with `annotations/<id>_exp.npy`, a
  0-d array holding the expression id (a string in the distributed files; an int is accepted too).

Expression ids 0..7 are Neutral, Happy, Sad, Surprise, Fear, Disgust, Anger, Contempt; 8..10 (None,
Uncertain, No-Face) are dropped, and Contempt too with `dataset.num_classes=7`. The validation set
is the test split, as every published AffectNet result uses it (the test set was never released).
"""

from __future__ import annotations

import csv
import io
import logging
import os
import re
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from omegaconf import DictConfig

from scn.data.sources import DatasetFiles, FileImages, LabeledImages
from scn.errors import UserError

log = logging.getLogger(__name__)

CLASS_NAMES = ("Neutral", "Happy", "Sad", "Surprise", "Fear", "Disgust", "Anger", "Contempt")
CONTEMPT = 7
DROPPED_IDS = {8: "None", 9: "Uncertain", 10: "No-Face"}
MAX_ID = 10

CSV_LIST_DIR = Path("Manually_Annotated_file_lists")
CSV_IMAGE_DIR = Path("Manually_Annotated_Images")
CSV_FILES = {"train": "training.csv", "test": "validation.csv"}
CSV_COLUMNS = (
    "subDirectory_filePath",
    "face_x",
    "face_y",
    "face_width",
    "face_height",
    "facial_landmarks",
    "expression",
    "valence",
    "arousal",
)
BOX_COLUMNS = ("face_x", "face_y", "face_width", "face_height")

NPY_DIRS = {"train": "train_set", "test": "val_set"}
NPY_IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff")
EXP_SUFFIX = "_exp.npy"
NPY_MAGIC = b"\x93NUMPY"
NPY_READ_THREADS = 4  # annotation files are tiny; threads overlap their open/read latency
NPY_CHUNK = 4096  # annotation files per thread task (a task per file costs more than the read)

RELEASES = ("auto", "csv", "npy")


@dataclass
class _Split:
    """One split as parsed: kept rows and what the dataset's rules dropped."""

    names: list[str] = field(default_factory=list)
    paths: list[Path] = field(default_factory=list)
    labels: list[int] = field(default_factory=list)
    boxes: list[tuple[int, int, int, int]] | None = None
    dropped_none: int = 0  # ids 8..10
    dropped_contempt: int = 0


def read(dcfg: DictConfig, root: Path) -> DatasetFiles:
    """Map either AffectNet release under `root` onto train (training set) and test (validation)."""
    num_classes = dcfg.num_classes
    if num_classes not in (7, 8) or isinstance(num_classes, bool):
        raise UserError(
            f"dataset.num_classes={num_classes}; AffectNet has 8 expressions (ids 0..7), "
            "set 8, or 7 to drop Contempt"
        )
    class_names = _class_names(dcfg.class_names, num_classes)
    release = _detect_release(root, str(dcfg.release))
    log.debug("reading the AffectNet %s release under %s", release, root)
    splits: dict[str, LabeledImages] = {}
    notes: list[str] = []
    seen: dict[str, tuple[Path, int]] = {}  # name -> file and line first listing it (unique names)
    for split in ("train", "test"):
        if release == "csv":
            source = root / CSV_LIST_DIR / CSV_FILES[split]
            parsed = _read_csv(source, root / CSV_IMAGE_DIR, num_classes, seen)
        else:
            source = root / NPY_DIRS[split]
            parsed = _read_npy(root, NPY_DIRS[split], num_classes)
        if not parsed.labels:
            raise UserError(
                f"{source}: the {split} split has no images with expression ids "
                f"0..{num_classes - 1} ({parsed.dropped_none} None/Uncertain/No-Face, "
                f"{parsed.dropped_contempt} Contempt dropped); check that this is the AffectNet "
                "release it looks like"
            )
        boxes = None if parsed.boxes is None else np.asarray(parsed.boxes, dtype=np.int64)
        images = FileImages(parsed.paths, parsed.names, boxes)
        splits[split] = LabeledImages(images, np.asarray(parsed.labels, dtype=np.int64))
        contempt = (
            f"{parsed.dropped_contempt} Contempt (num_classes=7)"
            if num_classes == 7
            else "Contempt kept (num_classes=8)"
        )
        notes.append(
            f"affectnet {split} ({source.name}): {len(parsed.labels)} kept, "
            f"{parsed.dropped_none} dropped as None/Uncertain/No-Face (ids 8-10), "
            f"{contempt}"
        )
    return DatasetFiles(class_names, splits, notes)


def _class_names(given: object, num_classes: int) -> list[str]:
    """The expression names for ids 0..num_classes-1; a given list renames them (same order)."""
    if given is None:
        return list(CLASS_NAMES[:num_classes])
    names = [str(n) for n in given]
    if len(names) != num_classes:
        raise UserError(
            f"dataset.class_names has {len(names)} names but dataset.num_classes={num_classes}; "
            f"give one name per expression id in order ({', '.join(CLASS_NAMES[:num_classes])}) "
            "or set dataset.class_names=null"
        )
    return names


def _detect_release(root: Path, release: str) -> str:
    """Which release the root holds: the file lists (csv) or train_set/val_set (npy)."""
    if release not in RELEASES:
        raise UserError(f"dataset.release={release!r}; use one of {', '.join(RELEASES)}")
    has_csv = (root / CSV_LIST_DIR).is_dir()
    has_npy = any((root / d).is_dir() for d in NPY_DIRS.values())
    if release == "auto":
        if has_csv and has_npy:
            raise UserError(
                f"{root} holds both AffectNet releases ({CSV_LIST_DIR}/ and "
                f"{'/, '.join(NPY_DIRS.values())}/); set dataset.release=csv or dataset.release=npy"
            )
        if not (has_csv or has_npy):
            raise UserError(
                f"no AffectNet release found in {root}: looked for {CSV_LIST_DIR}/"
                f"{{{','.join(CSV_FILES.values())}}} with {CSV_IMAGE_DIR}/ (the csv release), and "
                f"{{{','.join(NPY_DIRS.values())}}}/images/<id>.jpg with "
                f"annotations/<id>{EXP_SUFFIX} (the npy release); point dataset.root at the folder "
                "holding them"
            )
        return "csv" if has_csv else "npy"
    return release


def _keep(expression: int, num_classes: int, split: _Split) -> bool:
    """The dataset's rule: ids 8..10 are not expressions; Contempt is dropped for 7 classes."""
    if expression in DROPPED_IDS:
        split.dropped_none += 1
        return False
    if expression == CONTEMPT and num_classes == 7:
        split.dropped_contempt += 1
        return False
    return True


def _box_value(text: str, path: Path, line: int, column: str) -> int:
    """Face box columns are integers; floats such as `134.0` are accepted when integral."""
    try:
        return int(text)
    except ValueError:
        pass
    try:
        value = float(text)
    except ValueError:
        value = float("nan")
    if not value.is_integer():
        raise UserError(
            f"{path}:{line}: {column} {text!r} is not an integer pixel offset; fix the row or "
            "delete it"
        )
    return int(value)


def _read_csv(
    path: Path, image_dir: Path, num_classes: int, seen: dict[str, tuple[Path, int]]
) -> _Split:
    """Parse one file list, keeping what the rules keep; names are subDirectory_filePath as
    written."""
    if not path.is_file():
        raise UserError(
            f"AffectNet file list not found: {path}; the csv release holds {CSV_LIST_DIR}/"
            f"{' and '.join(CSV_FILES.values())}"
        )
    out = _Split(boxes=[])
    records = _records(path)
    header_line, header = next(records, (1, None))
    if header is None:
        raise UserError(f"{path}: empty file; expected a header row {','.join(CSV_COLUMNS)}")
    header = [h.strip() for h in header]
    needed = ("subDirectory_filePath", *BOX_COLUMNS, "expression")
    lacking = [c for c in needed if c not in header]
    if lacking:
        raise UserError(
            f"{path}:{header_line}: the header lacks column(s) {', '.join(lacking)}; an AffectNet "
            f"file list starts with the row {','.join(CSV_COLUMNS)}"
        )
    i_name, i_x, i_y, i_w, i_h, i_exp = (header.index(c) for c in needed)
    width = max(i_name, i_x, i_y, i_w, i_h, i_exp) + 1
    for line, row in records:
        if len(row) < width:
            raise UserError(
                f"{path}:{line}: {len(row)} fields, expected {len(header)} "
                f"({','.join(header)}); fix or delete the line"
            )
        try:
            expression = int(row[i_exp])
        except ValueError:
            expression = -1
        if not 0 <= expression <= MAX_ID:
            raise UserError(
                f"{path}:{line}: expression {row[i_exp]!r} is not an AffectNet expression id "
                f"(an integer 0..{MAX_ID}); fix or delete the line"
            )
        if not _keep(expression, num_classes, out):
            continue
        name = row[i_name]
        if not name:
            raise UserError(f"{path}:{line}: empty subDirectory_filePath; fix or delete the line")
        if name in seen:
            first, first_line = seen[name]
            raise UserError(
                f"{path}:{line}: {name} is already listed at {first}:{first_line}; delete one row"
            )
        seen[name] = (path, line)
        try:
            box = (int(row[i_x]), int(row[i_y]), int(row[i_w]), int(row[i_h]))
        except ValueError:
            box = tuple(
                _box_value(row[i], path, line, c)
                for i, c in zip((i_x, i_y, i_w, i_h), BOX_COLUMNS, strict=True)
            )
        if box[2] <= 0 or box[3] <= 0:
            raise UserError(
                f"{path}:{line}: face box {','.join(map(str, box))} has no area (face_width and "
                "face_height must be positive); fix or delete the line"
            )
        out.names.append(name)
        out.paths.append(image_dir / name)
        out.labels.append(expression)
        out.boxes.append(box)  # type: ignore[union-attr]
    return out


def _records(path: Path) -> Iterator[tuple[int, list[str]]]:
    """(line number, fields) of each non-blank row. The release quotes nothing, and splitting lines
    on commas is ~5x faster than the csv module on its 900-character landmark fields (287k rows:
    ~1.5 s instead of ~7 s); a file holding any quote character is read with the csv module."""
    with open(path, "rb") as f:
        quoted = any(b'"' in chunk for chunk in iter(lambda: f.read(1 << 24), b""))
    with open(path, newline="", encoding="utf-8-sig") as f:
        if quoted:
            reader = csv.reader(f)
            for row in reader:
                if row:
                    yield reader.line_num, row
            return
        for lineno, text in enumerate(f, start=1):
            text = text.rstrip("\r\n")
            if text:
                yield lineno, text.split(",")


def _sort_key(stem: str) -> tuple[int, int, str]:
    """Numeric ids in numeric order (the release names images 0.jpg, 1.jpg, ...), others after."""
    return (0, int(stem), stem) if stem.isdigit() else (1, 0, stem)


def _read_npy(root: Path, set_dir: str, num_classes: int) -> _Split:
    """One `<set>/images` + `<set>/annotations` folder; names are `<set>/images/<file>`."""
    folder = root / set_dir
    image_dir, ann_dir = folder / "images", folder / "annotations"
    for d in (image_dir, ann_dir):
        if not d.is_dir():
            raise UserError(
                f"folder not found: {d}; the npy release holds {set_dir}/images/<id>.jpg and "
                f"{set_dir}/annotations/<id>{EXP_SUFFIX}"
            )
    with os.scandir(image_dir) as it:
        files = [
            e.name
            for e in it
            if not e.name.startswith(".")
            and e.name.lower().endswith(NPY_IMAGE_SUFFIXES)
            and e.is_file()
        ]
    files.sort(key=lambda n: _sort_key(n.rsplit(".", 1)[0]))
    with os.scandir(ann_dir) as it:
        annotations = {e.name for e in it if e.name.endswith(EXP_SUFFIX)}
    for name in files:
        if name.rsplit(".", 1)[0] + EXP_SUFFIX not in annotations:
            raise UserError(
                f"{ann_dir / (name.rsplit('.', 1)[0] + EXP_SUFFIX)} not found: every image in "
                f"{image_dir} needs its expression file; restore it or remove {image_dir / name}"
            )
    ann = str(ann_dir)
    ann_paths = [os.path.join(ann, n.rsplit(".", 1)[0] + EXP_SUFFIX) for n in files]
    layouts: dict[bytes, tuple[np.dtype, int]] = {}

    def read_chunk(paths: list[str]) -> list[int]:
        return [_expression_id(p, layouts) for p in paths]

    chunks = [ann_paths[a : a + NPY_CHUNK] for a in range(0, len(ann_paths), NPY_CHUNK)]
    if len(chunks) <= 1:
        ids = read_chunk(ann_paths)
    else:
        with ThreadPoolExecutor(NPY_READ_THREADS) as pool:
            ids = [i for chunk in pool.map(read_chunk, chunks) for i in chunk]
    out = _Split()
    for name, expression in zip(files, ids, strict=True):
        if _keep(expression, num_classes, out):
            out.names.append(f"{set_dir}/images/{name}")
            out.paths.append(image_dir / name)
            out.labels.append(expression)
    return out


def _npy_item(path: str, layouts: dict[bytes, tuple[np.dtype, int]]) -> object:
    """The single value a tiny .npy holds. np.load parses the header with `ast` (~140 us a file,
    40 s for 287k files), so a header already validated by np.load is reused for files that
    repeat it."""
    try:
        with open(path, "rb", buffering=0) as f:
            raw = f.read()
    except OSError as e:
        raise UserError(f"cannot read {path}: {e}") from e
    end = _header_end(raw)
    layout = layouts.get(raw[:end]) if end else None
    if layout is not None and len(raw) - end == layout[1]:
        return np.frombuffer(raw, dtype=layout[0], count=1, offset=end)[0].item()
    try:
        arr = np.load(io.BytesIO(raw), allow_pickle=False)
    except (OSError, ValueError, EOFError) as e:
        raise UserError(
            f"{path}: not a readable .npy expression file ({e}); restore it from the release"
        ) from e
    if not isinstance(arr, np.ndarray) or arr.size != 1:
        shape = getattr(arr, "shape", type(arr).__name__)
        raise UserError(
            f"{path}: holds an array of shape {shape}, expected one expression id (a 0-d array)"
        )
    if end and arr.dtype.itemsize == len(raw) - end:
        layouts[raw[:end]] = (arr.dtype, arr.dtype.itemsize)
    return arr.reshape(()).item()


def _header_end(raw: bytes) -> int:
    """Offset of the data after an .npy header, or 0 when `raw` does not start like an .npy."""
    if raw[:6] != NPY_MAGIC or len(raw) < 10:
        return 0
    if raw[6] == 1:
        return 10 + int.from_bytes(raw[8:10], "little")
    if raw[6] in (2, 3) and len(raw) >= 12:
        return 12 + int.from_bytes(raw[8:12], "little")
    return 0


_INT_TEXT = re.compile(r"\s*\d+\s*")


def _expression_id(path: str, layouts: dict[bytes, tuple[np.dtype, int]]) -> int:
    """A `<id>_exp.npy` value as an int 0..10; the release stores it as a string such as '3'."""
    value = _npy_item(path, layouts)
    if isinstance(value, bytes):
        value = value.decode("ascii", "replace")
    if isinstance(value, str) and _INT_TEXT.fullmatch(value):
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= MAX_ID:
        raise UserError(
            f"{path}: holds {value!r}, not an AffectNet expression id (0..{MAX_ID} as a string or "
            "integer); restore the file from the release"
        )
    return value
