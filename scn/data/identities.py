"""Face-identity data for `task=pretrain`: a folder per identity or insightface's RecordIO release,
identities with too few images dropped, and a verification set of image pairs held out (whole
identities never trained on, or an LFW-style `pairs.txt`).

The bundle keeps the DataBundle interface the trainer and pipelines use: `train` holds the training
identities' images labelled 0..C-1 (`class_names` are those identities), `test` the images the
verification pairs use, `pairs` (P, 2) positions into `test`, `same` (P,) and `folds` (P,) the
cross-validation fold of each pair.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from omegaconf import DictConfig

from scn.data.datasets import DataBundle, Split, _drop_missing
from scn.data.readers.folder import IMAGE_SUFFIXES, _images_below
from scn.data.recordio import RecordImages, scan_recordio
from scn.data.sources import DatasetFiles, FileImages, ImageList, LabeledImages
from scn.errors import UserError

log = logging.getLogger(__name__)

MAX_PAIRS = 6000  # positive pairs kept at most, and as many negative pairs
FOLDS = 10


@dataclass
class Identities:
    """Every image of a release with its identity (index into `names`)."""

    images: ImageList
    identity: np.ndarray
    names: list[str]
    notes: list[str] = field(default_factory=list)


@dataclass
class IdentityData(DataBundle):
    """A DataBundle plus the verification pairs over `test`."""

    pairs: np.ndarray = field(default_factory=lambda: np.zeros((0, 2), dtype=np.int64))
    same: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=bool))
    folds: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))


def scan_folders(root: Path) -> Identities:
    """root/<identity>/**/<image>: one identity per folder, images anywhere below it."""
    names, paths, identity, empty = [], [], [], 0
    for d in sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")):
        files, _ = _images_below(root, d)
        if not files:
            empty += 1
            continue
        identity += [len(names)] * len(files)
        paths += files
        names.append(d.name)
    if not names:
        raise UserError(
            f"{root} holds no identity folders with images (files ending in "
            f"{' '.join(IMAGE_SUFFIXES)}); the layout is <dataset.root>/<identity>/<image>, or "
            "insightface's train.rec + train.idx + property"
        )
    notes = [f"identity folders: {len(paths)} images of {len(names)} identities"]
    if empty:
        notes.append(f"{empty} folders without images ignored")
    images = FileImages([root / p for p in paths], paths)
    return Identities(images, np.asarray(identity, dtype=np.int64), names, notes)


def scan_release(root: Path) -> Identities:
    """insightface's train.rec/train.idx/property; identities named id<label>."""
    rec, offsets, labels, notes = scan_recordio(root)
    values, identity = np.unique(labels, return_inverse=True)
    names = [f"id{int(v)}" for v in values]
    notes.append(f"RecordIO {rec}: {len(offsets)} images of {len(names)} identities")
    return Identities(RecordImages(rec, offsets), identity.astype(np.int64), names, notes)


def scan_identities(root: Path) -> Identities:
    return scan_release(root) if (root / "train.rec").exists() else scan_folders(root)


def keep_identities(found: Identities, min_images: int) -> Identities:
    """Drop identities with fewer than `min_images` images; indices renumbered in name order."""
    counts = np.bincount(found.identity, minlength=len(found.names))
    kept = np.flatnonzero(counts >= min_images)
    if len(kept) < len(found.names):
        found.notes.append(
            f"{len(found.names) - len(kept)} identities with fewer than {min_images} images "
            "dropped (dataset.min_images_per_identity)"
        )
    remap = np.full(len(found.names), -1, dtype=np.int64)
    remap[kept] = np.arange(len(kept))
    rows = np.flatnonzero(remap[found.identity] >= 0)
    return Identities(
        found.images.subset(rows), remap[found.identity[rows]], [found.names[i] for i in kept],
        found.notes,
    )  # fmt: skip


def held_out_count(setting: float | int, n: int) -> int:
    """dataset.verify_identities: a share (float < 1, at least 2) or a count (int)."""
    if isinstance(setting, float) and 0 < setting < 1:
        count = max(2, round(setting * n))
    else:
        count = int(setting)
    if count < 2 or count > n - 1:
        raise UserError(
            f"dataset.verify_identities={setting} holds out {count} of {n} identities; verification "
            "needs at least 2 held out and at least 1 left to train on"
        )
    return count


def make_pairs(
    identity: np.ndarray, seed: int, cap: int = MAX_PAIRS
) -> tuple[np.ndarray, np.ndarray]:
    """Every positive pair of images of one identity (a seeded sample of `cap` when there are
    more) and as many seeded negative pairs of different identities (fewer only when fewer exist);
    (pairs (P, 2), same (P,))."""
    rng = np.random.default_rng(seed)
    pos = []
    for ident in np.unique(identity):
        rows = np.flatnonzero(identity == ident)
        a, b = np.triu_indices(len(rows), k=1)
        pos.append(np.stack([rows[a], rows[b]], 1))
    positive = np.concatenate(pos) if pos else np.zeros((0, 2), dtype=np.int64)
    if len(positive) > cap:
        positive = positive[np.sort(rng.choice(len(positive), cap, replace=False))]
    negative = []
    seen = set()
    n = len(identity)
    all_positive = sum(math.comb(int(c), 2) for c in np.unique(identity, return_counts=True)[1])
    wanted = min(len(positive), math.comb(n, 2) - all_positive)  # as many as there are, at most
    while len(negative) < wanted:
        a, b = (int(v) for v in rng.integers(0, n, 2))
        key = (min(a, b), max(a, b))
        if identity[a] != identity[b] and key not in seen:
            seen.add(key)
            negative.append(key)
    pairs = np.concatenate([positive, np.asarray(negative, dtype=np.int64).reshape(-1, 2)])
    same = np.r_[np.ones(len(positive), bool), np.zeros(len(negative), bool)]
    return pairs.astype(np.int64), same


def assign_folds(count: int, seed: int, folds: int = FOLDS) -> np.ndarray:
    """Seeded fold of each pair: 10 folds, fewer below 20 pairs (at least 2 pairs per fold)."""
    k = max(2, min(folds, count // 2))
    return np.random.default_rng(seed).permutation(np.arange(count) % k)


def read_pairs_file(
    path: Path, image_root: Path
) -> tuple[list[str], list[tuple[int, int, bool]], int]:
    """An LFW `pairs.txt`: an optional `<folds> <pairs per fold>` first line, then `name i j`
    (same person) or `name1 i name2 j` lines; images at image_root/name/name_<i:04d>.jpg.
    Returns (image names relative to image_root, (a, b, same) over them, folds)."""
    if not path.is_file():
        raise UserError(f"dataset.verify_pairs file not found: {path}")
    names: dict[str, int] = {}
    rows: list[tuple[int, int, bool]] = []
    folds = FOLDS
    lines = path.read_text().splitlines()
    for n, line in enumerate(lines, start=1):
        parts = line.split()
        if not parts:
            continue
        if n == 1 and len(parts) == 2 and all(p.isdigit() for p in parts):
            folds = int(parts[0])
            continue
        try:
            if len(parts) == 3:
                items = [(parts[0], int(parts[1])), (parts[0], int(parts[2]))]
            elif len(parts) == 4:
                items = [(parts[0], int(parts[1])), (parts[2], int(parts[3]))]
            else:
                raise ValueError
        except ValueError:
            raise UserError(
                f"{path}:{n}: expected 'name i j' or 'name1 i name2 j' (LFW pairs.txt), got {line!r}"
            ) from None
        ids = []
        for person, k in items:
            rel = f"{person}/{person}_{k:04d}.jpg"
            if not (image_root / rel).is_file():
                raise UserError(
                    f"{path}:{n}: image {image_root / rel} not found (dataset.verify_root)"
                )
            ids.append(names.setdefault(rel, len(names)))
        rows.append((ids[0], ids[1], len(parts) == 3))
    if len(rows) < 4:
        raise UserError(f"{path} lists {len(rows)} pairs; verification needs at least 4")
    return list(names), rows, folds


def split_identities(
    dcfg: DictConfig, found: Identities
) -> tuple[DatasetFiles, np.ndarray, np.ndarray, np.ndarray]:
    """Train on most identities; verify on pairs of the held-out ones (or of dataset.verify_pairs).
    DatasetFiles' class names are the training identities, then the held-out ones."""
    seed = int(dcfg.verify_seed)
    if dcfg.verify_pairs:
        image_root = Path(str(dcfg.verify_root or dcfg.root)).expanduser()
        names, rows, k = read_pairs_file(Path(str(dcfg.verify_pairs)).expanduser(), image_root)
        test = FileImages([image_root / n for n in names], names)
        pairs = np.asarray([r[:2] for r in rows], dtype=np.int64)
        same = np.asarray([r[2] for r in rows], dtype=bool)
        k = max(2, min(k, len(rows) // 2))  # fewer folds below 20 pairs
        folds = np.arange(len(rows)) * k // len(rows)  # consecutive blocks, as LFW's sets
        train = LabeledImages(found.images, found.identity)
        files = DatasetFiles(
            found.names, {"train": train, "test": LabeledImages(test, np.zeros(len(names)))}
        )
        notes = [f"verification: {len(rows)} pairs ({int(same.sum())} same) of {dcfg.verify_pairs}"]
        files.notes = found.notes + notes
        return files, pairs, same, folds
    n = len(found.names)
    held = np.sort(
        np.random.default_rng(seed).permutation(n)[: held_out_count(dcfg.verify_identities, n)]
    )
    is_held = np.zeros(n, bool)
    is_held[held] = True
    order = np.r_[np.flatnonzero(~is_held), held]  # train identities first, then the held-out
    new_index = np.empty(n, dtype=np.int64)
    new_index[order] = np.arange(n)
    train_rows = np.flatnonzero(~is_held[found.identity])
    test_rows = np.flatnonzero(is_held[found.identity])
    pairs, same = make_pairs(found.identity[test_rows], seed)
    used = np.unique(pairs)  # only the images a pair uses are embedded
    remap = np.full(len(test_rows), -1, dtype=np.int64)
    remap[used] = np.arange(len(used))
    test_rows = test_rows[used]
    pairs = remap[pairs]
    folds = assign_folds(len(pairs), seed)
    splits = {
        "train": LabeledImages(
            found.images.subset(train_rows), new_index[found.identity[train_rows]]
        ),
        "test": LabeledImages(found.images.subset(test_rows), new_index[found.identity[test_rows]]),
    }
    notes = found.notes + [
        f"verification: {len(held)} held-out identities, {len(pairs)} pairs ({int(same.sum())} "
        f"same), {len(np.unique(folds))} folds"
    ]
    return DatasetFiles([found.names[i] for i in order], splits, notes), pairs, same, folds


def read_identity_files(dcfg: DictConfig, root: Path):
    found = keep_identities(scan_identities(root), int(dcfg.min_images_per_identity))
    if len(found.names) < 3:
        raise UserError(
            f"{root}: {len(found.names)} identities with at least {dcfg.min_images_per_identity} "
            "images; pretraining needs at least 3 (2 held out for verification, 1 to train on)"
        )
    return split_identities(dcfg, found)


def resolve_identity_root(dcfg: DictConfig, cache_dir: Path) -> Path:
    """dataset.root, or the demo identities generated into the cache when root is null."""
    if dcfg.root is None and dcfg.synthetic:
        from scn.data.synthetic import ensure_identities

        return ensure_identities(cache_dir, **dcfg.synthetic)
    from scn.data.datasets import resolve_root

    return resolve_root(dcfg, cache_dir)


def load_identities(dcfg: DictConfig, cache_dir: Path) -> IdentityData:
    """The pretraining bundle: training identities and the verification pairs."""
    if dcfg.format != "identities":
        raise UserError(
            f"task=pretrain needs identity data (dataset=identities), not dataset.format="
            f"{dcfg.format}"
        )
    if dcfg.noise.rate > 0 or dcfg.label_file or dcfg.val_fraction > 0:
        raise UserError(
            "dataset.noise.rate, dataset.label_file and dataset.val_fraction are for expression "
            "training; pretraining selects on the verification pairs: leave them at 0 / null"
        )
    root = resolve_identity_root(dcfg, cache_dir)
    files, pairs, same, folds = read_identity_files(dcfg, root)
    notes = list(files.notes)
    splits = {}
    for name, labeled in files.splits.items():
        kept, note = _drop_missing(dcfg, name, labeled, cache_dir)
        if note:
            notes.append(note)
        if len(kept.images) != len(labeled.images):
            # keep the pairs whose images are both still there
            pos = {n: i for i, n in enumerate(kept.images.names)} if name == "test" else None
            if pos is not None:
                old = labeled.images.names
                ok = np.array([old[a] in pos and old[b] in pos for a, b in pairs], dtype=bool)
                pairs = np.array([[pos[old[a]], pos[old[b]]] for a, b in pairs[ok]], dtype=np.int64)
                same, folds = same[ok], folds[ok]
        splits[name] = Split(kept.images, kept.labels.copy(), kept.labels, name)
    train = splits["train"]
    num_train = int(train.labels.max()) + 1
    return IdentityData(
        root,
        files.class_names[:num_train],
        train,
        splits["test"],
        None,
        notes,
        {name: sp.images for name, sp in splits.items()},
        pairs.reshape(-1, 2),
        same,
        folds,
    )
