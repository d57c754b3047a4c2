"""Tiny generated datasets in the exact on-disk layouts users have: both AffectNet releases and an
ImageFolder tree. The reader tests and the end-to-end `python run.py dataset=...` tests use them, so
each writes what the real release writes (file names, header row, column order, value formats)."""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image

AFFECTNET_CSV_HEADER = (
    "subDirectory_filePath,face_x,face_y,face_width,face_height,facial_landmarks,expression,"
    "valence,arousal"
)
AFFECTNET_DROPPED_IDS = (8, 9, 10)  # None, Uncertain, No-Face
FER_CLASSES = ("angry", "disgust", "fear", "happy", "neutral", "sad", "surprise")  # FER2013 folders


def _noise_image(rng: np.random.Generator, width: int, height: int) -> Image.Image:
    """A smooth colour gradient plus noise: cheap, and not constant (so crops and resizes show)."""
    yy, xx = np.mgrid[0:height, 0:width]
    base = rng.integers(0, 256, 3)
    arr = (base + np.stack([xx * 3, yy * 3, (xx + yy) * 2], -1)) % 256
    arr = arr + rng.integers(-20, 21, (height, width, 3))
    return Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8))


def affectnet_csv_row(
    name: str,
    box: Sequence[int | str],
    expression: int | str,
    rng: np.random.Generator | None = None,
) -> str:
    """One file-list row as the release writes it: 68 landmarks as `x;y;...` with 2 decimals,
    valence/arousal with 6 decimals (-2 for ids 8-10, as the release marks them)."""
    rng = rng or np.random.default_rng(0)
    x, y, w, h = (float(v) if not isinstance(v, str) else 0.0 for v in box)
    pts = np.stack([rng.uniform(x, x + max(w, 1), 68), rng.uniform(y, y + max(h, 1), 68)], 1)
    landmarks = ";".join(f"{v:.2f}" for v in pts.ravel())
    no_expression = str(expression).strip().isdigit() and int(expression) >= 8
    affect = ["-2", "-2"] if no_expression else [f"{v:.6f}" for v in rng.uniform(-1, 1, 2)]
    fields = [name, *map(str, box), landmarks, str(expression), *affect]
    return ",".join(fields)


def write_affectnet_lists(root: Path, train_rows: Sequence[str], test_rows: Sequence[str]) -> Path:
    """`Manually_Annotated_file_lists/{training,validation}.csv` with the release's header row."""
    lists = root / "Manually_Annotated_file_lists"
    lists.mkdir(parents=True, exist_ok=True)
    for fname, rows in (("training.csv", train_rows), ("validation.csv", test_rows)):
        (lists / fname).write_text("\n".join([AFFECTNET_CSV_HEADER, *rows]) + "\n")
    return root


def write_affectnet_csv(
    root: Path,
    train_per_class: int = 4,
    test_per_class: int = 2,
    dropped: int = 1,
    size: int = 40,
    seed: int = 0,
) -> Path:
    """The csv release: per split, `*_per_class` images of each id 0..7 plus `dropped` of each of
    8, 9, 10, in shuffled order, under Manually_Annotated_Images/<subdir>/<56 hex>.jpg. Images are
    JPEGs of mixed sizes (size..size+8 px a side) with a face box inside each, as in the release."""
    rng = np.random.default_rng(seed)
    image_dir = root / "Manually_Annotated_Images"
    rows: dict[str, list[str]] = {}
    for split, per_class in (("train", train_per_class), ("test", test_per_class)):
        ids = [e for e in range(8) for _ in range(per_class)]
        ids += [e for e in AFFECTNET_DROPPED_IDS for _ in range(dropped)]
        ids = [ids[i] for i in rng.permutation(len(ids))]
        rows[split] = []
        for k, expression in enumerate(ids):
            digest = hashlib.sha224(f"{seed}/{split}/{k}".encode()).hexdigest()
            name = f"{int(rng.integers(1, 1200))}/{digest}.jpg"
            w, h = (int(v) for v in rng.integers(size, size + 9, 2))
            x, y = int(rng.integers(0, w // 6 + 1)), int(rng.integers(0, h // 6 + 1))
            bw = int(rng.integers(w // 2, w - x + 1))
            bh = int(rng.integers(h // 2, h - y + 1))
            path = image_dir / name
            path.parent.mkdir(parents=True, exist_ok=True)
            _noise_image(rng, w, h).save(path, format="JPEG", quality=90)
            rows[split].append(affectnet_csv_row(name, (x, y, bw, bh), expression, rng))
    return write_affectnet_lists(root, rows["train"], rows["test"])


def write_affectnet_npy(
    root: Path,
    train_per_class: int = 4,
    test_per_class: int = 2,
    dropped: int = 0,
    size: int = 40,
    seed: int = 0,
    id_type: str = "str",
) -> Path:
    """The npy release: {train_set,val_set}/images/<id>.jpg (square, already cropped) and
    annotations/<id>_{exp,val,aro,lnd}.npy. The expression is a 0-d array of the id as a string
    (`id_type="str"`, as distributed) or an int64 (`"int"`); ids are sparse, unordered integers."""
    rng = np.random.default_rng(seed)
    for set_dir, per_class in (("train_set", train_per_class), ("val_set", test_per_class)):
        labels = [e for e in range(8) for _ in range(per_class)]
        labels += [e for e in AFFECTNET_DROPPED_IDS for _ in range(dropped)]
        ids = rng.choice(20 * len(labels) + 10, size=len(labels), replace=False)
        images, annotations = root / set_dir / "images", root / set_dir / "annotations"
        images.mkdir(parents=True, exist_ok=True)
        annotations.mkdir(parents=True, exist_ok=True)
        for image_id, expression in zip(ids.tolist(), labels, strict=True):
            _noise_image(rng, size, size).save(images / f"{image_id}.jpg", format="JPEG")
            value = np.array(str(expression)) if id_type == "str" else np.array(expression)
            np.save(annotations / f"{image_id}_exp.npy", value)
            np.save(annotations / f"{image_id}_val.npy", np.array(f"{rng.uniform(-1, 1):.6f}"))
            np.save(annotations / f"{image_id}_aro.npy", np.array(f"{rng.uniform(-1, 1):.6f}"))
            np.save(annotations / f"{image_id}_lnd.npy", rng.uniform(0, size, 136))
    return root


def write_folder_tree(
    root: Path,
    classes: Sequence[str] = FER_CLASSES,
    train_per_class: int = 4,
    test_per_class: int = 2,
    val_per_class: int = 0,
    size: int = 40,
    split_dirs: Sequence[str] = ("train", "test", "val"),
    seed: int = 0,
) -> Path:
    """An ImageFolder tree root/<split>/<class>/<class>_<k>.jpg (all size x size, as a cache with
    cache_size=null needs); the val split is written only when `val_per_class` > 0."""
    rng = np.random.default_rng(seed)
    counts = (train_per_class, test_per_class, val_per_class)
    for split_dir, per_class in zip(split_dirs, counts, strict=True):
        for cls in classes if per_class else ():
            folder = root / split_dir / cls
            folder.mkdir(parents=True, exist_ok=True)
            for k in range(per_class):
                _noise_image(rng, size, size).save(folder / f"{cls}_{k:04d}.jpg", format="JPEG")
    return root
