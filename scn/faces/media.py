"""Photos and videos in, annotated photos and videos out: reading (EXIF orientation applied, video
frames decoded with PyAV), drawing boxes, landmarks and labels, and writing annotated video."""

from __future__ import annotations

import logging
from collections.abc import Iterator, Sequence
from fractions import Fraction
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont, ImageOps, UnidentifiedImageError

from scn.errors import UserError
from scn.faces.detect import INSTALL_HINT, Face

log = logging.getLogger(__name__)

VIDEO_SUFFIXES = {".mp4", ".m4v", ".mov", ".avi", ".mkv", ".webm", ".mpg", ".mpeg", ".wmv", ".flv"}
BOX_COLOUR = (0, 220, 0)
LANDMARK_COLOUR = (255, 40, 40)


def read_photo(path: Path) -> Image.Image:
    """An RGB image the right way up (phones store the rotation in EXIF); an unreadable file
    raises a UserError that names it."""
    try:
        with Image.open(path) as img:
            img.load()
            img = ImageOps.exif_transpose(img)
            if img.mode == "P":
                img = img.convert("RGBA")
            return img.convert("RGB")
    except (OSError, UnidentifiedImageError, ValueError, SyntaxError,
            Image.DecompressionBombError) as e:  # fmt: skip
        raise UserError(f"cannot read image {path}: {e}") from e


def import_av():
    try:
        import av
    except ImportError as e:
        raise UserError(
            f"reading video needs PyAV (the faces extra): {INSTALL_HINT} ({e})"
        ) from None
    return av


def video_frames(path: Path, stride: int = 1) -> Iterator[tuple[int, float, np.ndarray]]:
    """(frame index, time in s, RGB array) of every `stride`-th frame of the first video stream.
    A file that cannot be opened or decoded raises a UserError that names it; one that breaks
    part way stops with a warning after the frames it gave."""
    av = import_av()
    try:
        container = av.open(str(path))
    except (av.FFmpegError, OSError, ValueError) as e:
        raise UserError(f"cannot decode video {path}: {e}") from e
    with container:
        if not container.streams.video:
            raise UserError(f"cannot decode video {path}: it has no video stream")
        stream = container.streams.video[0]
        index = -1
        try:
            for frame in container.decode(stream):
                index += 1
                if index % stride:
                    continue
                t = float(frame.time) if frame.time is not None else float("nan")
                yield index, t, frame.to_ndarray(format="rgb24")
        except (av.FFmpegError, OSError, ValueError) as e:
            if index < 0:
                raise UserError(f"cannot decode video {path}: {e}") from e
            log.warning("%s: decoding stopped after frame %d: %s", path, index, e)
        if index < 0:
            raise UserError(f"cannot decode video {path}: no frame could be decoded")


def video_rate(path: Path) -> Fraction:
    """Frames per second of the first video stream (25 when the file does not say)."""
    av = import_av()
    with av.open(str(path)) as container:
        rate = container.streams.video[0].average_rate or container.streams.video[0].base_rate
    return Fraction(rate) if rate else Fraction(25)


class VideoWriter:
    """Annotated frames -> an H.264 MP4 (MPEG-4 Part 2 where the PyAV build lacks an H.264 encoder).
    Frames are cropped to even sides, as 4:2:0 video needs."""

    def __init__(self, path: Path, rate: Fraction):
        av = import_av()
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self._container = av.open(str(path), mode="w")
        codec = next((c for c in ("libx264", "h264", "mpeg4") if _has_encoder(av, c)), "mpeg4")
        self._stream = self._container.add_stream(codec, rate=rate)
        self._stream.pix_fmt = "yuv420p"
        self._av = av
        self._size: tuple[int, int] | None = None

    def write(self, rgb: np.ndarray) -> None:
        h, w = rgb.shape[:2]
        h, w = h - h % 2, w - w % 2
        if self._size is None:
            self._size = (w, h)
            self._stream.width, self._stream.height = w, h
        frame = self._av.VideoFrame.from_ndarray(np.ascontiguousarray(rgb[:h, :w]), format="rgb24")
        for packet in self._stream.encode(frame):
            self._container.mux(packet)

    def close(self) -> None:
        if self._size is not None:
            for packet in self._stream.encode():
                self._container.mux(packet)
        self._container.close()


def _has_encoder(av, name: str) -> bool:
    try:
        av.codec.Codec(name, "w")
    except Exception:  # an unknown codec raises a codec-specific error type
        return False
    return True


def draw_faces(
    image: Image.Image | np.ndarray, faces: Sequence[Face], labels: Sequence[str]
) -> Image.Image:
    """A copy of the image with each face's box, landmarks and label ("Happiness 0.93") drawn."""
    img = image.copy() if isinstance(image, Image.Image) else Image.fromarray(np.asarray(image))
    img = img.convert("RGB")
    draw = ImageDraw.Draw(img)
    width = max(2, round(max(img.size) / 400))
    for face, label in zip(faces, labels, strict=True):
        x0, y0, x1, y1 = (float(v) for v in face.box)
        draw.rectangle((x0, y0, x1 - 1, y1 - 1), outline=BOX_COLOUR, width=width)
        r = width + 1
        for x, y in face.landmarks:
            if np.isfinite(x) and np.isfinite(y):
                draw.ellipse((x - r, y - r, x + r, y + r), fill=LANDMARK_COLOUR)
        if label:
            font = _font(max(12, round((y1 - y0) / 7)))
            left, top, right, bottom = draw.textbbox((x0, y0), label, font=font)
            th = bottom - top
            ty = y0 - th - 2 * width if y0 - th - 2 * width >= 0 else y1 + width
            draw.rectangle((x0, ty, x0 + (right - left) + 2 * width, ty + th + 2 * width),
                           fill=BOX_COLOUR)  # fmt: skip
            draw.text((x0 + width, ty + width - top + y0), label, fill=(0, 0, 0), font=font)
    return img


def _font(size: int) -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
    try:
        return ImageFont.load_default(size=size)
    except (TypeError, OSError):  # Pillow < 10.1 or no FreeType: the fixed bitmap font
        return ImageFont.load_default()
