"""`python -m scn.bench --faces DIR`: how fast raw photos turn into predictions and datasets.

Measures, on the photos of DIR (or, with `--faces demo`, generated 640 x 480 photos holding one or
two copies of scikit-image's astronaut face):

- detect + align + classify (`scn.predict --detect`'s path): faces/s and photos/s end to end, and
  the time split between detection (dlib HOG + 5 landmarks, CPU), alignment (similarity warp) and
  classification (batched, on --device), with a checkpoint (`--faces-model`) or a randomly
  initialised `--backbone` at 224 px;
- `scn.align`'s throughput with 1 and 2 worker processes (photos/s, worker start-up included).
"""

from __future__ import annotations

import logging
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from scn.errors import UserError

log = logging.getLogger(__name__)

DEMO_PHOTOS = 40


def demo_photos(folder: Path, n: int = DEMO_PHOTOS, seed: int = 0) -> Path:
    """`n` 640 x 480 photos: the astronaut's face (scaled 0.6-1.2x) once or twice on a plain
    background, so that every photo holds a findable face."""
    from PIL import Image

    try:
        from skimage import data
    except ImportError as e:
        raise UserError(
            f'--faces demo needs scikit-image: pip install -e ".[faces]" ({e})'
        ) from None
    face = Image.fromarray(data.astronaut()).crop((120, 20, 320, 240))  # 200 x 220 around the face
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        canvas = Image.new("RGB", (640, 480), tuple(int(v) for v in rng.integers(60, 200, 3)))
        for k in range(1 + i % 2):
            s = rng.uniform(0.6, 1.2)
            f = face.resize((round(200 * s), round(220 * s)))
            x = int(rng.integers(0, 320 - f.width)) + 320 * k
            canvas.paste(f, (x, int(rng.integers(0, 480 - f.height))))
        canvas.save(folder / f"photo_{i:03d}.jpg", quality=92)
    return folder


def _classifier(model_path: str | None, backbone: str, device: torch.device):
    """(classify, transform, class names, input size) of a checkpoint or an untrained timm model."""
    if model_path:
        from scn.predict import classify, load_predictor

        lm = load_predictor(model_path, str(device))
        return (
            (lambda x: classify(lm, x)),
            lm.transform,
            lm.class_names,
            lm.preprocessing.input_size,
        )
    import timm

    from scn.data.transforms import EvalTransform

    net = timm.create_model(backbone, pretrained=False, num_classes=7).to(device).eval()

    @torch.no_grad()
    def run(x: torch.Tensor):
        return torch.softmax(net(x.to(device)).float(), 1).cpu(), None, None

    mean, std = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
    return run, EvalTransform(224, mean, std), [f"c{i}" for i in range(7)], 224


class _Timed:
    """Wraps a callable and adds up the seconds spent in it."""

    def __init__(self, fn):
        self.fn, self.seconds = fn, 0.0

    def __call__(self, *a, **kw):
        t = time.perf_counter()
        try:
            return self.fn(*a, **kw)
        finally:
            self.seconds += time.perf_counter() - t


def faces_bench(
    source: str, device: torch.device, backbone: str = "resnet18", model: str | None = None,
    workdir: str | None = None, batch: int = 64,
) -> dict[str, Any]:  # fmt: skip
    from scn.align import AlignSettings, align_folder
    from scn.faces.pipeline import DetectSettings, FacePredictor, find_media

    with tempfile.TemporaryDirectory(prefix="scn-faces-bench-", dir=workdir) as tmp:
        tmp = Path(tmp)
        photos = demo_photos(tmp / "photos") if source == "demo" else Path(source)
        media = [m for m in find_media(photos) if not m.video]
        if not media:
            raise UserError(f"--faces {photos}: no photos there")
        classify, transform, names, size = _classifier(model, backbone, device)
        timed_classify = _Timed(classify)
        runner = FacePredictor(timed_classify, transform, names, size, DetectSettings(), batch,
                               alpha=False, regions=0, template=None)  # fmt: skip
        runner.detector = detect = _Timed(runner.detector)
        runner.align = align = _Timed(runner.align)
        timed_classify(transform(_blank(size))[None])  # warm-up: allocator and kernel set-up
        timed_classify.seconds = 0.0
        t0 = time.perf_counter()
        runner.run(media, tmp / "predictions.csv")
        total = time.perf_counter() - t0
        faces = runner.faces
        result: dict[str, Any] = {
            "photos": len(media),
            "faces": faces,
            "model": model or f"{backbone} (untrained), {size} px",
            "predict_detect": {
                "faces_per_s": round(faces / total, 2),
                "photos_per_s": round(len(media) / total, 2),
                "detect_s_per_photo": round(detect.seconds / len(media), 4),
                "align_ms_per_face": round(1000 * align.seconds / max(faces, 1), 2),
                "classify_ms_per_face": round(1000 * timed_classify.seconds / max(faces, 1), 2),
                "total_s": round(total, 2),
            },
            "align": {},
        }
        log.info("predict --detect: %.1f faces/s (%d faces in %d photos, %.1fs): detection "
                 "%.3fs/photo, alignment %.2f ms/face, classification %.2f ms/face", faces / total,
                 faces, len(media), total, detect.seconds / len(media),
                 1000 * align.seconds / max(faces, 1),
                 1000 * timed_classify.seconds / max(faces, 1))  # fmt: skip
        for workers in (1, 2):
            t0 = time.perf_counter()
            s = align_folder(photos, tmp / f"aligned_{workers}", AlignSettings(all_faces=True),
                             workers=workers, progress=False)  # fmt: skip
            sec = time.perf_counter() - t0
            result["align"][str(workers)] = {
                "photos_per_s": round(s["images"] / sec, 2),
                "faces_per_s": round(s["faces"] / sec, 2),
                "seconds": round(sec, 2),
            }
            log.info("scn.align, %d worker(s): %.2f photos/s (%.1fs for %d photos)", workers,
                     s["images"] / sec, sec, s["images"])  # fmt: skip
    return result


def _blank(size: int):
    from PIL import Image

    return Image.new("RGB", (size, size))


def faces_table(result: dict[str, Any]) -> str:
    f = result["faces"]
    p = f["predict_detect"]
    lines = [
        f"device: {result['device']} (torch {result['torch']})",
        f"faces: {f['photos']} photos, {f['faces']} faces, classifier {f['model']}",
        f"{'predict --detect':<28}{p['faces_per_s']:>10.1f} faces/s {p['photos_per_s']:>8.1f} photos/s",
        f"{'  detection':<28}{p['detect_s_per_photo'] * 1000:>10.1f} ms/photo",
        f"{'  alignment':<28}{p['align_ms_per_face']:>10.2f} ms/face",
        f"{'  classification':<28}{p['classify_ms_per_face']:>10.2f} ms/face",
    ]
    for workers, a in f["align"].items():
        lines.append(f"{'scn.align, ' + workers + ' worker(s)':<28}{a['photos_per_s']:>10.2f} "
                     f"photos/s {a['faces_per_s']:>8.2f} faces/s")  # fmt: skip
    return "\n".join(lines)
