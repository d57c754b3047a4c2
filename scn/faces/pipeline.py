"""Expressions in the wild: detect every face of photos and video frames, align each onto the
template the model's training data used, classify the aligned crops in batches, write one CSV row
per face (and, with an annotation folder, the photos and videos with boxes and labels drawn).
This is `python -m scn.predict MODEL INPUT --detect`."""

from __future__ import annotations

import csv
import functools
import json
import logging
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from omegaconf import OmegaConf
from PIL import Image

from scn.errors import UserError
from scn.faces.align import DEFAULT_TEMPLATE, TEMPLATES, align_face, get_template
from scn.faces.detect import DEFAULT_MIN_SCORE, DEFAULT_UPSAMPLE, Face, FaceDetector
from scn.faces.media import (
    VIDEO_SUFFIXES,
    VideoWriter,
    draw_faces,
    read_photo,
    video_frames,
    video_rate,
)
from scn.io import atomic_open

log = logging.getLogger(__name__)

PHOTO_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp", ".gif"}
BOX_COLUMNS = ["x0", "y0", "x1", "y1"]
LANDMARK_COLUMNS = [f"{n}_{a}" for n in ("left_eye", "right_eye", "nose", "mouth_left",
                                         "mouth_right") for a in ("x", "y")]  # fmt: skip
ANNOTATED_SUFFIXES = {".jpg", ".jpeg", ".png"}
FLUSH_FRAMES = 16  # images held for annotation before a batch is classified anyway

# (probabilities (N, C), alpha (N,) or None, region weights (N, K+1) or None) of a batch
Classifier = Callable[[torch.Tensor], tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]]


@dataclass
class DetectSettings:
    template: str | None = None  # None: the one recorded with the model, else rafdb
    align_size: int | None = None  # None: the model's input size
    min_score: float = DEFAULT_MIN_SCORE
    upsample: int = DEFAULT_UPSAMPLE
    frame_stride: int = 1
    annotate: str | None = None  # folder for annotated copies


@dataclass
class Media:
    path: Path
    name: str  # as written in the CSV: relative to the input folder
    video: bool


def find_media(source: str | Path) -> list[Media]:
    """Photos and videos of a file or a folder (recursively), named relative to the folder."""
    src = Path(source).expanduser()
    known = PHOTO_SUFFIXES | VIDEO_SUFFIXES
    if src.is_dir():
        paths = sorted(p for p in src.rglob("*") if p.is_file() and p.suffix.lower() in known
                       and not p.name.startswith("."))  # fmt: skip
        if not paths:
            raise UserError(f"no photos or videos in {src} (looked for {', '.join(sorted(known))})")
        base = src
    elif src.is_file():
        if src.suffix.lower() not in known:
            raise UserError(
                f"{src}: --detect takes a photo, a video or a folder of them "
                f"({', '.join(sorted(known))})"
            )
        paths, base = [src], src.parent
    else:
        raise UserError(f"not found: {src}; pass a photo, a video or a folder")
    return [Media(p, p.relative_to(base).as_posix(), p.suffix.lower() in VIDEO_SUFFIXES)
            for p in paths]  # fmt: skip


def recorded_template(model: object) -> str | None:
    """The alignment template the model's training data was made with, when known: an exported
    model's metadata, or `align.json` (written by scn.align) at the checkpoint's dataset root."""
    meta = getattr(model, "metadata", None)
    if isinstance(meta, dict) and meta.get("template") in TEMPLATES:
        return meta["template"]
    cfg = getattr(model, "config", None)
    try:
        root = OmegaConf.select(cfg, "dataset.root") if cfg is not None else None
    except Exception:  # an interpolation the checkpoint's config cannot resolve here
        return None
    if root:
        record = Path(str(root)).expanduser() / "align.json"
        try:
            name = json.loads(record.read_text()).get("template")
        except (OSError, ValueError, AttributeError):
            return None
        return name if name in TEMPLATES else None
    return None


@functools.lru_cache(maxsize=2)
def _detector(min_score: float, upsample: int) -> FaceDetector:
    """One detector per settings and process: loading the landmark model takes most of a second,
    which repeated predict calls from Python (notebooks, tests) would pay each time."""
    return FaceDetector(min_score, upsample)


@dataclass
class _Pending:
    """One photo or frame waiting for its faces to be classified."""

    rows: list[list[str]]  # one per face (or one "no face" row)
    faces: list[Face]
    crops: list[torch.Tensor]
    image: Image.Image | np.ndarray | None = None  # kept for annotation
    sink: Path | VideoWriter | None = None
    labels: list[str] = field(default_factory=list)


def _fmt(v: float, digits: int = 1) -> str:
    return "" if not math.isfinite(v) else f"{v:.{digits}f}"


class FacePredictor:
    """Detect, align, classify and record; `run` writes the CSV and returns its data rows."""

    def __init__(self, classify: Classifier, transform: Callable, class_names: list[str],
                 input_size: int, settings: DetectSettings, batch_size: int,
                 alpha: bool, regions: int, template: str | None) -> None:  # fmt: skip
        self.classify, self.transform, self.class_names = classify, transform, class_names
        self.settings, self.batch_size = settings, batch_size
        self.alpha, self.regions = alpha, regions
        self.template = get_template(settings.template or template or DEFAULT_TEMPLATE)
        self.size = settings.align_size or input_size
        self.detector = _detector(settings.min_score, settings.upsample)
        self.align = align_face
        self.pending: list[_Pending] = []
        self.rows: list[list[str]] = []
        self.faces = self.empty = self.images = 0

    @property
    def header(self) -> list[str]:
        return ["path", "frame", "time", "face", *BOX_COLUMNS, *LANDMARK_COLUMNS, "score",
                "prediction", *(f"p_{n}" for n in self.class_names),
                *(["alpha"] if self.alpha else []), *(f"mu_{i}" for i in range(self.regions)),
                "note"]  # fmt: skip

    def run(self, media: list[Media], out: Path) -> int:
        skipped: list[tuple[str, str]] = []
        annotate = Path(self.settings.annotate) if self.settings.annotate else None
        log.info("detecting faces in %d file(s); aligning onto the %s template at %d px",
                 len(media), self.template.name, self.size)  # fmt: skip
        for m in media:
            try:
                if m.video:
                    self._video(m, annotate)
                else:
                    self._photo(m, annotate)
            except UserError as e:
                log.warning("skipping %s", e)
                skipped.append((str(m.path), str(e)))
        self._flush()
        from scn.inference import finish_report

        finish_report(len(media), skipped)
        with atomic_open(out, "w") as f:
            w = csv.writer(f)
            w.writerow(self.header)
            w.writerows(self.rows)
        log.info("%d faces in %d photos/frames (%d without a face) written to %s; %d file(s) "
                 "skipped", self.faces, self.images, self.empty, out, len(skipped))  # fmt: skip
        return len(self.rows)

    def _photo(self, m: Media, annotate: Path | None) -> None:
        img = read_photo(m.path)
        sink = None
        if annotate is not None:
            sink = annotate / m.name
            if sink.suffix.lower() not in ANNOTATED_SUFFIXES:
                sink = sink.with_name(sink.name + ".png")
        self._add(m.name, "", "", img, sink)

    def _video(self, m: Media, annotate: Path | None) -> None:
        stride = self.settings.frame_stride
        writer = None
        try:
            for index, t, frame in video_frames(m.path, stride):
                if annotate is not None and writer is None:
                    rate = video_rate(m.path) / stride
                    writer = VideoWriter((annotate / m.name).with_suffix(".mp4"), rate)
                self._add(m.name, str(index), _fmt(t, 3), frame, writer)
        finally:
            if writer is not None:
                self._flush()  # every frame of this video written before the file closes
                writer.close()

    def _add(self, name: str, frame: str, time: str, image, sink) -> None:
        self.images += 1
        faces = self.detector(image)
        p = _Pending([], faces, [], image if sink is not None else None, sink)
        if not faces:
            self.empty += 1
            p.rows.append([name, frame, time, *[""] * (1 + 4 + 10 + 1 + 1 + len(self.class_names)),
                           *([""] if self.alpha else []), *[""] * self.regions, "no face"])  # fmt: skip
        for k, face in enumerate(faces):
            crop, _ = self.align(image, face.landmarks, self.template, self.size)
            p.crops.append(self.transform(crop))
            p.rows.append(
                [
                    name,
                    frame,
                    time,
                    str(k),
                    *(_fmt(v) for v in face.box),
                    *(_fmt(v) for v in face.landmarks.reshape(-1)),
                    f"{face.score:.3f}",
                ]
            )
        self.pending.append(p)
        held = sum(len(q.crops) for q in self.pending)
        if held >= self.batch_size or len(self.pending) >= FLUSH_FRAMES:
            self._flush()

    def _flush(self) -> None:
        crops = [c for p in self.pending for c in p.crops]
        k = 0
        for start in range(0, len(crops), self.batch_size):
            probs, alpha, mu = self.classify(torch.stack(crops[start : start + self.batch_size]))
            for j in range(len(probs)):
                self._fill(k, probs[j], None if alpha is None else alpha[j],
                           None if mu is None else mu[j])  # fmt: skip
                k += 1
        for p in self.pending:
            self.rows += p.rows
            self.faces += len(p.crops)
            if p.sink is not None:
                drawn = draw_faces(p.image, p.faces, p.labels)
                if isinstance(p.sink, Path):
                    p.sink.parent.mkdir(parents=True, exist_ok=True)
                    drawn.save(p.sink)
                else:
                    p.sink.write(np.asarray(drawn))
        self.pending = []

    def _fill(self, k: int, probs: torch.Tensor, alpha, mu) -> None:
        """Complete the k-th face row of the pending images with its prediction."""
        for p in self.pending:
            if k < len(p.crops):
                row = p.rows[k]
                best = int(probs.argmax())
                row += [self.class_names[best], *(f"{v:.6f}" for v in probs.tolist())]
                if self.alpha:
                    row.append(f"{float(alpha):.6f}" if alpha is not None else "")
                row += [f"{v:.6f}" for v in mu.tolist()] if mu is not None else []
                row.append("")
                p.labels.append(f"{self.class_names[best]} {float(probs[best]):.2f}")
                return
            k -= len(p.crops)
