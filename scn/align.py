"""`python -m scn.align RAW OUT`: a folder of raw photos -> a dataset of aligned faces that
`dataset=folder dataset.root=OUT` trains on.

RAW may hold split folders with class folders (`train/<class>/`, `test/<class>/`, `val/<class>/`),
class folders only (`<class>/`: split into `train/` and `test/` per class by `--test-fraction`,
seeded: the same images go to test on every run), or photos without any folders (aligned into OUT
as they are, unlabelled, e.g. for scn.predict). Images may sit in subfolders of a class folder. OUT
mirrors RAW's folders; each image becomes `<name>.jpg` (JPEG quality 95), or `<name>_<k>.jpg` per
face with `--all-faces`.

One face per image: the largest. An image is skipped (and listed in OUT/skipped.csv, named in the
log and counted in the summary) when no face is found, when it is unreadable, or, without
`--all-faces`, when it holds several faces: another face at least `SEVERAL_FACES_RATIO` (0.8) times
the side of the largest, so that it is unclear whom the label describes (smaller faces in the
background are ignored). OUT/faces.csv holds every aligned face's box, five landmarks and detector
score, OUT/align.json the settings. A second run skips the images already done (aligned, or skipped
for their faces; unreadable files are tried again) and refuses other settings for the same OUT.
"""

from __future__ import annotations

import csv
import hashlib
import json
import logging
import multiprocessing
import os
import sys
from collections import Counter
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from scn.cli import run_cli, tool_parser
from scn.errors import UserError
from scn.faces.align import DEFAULT_TEMPLATE, TEMPLATES, align_face, get_template
from scn.faces.detect import DEFAULT_MIN_SCORE, DEFAULT_UPSAMPLE
from scn.io import atomic_open

log = logging.getLogger(__name__)

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp", ".gif"}
SPLIT_DIRS = ("train", "test", "val")
SEVERAL_FACES_RATIO = 0.8
JPEG_QUALITY = 95
SAVE_EVERY = 200  # results between rewrites of the CSVs (an interrupted run keeps its progress)
FACE_COLUMNS = ["path", "source", "face", "x0", "y0", "x1", "y1",
                *(f"{n}_{a}" for n in ("left_eye", "right_eye", "nose", "mouth_left",
                                       "mouth_right") for a in ("x", "y")), "score"]  # fmt: skip
SKIP_COLUMNS = ["source", "reason", "faces", "detail"]
NO_FACE, SEVERAL, UNREADABLE = "no face", "several faces", "unreadable"
DONE_REASONS = {NO_FACE, SEVERAL}  # decided by the faces: not retried


@dataclass(frozen=True)
class AlignSettings:
    """What decides the output: a second run into the same OUT must use the same."""

    template: str = DEFAULT_TEMPLATE
    size: int = 100
    all_faces: bool = False
    min_score: float = DEFAULT_MIN_SCORE
    upsample: int = DEFAULT_UPSAMPLE
    test_fraction: float = 0.2
    seed: int = 0


@dataclass
class Task:
    source: str  # relative to RAW (posix)
    out: str  # output path relative to OUT, without the .jpg suffix


# ----------------------------------------------------------------------------- the raw folder
def plan(raw: Path, settings: AlignSettings) -> tuple[str, list[Task]]:
    """The layout of RAW ("splits", "classes" or "flat") and one task per image."""
    if not raw.is_dir():
        raise UserError(f"not a folder: {raw}; pass the folder holding the raw photos")
    entries = sorted(e for e in raw.iterdir() if not e.name.startswith("."))
    dirs = [e.name for e in entries if e.is_dir()]
    top_images = [e for e in entries if e.is_file() and e.suffix.lower() in IMAGE_SUFFIXES]
    if not dirs:
        if not top_images:
            raise UserError(f"no images in {raw} (looked for {', '.join(sorted(IMAGE_SUFFIXES))})")
        return "flat", [Task(p.name, _stem(p.name)) for p in top_images]
    if top_images:
        raise UserError(
            f"{top_images[0]} sits beside the folders of {raw}; with class folders every image "
            "must be inside one: move it into its class folder or delete it"
        )
    splits = [d for d in dirs if d in SPLIT_DIRS]
    if splits:
        others = [d for d in dirs if d not in SPLIT_DIRS]
        if others:
            raise UserError(
                f"{raw} holds split folders ({', '.join(splits)}) and other folders "
                f"({', '.join(others)}); use either {'/'.join(SPLIT_DIRS)} folders holding class "
                "folders, or class folders only"
            )
        tasks = []
        for split in splits:
            for cls, images in _class_images(raw / split, f"{split}/").items():
                tasks += [Task(s, _stem(s)) for s in images]
                if not images:
                    log.warning("%s holds no images", raw / split / cls)
        return "splits", tasks
    tasks = []
    for cls, images in _class_images(raw, "").items():
        if not images:
            log.warning("%s holds no images", raw / cls)
            continue
        test = set(_test_images(images, settings.test_fraction, settings.seed))
        tasks += [Task(s, f"{'test' if s in test else 'train'}/{_stem(s)}") for s in images]
    return "classes", tasks


def _class_images(folder: Path, prefix: str) -> dict[str, list[str]]:
    """Class folder -> its images anywhere below it (paths relative to RAW, sorted)."""
    out: dict[str, list[str]] = {}
    for entry in sorted(folder.iterdir()):
        if entry.name.startswith("."):
            continue
        if not entry.is_dir():
            if entry.suffix.lower() in IMAGE_SUFFIXES:
                raise UserError(
                    f"{entry} is directly in {folder}; every image must sit in a class folder "
                    f"({folder}/<class>/...): move it into one or delete it"
                )
            continue
        images = []
        for dirpath, dirnames, filenames in os.walk(entry, followlinks=True):
            dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
            rel = Path(dirpath).relative_to(entry)
            images += [(Path(entry.name) / rel / f).as_posix() for f in filenames
                       if not f.startswith(".") and Path(f).suffix.lower() in IMAGE_SUFFIXES]  # fmt: skip
        out[entry.name] = sorted(prefix + i for i in images)
    return out


def _test_images(images: list[str], fraction: float, seed: int) -> list[str]:
    """round(fraction * n) of a class's images (at least one when the class has two or more and
    fraction > 0, never all), chosen by a seeded hash of each name: independent of the order
    files are listed in, and the same on every run."""
    n = len(images)
    k = round(fraction * n)
    if fraction > 0 and n >= 2:
        k = max(k, 1)
    k = min(k, n - 1) if n >= 2 else 0
    ranked = sorted(images, key=lambda s: hashlib.sha1(f"{seed}:{s}".encode()).hexdigest())
    return ranked[:k]


def _stem(rel: str) -> str:
    return rel[: -len(Path(rel).suffix)] if Path(rel).suffix else rel


def _dedupe(tasks: list[Task]) -> None:
    """`a.jpg` and `a.png` in one folder would both become `a.jpg`: name such outputs `a_png`."""
    counts = Counter(t.out for t in tasks)
    for t in tasks:
        if counts[t.out] > 1:
            t.out = f"{t.out}_{Path(t.source).suffix.lstrip('.').lower()}"


# ----------------------------------------------------------------------------- workers
_worker: dict[str, Any] = {}


def _init_worker(raw: str, out: str, settings: dict) -> None:
    from scn.faces.detect import FaceDetector

    s = AlignSettings(**settings)
    _worker.update(raw=Path(raw), out=Path(out), settings=s,
                   detector=FaceDetector(s.min_score, s.upsample),
                   template=get_template(s.template))  # fmt: skip


def _align_one(task: Task) -> dict[str, Any]:
    """Detect, decide, align and write one image; returns its record (faces or a skip)."""
    from scn.faces.media import read_photo

    s: AlignSettings = _worker["settings"]
    try:
        image = read_photo(_worker["raw"] / task.source)
    except Exception as e:  # any decoder failure: the image is named and skipped
        return {"skip": [task.source, UNREADABLE, "", str(e)]}
    faces = _worker["detector"](image)
    if not faces:
        return {"skip": [task.source, NO_FACE, "0", ""]}
    if not s.all_faces:
        if len(faces) > 1 and faces[1].side >= SEVERAL_FACES_RATIO * faces[0].side:
            sides = ", ".join(f"{f.side:.0f}" for f in faces)
            return {"skip": [task.source, SEVERAL, str(len(faces)), f"face sides {sides} px"]}
        faces = faces[:1]
    rows = []
    for k, face in enumerate(faces):
        name = f"{task.out}_{k}.jpg" if s.all_faces else f"{task.out}.jpg"
        crop, _ = align_face(image, face.landmarks, _worker["template"], s.size)
        target = _worker["out"] / name
        with atomic_open(target, "wb") as f:
            crop.save(f, format="JPEG", quality=JPEG_QUALITY)
        lm = [("" if not np.isfinite(v) else f"{v:.1f}") for v in face.landmarks.reshape(-1)]
        rows.append([name, task.source, str(k), *(f"{v:.1f}" for v in face.box), *lm,
                     f"{face.score:.3f}"])  # fmt: skip
    return {"faces": rows}


# ----------------------------------------------------------------------------- the run
class Records:
    """faces.csv and skipped.csv: read at start (what is done), rewritten atomically as results
    arrive and at the end."""

    def __init__(self, out: Path):
        self.out = out
        self.faces: dict[str, list[list[str]]] = {}  # source -> its face rows
        self.skipped: dict[str, list[str]] = {}
        for row in _read_csv(out / "faces.csv", FACE_COLUMNS):
            self.faces.setdefault(row[1], []).append(row)
        for row in _read_csv(out / "skipped.csv", SKIP_COLUMNS):
            self.skipped[row[0]] = row

    def done(self, source: str) -> bool:
        rows = self.faces.get(source)
        if rows:
            return all((self.out / r[0]).is_file() for r in rows)
        skip = self.skipped.get(source)
        return skip is not None and skip[1] in DONE_REASONS

    def add(self, source: str, result: dict[str, Any]) -> None:
        self.faces.pop(source, None)
        self.skipped.pop(source, None)
        if "faces" in result:
            self.faces[source] = result["faces"]
        else:
            self.skipped[source] = result["skip"]

    def save(self) -> None:
        with atomic_open(self.out / "faces.csv", "w") as f:
            w = csv.writer(f, lineterminator="\n")
            w.writerow(FACE_COLUMNS)
            w.writerows(sorted(r for rows in self.faces.values() for r in rows))
        with atomic_open(self.out / "skipped.csv", "w") as f:
            w = csv.writer(f, lineterminator="\n")
            w.writerow(SKIP_COLUMNS)
            w.writerows(sorted(self.skipped.values()))


def _read_csv(path: Path, columns: list[str]) -> list[list[str]]:
    if not path.is_file():
        return []
    with path.open(newline="") as f:
        rows = list(csv.reader(f))
    if not rows or rows[0] != columns:
        raise UserError(
            f"{path} is not a file scn.align wrote (expected the columns {','.join(columns)}); "
            "choose another OUT or delete the file"
        )
    return [r for r in rows[1:] if len(r) == len(columns)]


def _check_settings(out: Path, settings: AlignSettings) -> None:
    """One OUT, one set of settings: aligned images of two templates would mix silently."""
    record = out / "align.json"
    if record.is_file():
        try:
            before = json.loads(record.read_text())["settings"]
        except (ValueError, KeyError, TypeError) as e:
            raise UserError(f"{record} is unreadable ({e}); delete it or choose another OUT") from e
        now = asdict(settings)
        diff = [f"{k} {before.get(k)!r} -> {now[k]!r}" for k in now if before.get(k) != now[k]]
        if diff:
            raise UserError(
                f"{out} was aligned with other settings ({'; '.join(diff)}); use the same "
                "settings to continue it, or another OUT"
            )
    template = get_template(settings.template)
    with atomic_open(record, "w") as f:
        json.dump({"template": settings.template, "size": settings.size,
                   "points": template.scaled(settings.size).round(3).tolist(),
                   "settings": asdict(settings)}, f, indent=2)  # fmt: skip
        f.write("\n")


def align_folder(raw: str | Path, out: str | Path, settings: AlignSettings, workers: int = 1,
                 progress: bool = True) -> dict[str, Any]:  # fmt: skip
    """Align every image of RAW into OUT; returns the summary counts."""
    from tqdm import tqdm
    from tqdm.contrib.logging import logging_redirect_tqdm

    raw, out = Path(raw).expanduser(), Path(out).expanduser()
    if settings.size < 16:
        raise UserError(f"--size {settings.size}: aligned faces need at least 16 px")
    if not 0 <= settings.test_fraction < 1:
        raise UserError(f"--test-fraction {settings.test_fraction}: use a value in [0, 1)")
    if out.resolve() == raw.resolve() or out.resolve().is_relative_to(raw.resolve()):
        raise UserError(f"OUT {out} lies inside RAW {raw}; choose a folder outside it")
    layout, tasks = plan(raw, settings)
    _dedupe(tasks)
    from scn.faces.detect import import_dlib, model_file

    import_dlib(), model_file("shape_predictor_5_face_landmarks.dat")  # fail before any work
    out.mkdir(parents=True, exist_ok=True)
    _check_settings(out, settings)
    records = Records(out)
    todo = [t for t in tasks if not records.done(t.source)]
    already = len(tasks) - len(todo)
    log.info("%s: %d images (%s layout), %d already done; aligning onto the %s template at %d px "
             "with %d worker(s)", raw, len(tasks), layout, already, settings.template,
             settings.size, workers)  # fmt: skip
    new: Counter = Counter()
    args = (str(raw), str(out), asdict(settings))
    pool = None
    try:
        if workers > 1 and len(todo) > 1:
            pool = _context().Pool(workers, _init_worker, args)
            results = pool.imap_unordered(_run_task, todo, chunksize=1)
        else:
            _init_worker(*args)
            results = map(_run_task, todo)
        with logging_redirect_tqdm():
            for i, (task, result) in enumerate(
                tqdm(results, total=len(todo), unit="img", disable=not progress or not todo), 1
            ):
                records.add(task.source, result)
                if "skip" in result:
                    _, reason, _, detail = result["skip"]
                    new[reason] += 1
                    log.warning("skipped %s: %s%s", raw / task.source, reason,
                                f" ({detail})" if detail else "")  # fmt: skip
                else:
                    new["images"] += 1
                    new["faces"] += len(result["faces"])
                if i % SAVE_EVERY == 0:
                    records.save()
    finally:
        if pool is not None:
            pool.terminate()
        records.save()
    splits = Counter(r[0].split("/", 1)[0] for rows in records.faces.values() for r in rows)
    summary = {
        "images": len(tasks),
        "aligned": new["images"],
        "faces": new["faces"],
        "already_done": already,
        "skipped": {r: new[r] for r in (NO_FACE, SEVERAL, UNREADABLE)},
        "layout": layout,
        "faces_per_split": dict(splits) if layout != "flat" else {},
    }
    skipped = sum(summary["skipped"].values())
    held = sum(splits.values())
    split_text = ", ".join(f"{k} {v}" for k, v in sorted(splits.items()))
    log.info(
        "aligned %d of %d images (%d faces); skipped %d (%d no face, %d several faces, "
        "%d unreadable; listed in %s); %d already done. %s holds %d faces%s",
        new["images"], len(tasks), new["faces"], skipped, new[NO_FACE], new[SEVERAL],
        new[UNREADABLE], out / "skipped.csv", already, out, held,
        f" ({split_text})" if layout != "flat" else "",
    )  # fmt: skip
    if layout == "flat":
        log.info("RAW had no class folders: %s holds unlabelled faces (dataset=folder needs "
                 "<split>/<class>/ folders)", out)  # fmt: skip
    return summary


def _context() -> multiprocessing.context.BaseContext:
    """fork where there is one: workers start at once and need nothing re-imported (spawn
    would import the caller's main module again in each, e.g. all of torch under scn.bench or
    pytest); they use only numpy, Pillow and dlib, none of the parent's threads."""
    methods = multiprocessing.get_all_start_methods()
    return multiprocessing.get_context("fork" if "fork" in methods else "spawn")


def _run_task(task: Task) -> tuple[Task, dict[str, Any]]:
    return task, _align_one(task)


def main(argv: list[str] | None = None) -> int:
    parser = tool_parser("align", __doc__)
    parser.add_argument("raw", help="folder of raw photos (class folders, split folders, or none)")
    parser.add_argument("out", help="folder to write the aligned dataset into")
    parser.add_argument(
        "--template",
        default=DEFAULT_TEMPLATE,
        choices=sorted(TEMPLATES),
        help="alignment template (default: %(default)s). "
        + "; ".join(f"{t.name}: {t.suits}" for t in TEMPLATES.values()),
    )
    parser.add_argument(
        "--size",
        type=int,
        help="side of the aligned faces (default: the template's own, rafdb 100)",
    )
    parser.add_argument(
        "--all-faces", action="store_true", help="keep every face of an image (<name>_<k>.jpg)"
    )
    parser.add_argument(
        "--test-fraction",
        type=float,
        default=0.2,
        help="share of each class that goes to test/ when RAW has no split folders "
        "(default: %(default)s)",
    )
    parser.add_argument("--seed", type=int, default=0, help="seed of the train/test choice")
    parser.add_argument(
        "--workers",
        type=int,
        default=min(4, os.cpu_count() or 1),
        help="detection processes (default: %(default)s)",
    )
    parser.add_argument(
        "--min-score",
        type=float,
        default=DEFAULT_MIN_SCORE,
        help="detector confidence a face needs (default: %(default)s)",
    )
    parser.add_argument(
        "--upsample",
        type=int,
        default=DEFAULT_UPSAMPLE,
        help="upsamplings before detection: 1 finds faces down to ~40 px (default: %(default)s)",
    )
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    args = parser.parse_args(argv)
    if args.workers < 1:
        parser.error("--workers must be at least 1")
    size = args.size or TEMPLATES[args.template].size
    settings = AlignSettings(args.template, size, args.all_faces, args.min_score, args.upsample,
                             args.test_fraction, args.seed)  # fmt: skip
    return run_cli(align_folder, args.raw, args.out, settings, args.workers, not args.no_progress)


if __name__ == "__main__":
    sys.exit(main())
