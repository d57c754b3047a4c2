"""Align a face onto a 5-point template by a similarity transform (rotation, uniform scale,
translation), estimated by least squares (Umeyama) and applied with bilinear sampling.

Points are in pixel-index coordinates (pixel (i, j) has its centre at x = i, y = j, as OpenCV's
warpAffine and insightface's templates use them), always in this order:

    0 left eye centre, 1 right eye centre, 2 nose, 3 left mouth corner, 4 right mouth corner

"left" and "right" as seen in the image (the left eye is the subject's right eye). The templates
hold the nose TIP (the 5-point convention of MTCNN, RetinaFace and ArcFace) and, derived from it, the
nose BASE, which is what dlib's 5-point model marks (see `scn.faces.detect`): a landmark set whose
mouth points are unknown (NaN) is fitted on its eyes and nose base against the template's eyes and
nose base. A full set (mouth points present) is fitted on all five, nose to nose base as well.

Templates (`TEMPLATES`), each given for its own side and scaled to any output side:

- `rafdb` (100 px): how RAF-DB's "aligned" 100 x 100 faces look. RAF-DB aligned its faces by a 5-point
  similarity transform onto a 100 px template but does not publish the template; these points put
  ArcFace's face proportions (below) at RAF-DB's framing: the eyes 34 px apart on the line y = 38,
  the face centred, the mouth near y = 77, so brows to chin fill the crop.
  Points (x, y): (32.5, 38.0), (66.5, 38.0), (49.5, 57.4), (35.4, 77.3), (63.6, 77.3).
- `arcface` (112 px): the standard ArcFace / insightface template, tighter (eyes 35 px apart at
  y = 51.6 in 112 px): (38.2946, 51.6963), (73.5318, 51.5014), (56.0252, 71.7366),
  (41.5493, 92.3655), (70.7299, 92.2041).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from PIL import Image

from scn.errors import UserError

LANDMARK_NAMES = ("left_eye", "right_eye", "nose", "mouth_left", "mouth_right")
# nose base below the nose tip, in eye distances along the face's vertical axis: dlib's 68-point
# model on scikit-image's astronaut portrait puts the tip 7-8 px above the base at an eye
# distance of 43 px. The fit is dominated by the eyes; an error of 0.05 here moves the crop by
# about a pixel at 100 px.
NOSE_BASE_BELOW_TIP = 0.17
# when the face is shrunk more than this, average pixel blocks first (bilinear sampling alone
# would skip pixels and alias)
MIN_DIRECT_SCALE = 0.5


@dataclass(frozen=True)
class Template:
    """Five reference points (see the module docstring for the order) for a `size` x `size` crop."""

    name: str
    size: int
    points: tuple[tuple[float, float], ...]
    suits: str  # which data it matches, for docs and --help

    def scaled(self, size: int) -> np.ndarray:
        """(5, 2) points for a `size` px crop (pixel centres scale as (p + 0.5) * f - 0.5)."""
        f = size / self.size
        return (np.asarray(self.points, dtype=np.float64) + 0.5) * f - 0.5

    def fit_points(self, size: int) -> np.ndarray:
        """(5, 2) points as detectors report them here: the nose row holds the nose base."""
        p = self.scaled(size)
        eyes = p[1] - p[0]
        down = np.array([-eyes[1], eyes[0]]) / np.linalg.norm(eyes)  # y grows downwards
        p[2] = p[2] + NOSE_BASE_BELOW_TIP * np.linalg.norm(eyes) * down
        return p


def _symmetric(size: int, eye_y: float, eye_dist: float) -> tuple[tuple[float, float], ...]:
    """ArcFace's face proportions, mirrored about the crop's centre line, at a given framing."""
    arc = np.asarray(ARCFACE_112, dtype=np.float64)
    d = float(np.linalg.norm(arc[1] - arc[0]))
    eye_mid_y = (arc[0, 1] + arc[1, 1]) / 2
    nose_dy = (arc[2, 1] - eye_mid_y) / d
    mouth_dy = ((arc[3, 1] + arc[4, 1]) / 2 - eye_mid_y) / d
    mouth_half = (arc[4, 0] - arc[3, 0]) / 2 / d
    cx, s = (size - 1) / 2, eye_dist
    pts = [
        (cx - s / 2, eye_y),
        (cx + s / 2, eye_y),
        (cx, eye_y + nose_dy * s),
        (cx - mouth_half * s, eye_y + mouth_dy * s),
        (cx + mouth_half * s, eye_y + mouth_dy * s),
    ]
    return tuple((round(float(x), 1), round(float(y), 1)) for x, y in pts)


ARCFACE_112 = (
    (38.2946, 51.6963),
    (73.5318, 51.5014),
    (56.0252, 71.7366),
    (41.5493, 92.3655),
    (70.7299, 92.2041),
)

TEMPLATES: dict[str, Template] = {
    "rafdb": Template(
        "rafdb",
        100,
        _symmetric(100, eye_y=38.0, eye_dist=34.0),
        "RAF-DB's aligned faces and models trained on them; datasets made with scn.align --template "
        "rafdb; face-box crops (AffectNet, FER2013, FERPlus) are framed closest to this one",
    ),
    "arcface": Template(
        "arcface",
        112,
        ARCFACE_112,
        "face-recognition data aligned the insightface way (MS1M, Glint360K, CASIA-WebFace as "
        "112 px crops) and backbones pretrained on it; datasets made with --template arcface",
    ),
}
DEFAULT_TEMPLATE = "rafdb"


def get_template(name: str) -> Template:
    try:
        return TEMPLATES[name]
    except KeyError:
        raise UserError(
            f"unknown alignment template {name!r}; choose one of {', '.join(TEMPLATES)}"
        ) from None


def similarity_transform(src: np.ndarray, dst: np.ndarray) -> np.ndarray:
    """The 2x3 matrix M of the rotation + uniform scale + translation that maps `src` (N, 2) onto
    `dst` (N, 2) with the least squared error (Umeyama 1991, reflections excluded)."""
    src = np.asarray(src, dtype=np.float64)
    dst = np.asarray(dst, dtype=np.float64)
    if src.shape != dst.shape or src.ndim != 2 or src.shape[1] != 2 or len(src) < 2:
        raise ValueError(f"need matching (N >= 2, 2) point sets, got {src.shape} and {dst.shape}")
    mu_s, mu_d = src.mean(0), dst.mean(0)
    s, d = src - mu_s, dst - mu_d
    var_s = (s**2).sum() / len(src)
    if var_s <= 0:
        raise ValueError("the source points coincide")
    cov = d.T @ s / len(src)
    u, sig, vt = np.linalg.svd(cov)
    flip = np.eye(2)
    if np.linalg.det(u) * np.linalg.det(vt) < 0:
        flip[1, 1] = -1
    rot = u @ flip @ vt
    scale = float(np.trace(np.diag(sig) @ flip) / var_s)
    t = mu_d - scale * rot @ mu_s
    return np.hstack([scale * rot, t[:, None]])


def apply_transform(m: np.ndarray, points: np.ndarray) -> np.ndarray:
    """Map (N, 2) points by a 2x3 affine matrix."""
    p = np.asarray(points, dtype=np.float64)
    return p @ m[:, :2].T + m[:, 2]


def face_transform(landmarks: np.ndarray, template: Template, size: int) -> np.ndarray:
    """The similarity transform taking a face's landmarks (NaN rows unknown, at least both eyes)
    onto `template` at `size` px."""
    lm = np.asarray(landmarks, dtype=np.float64).reshape(5, 2)
    known = np.isfinite(lm).all(1)
    if not known[:2].all():
        raise ValueError("alignment needs both eye centres")
    return similarity_transform(lm[known], template.fit_points(size)[known])


def warp_affine(image: Image.Image | np.ndarray, m: np.ndarray, size: int) -> np.ndarray:
    """Output pixel (x, y) of the `size` x `size` crop samples the image at M^-1 (x, y) bilinearly
    (pixel-index coordinates, as OpenCV's warpAffine); outside the image is black. Shrinking by
    more than 2x first averages pixel blocks so that no detail aliases."""
    img = image if isinstance(image, Image.Image) else Image.fromarray(np.asarray(image))
    m = np.asarray(m, dtype=np.float64)
    inv, box = _sampled_box(m, size)
    scale = math.sqrt(abs(np.linalg.det(m[:, :2])))
    r = int(MIN_DIRECT_SCALE / scale) if scale < MIN_DIRECT_SCALE else 1
    if r > 1:
        box = (box[0] - r, box[1] - r, box[2] + r, box[3] + r)
        img = img.crop(box).reduce(r)
        # a point q of the reduced crop is r q + (r - 1) / 2 + the crop's corner in the photo
        a = m[:, :2]
        m = np.hstack([a * r, (m[:, 2] + a @ (np.full(2, (r - 1) / 2) + box[:2]))[:, None]])
        inv, box = _sampled_box(m, size)
    # only the part of the photo the crop samples (PIL fills what lies outside with black)
    src = np.asarray(img.crop(box).convert("RGB"), dtype=np.float32)
    left, top = box[:2]
    ys, xs = np.mgrid[0:size, 0:size].astype(np.float64)
    sx = inv[0, 0] * xs + inv[0, 1] * ys + inv[0, 2] - left
    sy = inv[1, 0] * xs + inv[1, 1] * ys + inv[1, 2] - top
    x0 = np.clip(np.floor(sx).astype(np.int64), 0, src.shape[1] - 2)
    y0 = np.clip(np.floor(sy).astype(np.int64), 0, src.shape[0] - 2)
    fx = (sx - x0)[..., None].astype(np.float32)
    fy = (sy - y0)[..., None].astype(np.float32)
    out = (
        src[y0, x0] * (1 - fx) * (1 - fy)
        + src[y0, x0 + 1] * fx * (1 - fy)
        + src[y0 + 1, x0] * (1 - fx) * fy
        + src[y0 + 1, x0 + 1] * fx * fy
    )
    return np.clip(np.rint(out), 0, 255).astype(np.uint8)


def _sampled_box(m: np.ndarray, size: int) -> tuple[np.ndarray, tuple[int, int, int, int]]:
    """M^-1 (2x3) and the box of source pixels the crop's bilinear samples touch, plus a margin."""
    inv = np.linalg.inv(np.vstack([m, [0.0, 0.0, 1.0]]))[:2]
    corners = np.array([[0, 0], [size - 1, 0], [0, size - 1], [size - 1, size - 1]], np.float64)
    reach = corners @ inv[:, :2].T + inv[:, 2]
    left, top = (int(v) - 1 for v in np.floor(reach.min(0)))
    right, bottom = (int(v) + 2 for v in np.ceil(reach.max(0)))
    return inv, (left, top, right, bottom)


def align_face(
    image: Image.Image | np.ndarray, landmarks: np.ndarray, template: Template, size: int
) -> tuple[Image.Image, np.ndarray]:
    """The aligned `size` px face crop and the transform that made it (image -> crop)."""
    m = face_transform(landmarks, template, size)
    return Image.fromarray(warp_affine(image, m, size)), m
