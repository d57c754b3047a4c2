"""Built-in demo data: cartoon faces in RAF-DB's 7 expressions, written in RAF-DB layout.

Each face is a neutral face pushed towards its class prototype by a random intensity, then jittered,
so weak expressions of different classes look alike (as in real data) and a classifier cannot reach
100%. Size, position, rotation, skin tone, lighting and pixel noise vary independently of the class.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import tempfile
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from scn.data.labels import RAFDB_IMAGE_DIR, RAFDB_LABEL_FILE

log = logging.getLogger(__name__)

GENERATOR_VERSION = 1  # bump whenever the drawing changes, so caches are regenerated

# expression parameters: mouth curve (+ smile), mouth opening, mouth width, brow angle (+ inner ends up),
# brow height, eye opening. Rows follow RAF-DB labels 1..7.
PARAM_NAMES = ("curve", "open", "width", "brow_angle", "brow_height", "eye_open")
NEUTRAL = np.array([0.0, 0.0, 0.9, 0.0, 0.0, 1.0])
PROTOTYPES = np.array(
    [
        [0.0, 0.9, 0.65, 0.1, 1.0, 1.5],  # Surprise: round open mouth, high brows, wide eyes
        [-0.4, 0.45, 1.2, 0.9, 0.6, 1.4],  # Fear: stretched mouth, raised inner brows, wide eyes
        [-0.7, 0.15, 0.8, -0.4, -0.6, 0.45],  # Disgust: down-turned mouth, low brows, narrowed eyes
        [1.0, 0.4, 1.2, 0.0, 0.1, 0.7],  # Happiness: wide smile, eyes narrowed by the cheeks
        [-0.9, 0.0, 0.85, 0.9, -0.2, 0.65],  # Sadness: frown, raised inner brows, drooping eyes
        [-0.25, 0.05, 0.8, -1.0, -0.8, 0.95],  # Anger: tight mouth, brows lowered into a V
        NEUTRAL,  # Neutral
    ]
)
JITTER = np.array([0.15, 0.07, 0.08, 0.18, 0.18, 0.12])  # per-sample std of each parameter
INTENSITY = (0.3, 1.0)  # how far from neutral towards the prototype a face goes
SKIN_TONES = np.array(
    [[255, 224, 196], [241, 194, 160], [224, 172, 125], [198, 134, 86], [141, 85, 54], [95, 60, 40]]
)


def expression_params(rng: np.random.Generator, label: int) -> np.ndarray:
    """Parameters of one face of class `label` (0-based)."""
    intensity = rng.uniform(*INTENSITY)
    params = NEUTRAL + intensity * (PROTOTYPES[label] - NEUTRAL) + rng.normal(0.0, JITTER)
    params[1] = max(params[1], 0.0)
    params[5] = max(params[5], 0.15)
    return params


# the face geometry every demo face shares; an identity (identity_traits) replaces these values
DEFAULT_GEOMETRY = {"eye_dx": 0.42, "eye_y": 0.18, "eye_w": 0.27, "brow_gap": 0.24,
                    "nose_len": 0.2, "mouth_y": 0.5}  # fmt: skip


def identity_traits(rng: np.random.Generator) -> dict:
    """One identity's fixed face: width, height ratio, skin tone, feature colour and geometry."""
    return {
        "rx": rng.uniform(0.34, 0.42),
        "ry_ratio": rng.uniform(1.05, 1.35),
        "skin": np.clip(SKIN_TONES[rng.integers(len(SKIN_TONES))] + rng.normal(0, 12, 3), 0, 255),
        "dark": rng.uniform(10, 90, 3),
        "eye_dx": rng.uniform(0.34, 0.5),
        "eye_y": rng.uniform(0.1, 0.26),
        "eye_w": rng.uniform(0.2, 0.33),
        "brow_gap": rng.uniform(0.18, 0.32),
        "nose_len": rng.uniform(0.12, 0.3),
        "mouth_y": rng.uniform(0.42, 0.6),
    }


def render_face(
    rng: np.random.Generator, label: int, size: int = 100, identity: dict | None = None
) -> Image.Image:
    """Draw one face; all randomness comes from `rng`. `identity` (identity_traits) fixes the face's
    proportions, skin tone and feature colour; without it they are drawn from `rng` (the demo set)."""
    s = size * 2  # supersample, then downscale for smooth edges
    bg = tuple(int(v) for v in rng.uniform(30, 225) + rng.normal(0, 15, 3))
    img = Image.new("RGB", (s, s), bg)
    d = ImageDraw.Draw(img)
    cx, cy = s / 2 + rng.normal(0, 0.03 * s, 2)
    rx = s * rng.uniform(0.34, 0.42)
    ry = rx * rng.uniform(1.1, 1.3)
    skin = SKIN_TONES[rng.integers(len(SKIN_TONES))] + rng.normal(0, 8, 3)
    skin_rgb = tuple(int(v) for v in np.clip(skin, 0, 255))
    g = DEFAULT_GEOMETRY
    if identity is not None:  # the draws above still happen, so the rng stream keeps its order
        g = identity
        rx = s * identity["rx"]
        ry = rx * identity["ry_ratio"]
        skin_rgb = tuple(int(v) for v in identity["skin"])
    d.ellipse([cx - rx, cy - ry, cx + rx, cy + ry], fill=skin_rgb)
    curve, opening, width, brow_angle, brow_height, eye_open = expression_params(rng, label)
    dark = tuple(int(v) for v in rng.uniform(10, 60, 3))
    if identity is not None:
        dark = tuple(int(v) for v in identity["dark"])

    eye_y = cy - ry * g["eye_y"]
    eye_w = rx * g["eye_w"]
    eye_h = eye_w * 0.55 * eye_open
    brow_base = eye_y - ry * (g["brow_gap"] + 0.13 * brow_height)
    for side in (-1, 1):
        ex = cx + side * rx * g["eye_dx"]
        d.ellipse([ex - eye_w, eye_y - eye_h, ex + eye_w, eye_y + eye_h], fill=(245, 245, 245))
        pr = min(eye_h, eye_w * 0.45)
        d.ellipse([ex - pr, eye_y - pr, ex + pr, eye_y + pr], fill=dark)
        inner = (cx + side * rx * 0.12, brow_base - ry * 0.14 * brow_angle)
        outer = (cx + side * rx * 0.65, brow_base + ry * 0.14 * brow_angle)
        d.line([inner, outer], fill=dark, width=max(2, int(s * 0.055)))
    d.line(
        [
            (cx, cy - ry * 0.05),
            (cx - rx * 0.06, cy + ry * g["nose_len"]),
            (cx + rx * 0.04, cy + ry * g["nose_len"]),
        ],
        fill=tuple(int(v * 0.8) for v in skin_rgb),
        width=max(1, int(s * 0.012)),
    )

    mouth_y = cy + ry * g["mouth_y"]
    half_w = rx * 0.45 * max(width, 0.3)
    u = np.linspace(-1, 1, 21)
    amp = ry * 0.2 * curve
    mid = mouth_y + amp * (1 - u**2) - amp * 0.5  # smile: centre down, corners up
    xs = cx + u * half_w
    bulge = np.sqrt(1 - u**2)
    if opening > 0.08:
        upper = mid - ry * 0.05 * opening * bulge
        lower = mid + ry * 0.32 * opening * bulge
        poly = list(zip(xs, upper, strict=True)) + list(zip(xs[::-1], lower[::-1], strict=True))
        d.polygon(poly, fill=(90, 20, 30), outline=(150, 50, 60))
    else:
        d.line(list(zip(xs, mid, strict=True)), fill=(110, 25, 35), width=max(2, int(s * 0.045)))

    angle = float(np.clip(rng.normal(0, 6), -15, 15))
    img = img.resize((size, size), Image.LANCZOS)  # rotating after the downscale is 4x cheaper
    centre = (float(cx) * size / s, float(cy) * size / s)
    img = img.rotate(angle, resample=Image.BICUBIC, center=centre, fillcolor=bg)

    arr = np.asarray(img, dtype=np.float32)
    direction = rng.normal(0, 1, 2)
    direction /= np.linalg.norm(direction) + 1e-8
    yy, xx = np.mgrid[0:size, 0:size] / size - 0.5
    light = 1.0 + rng.uniform(0, 0.4) * (xx * direction[0] + yy * direction[1])
    arr = arr * light[..., None] * rng.uniform(0.8, 1.15) + rng.normal(
        0, rng.uniform(2, 6), arr.shape
    )
    return Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8))


def settings_key(**settings: int) -> str:
    blob = json.dumps({"version": GENERATOR_VERSION, **settings}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:12]


def write_synthetic(
    root: Path, train_per_class: int, test_per_class: int, image_size: int, seed: int
) -> None:
    """Write a RAF-DB-layout folder at `root`; a pure function of the arguments."""
    img_dir = root / RAFDB_IMAGE_DIR
    img_dir.mkdir(parents=True)
    (root / RAFDB_LABEL_FILE).parent.mkdir(parents=True)
    lines = []
    for split_id, (split, per_class) in enumerate(
        (("train", train_per_class), ("test", test_per_class))
    ):
        labels = np.repeat(np.arange(7), per_class)
        labels = np.random.default_rng([seed, split_id]).permutation(labels)
        for i, label in enumerate(labels, start=1):
            name = f"{split}_{i:05d}"
            rng = np.random.default_rng([seed, split_id, i])  # per image: order does not matter
            render_face(rng, int(label), image_size).save(
                img_dir / f"{name}_aligned.jpg", quality=92
            )
            lines.append(f"{name}.jpg {label + 1}")
    (root / RAFDB_LABEL_FILE).write_text("\n".join(lines) + "\n")


def ensure_synthetic(
    cache_dir: Path | str, train_per_class: int, test_per_class: int, image_size: int, seed: int
) -> Path:
    """Return the generated folder, writing it first if absent. Written in a temp folder and renamed,
    so jobs of a sweep starting together never see a half-written set."""
    settings = dict(
        train_per_class=train_per_class,
        test_per_class=test_per_class,
        image_size=image_size,
        seed=seed,
    )
    base = Path(cache_dir).expanduser() / "synthetic"
    root = base / settings_key(**settings)
    if (root / RAFDB_LABEL_FILE).is_file():
        return root
    base.mkdir(parents=True, exist_ok=True)
    n = 7 * (train_per_class + test_per_class)
    log.info("generating %d synthetic faces into %s", n, root)
    _write_once(root, RAFDB_LABEL_FILE, write_synthetic, settings)
    return root


def _write_once(root: Path, marker: str, write, settings: dict) -> None:
    """`write(folder, **settings)` into a temp folder beside `root`, then rename it into place, so
    no reader sees a half-written set; `marker` (a file under root) tells that a concurrent writer
    finished first, which is fine."""
    tmp = Path(tempfile.mkdtemp(prefix=f".{root.name}-", dir=root.parent))
    try:
        write(tmp / "data", **settings)
        (tmp / "data" / "settings.json").write_text(
            json.dumps({"generator_version": GENERATOR_VERSION, **settings}, indent=1)
        )
        try:
            os.rename(tmp / "data", root)
        except OSError:
            if not (root / marker).is_file():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


IDENTITY_STREAM = 2  # rng streams [seed, 0] / [seed, 1] draw the demo's train / test faces


def write_identities(root: Path, identities: int, images_per_identity: int, image_size: int,
                     seed: int) -> None:  # fmt: skip
    """root/<identity>/<image>.jpg: each identity a fixed face (identity_traits) shown with random
    expressions, poses and lighting, from rng streams disjoint from the demo's faces."""
    for ident in range(identities):
        traits = identity_traits(np.random.default_rng([seed, IDENTITY_STREAM, ident]))
        folder = root / f"id{ident:05d}"
        folder.mkdir(parents=True)
        for k in range(images_per_identity):
            rng = np.random.default_rng([seed, IDENTITY_STREAM, ident, k + 1])
            label = int(rng.integers(7))
            render_face(rng, label, image_size, traits).save(folder / f"{k:04d}.jpg", quality=92)


def ensure_identities(cache_dir: Path | str, identities: int, images_per_identity: int,
                      image_size: int, seed: int) -> Path:  # fmt: skip
    """The generated identity folders under cache_dir/synthetic_identities, written once (in a
    temp folder renamed into place, like ensure_synthetic)."""
    settings = dict(identities=identities, images_per_identity=images_per_identity,
                    image_size=image_size, seed=seed)  # fmt: skip
    base = Path(cache_dir).expanduser() / "synthetic_identities"
    root = base / settings_key(**settings)
    done = root / "settings.json"
    if done.is_file():
        return root
    base.mkdir(parents=True, exist_ok=True)
    log.info("generating %d synthetic faces of %d identities into %s",
             identities * images_per_identity, identities, root)  # fmt: skip
    _write_once(root, done.name, write_identities, settings)
    return root
