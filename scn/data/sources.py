"""Where a split's images come from, behind one interface: image files (optionally cropped to a face
box when decoded) or pixel rows of a table (FER2013's CSV). Dataset readers describe their splits with
these lists; the decoded-image cache, both pipelines, predict/features and the reports read images
only through `load(i)` and name them only by `names[i]`."""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from scn.errors import UserError


def load_rgb(path: Path) -> Image.Image:
    """Any mode (grey, palette, RGBA, CMYK) -> RGB; an unreadable file names itself."""
    try:
        with Image.open(path) as img:
            img.load()
            if img.mode == "P":
                img = img.convert("RGBA")
            return img.convert("RGB")
    except (OSError, UnidentifiedImageError, ValueError) as e:
        raise UserError(
            f"cannot read image {path}: {e}. Replace the file, remove its row from the labels, or "
            "set dataset.skip_unreadable=true to skip such images"
        ) from e


class ImageList:
    """The images of one split, in order. Subclasses say where pixels come from."""

    names: list[
        str
    ]  # how the dataset names each image: relabels.csv, label CSVs and reports use it

    def __len__(self) -> int:
        return len(self.names)

    def load(self, i: int) -> Image.Image:
        """Image `i` as an RGB PIL image (cropped / converted as the dataset prescribes)."""
        raise NotImplementedError

    def describe(self, i: int) -> str:
        """Where image `i` lives, for messages (a file path, or a table's file and row)."""
        raise NotImplementedError

    def fingerprint(self, h: hashlib._Hash) -> None:
        """Feed everything that decides the pixels into `h` (the decoded cache's key)."""
        raise NotImplementedError

    def subset(self, positions: Sequence[int]) -> ImageList:
        raise NotImplementedError

    def missing(self) -> list[int]:
        """Positions whose source is absent (checked cheaply, without decoding)."""
        return []

    @staticmethod
    def concat(lists: Sequence[ImageList]) -> ImageList:
        """One list of several of the same kind (e.g. FERPlus Train + Valid)."""
        if not lists:
            raise ValueError("nothing to concatenate")
        return type(lists[0])._concat(lists)


@dataclass(eq=False)
class FileImages(ImageList):
    """Image files; `boxes` (N, 4) int (x, y, width, height) crops each to its face when decoded."""

    paths: list[Path]
    names: list[str] = field(default_factory=list)  # default: the file names
    boxes: np.ndarray | None = None

    def __post_init__(self) -> None:
        if not self.names:
            self.names = [p.name for p in self.paths]
        if len(self.names) != len(self.paths):
            raise ValueError("one name per path")
        if self.boxes is not None:
            self.boxes = np.asarray(self.boxes, dtype=np.int64).reshape(len(self.paths), 4)

    def load(self, i: int) -> Image.Image:
        img = load_rgb(self.paths[i])
        if self.boxes is None:
            return img
        x, y, w, h = (int(v) for v in self.boxes[i])
        if w <= 0 or h <= 0:
            raise UserError(f"{self.paths[i]}: face box {x},{y},{w},{h} has no area")
        # a box reaching past the border is clipped to the image, as the release's crops are
        left, top = max(x, 0), max(y, 0)
        right, bottom = min(x + w, img.width), min(y + h, img.height)
        if right <= left or bottom <= top:
            raise UserError(
                f"{self.paths[i]}: face box {x},{y},{w},{h} lies outside the "
                f"{img.width}x{img.height} image"
            )
        return img.crop((left, top, right, bottom))

    def describe(self, i: int) -> str:
        return str(self.paths[i])

    def fingerprint(self, h: hashlib._Hash) -> None:
        h.update(b"files\n")
        for k, p in enumerate(self.paths):
            st = p.stat()
            box = "" if self.boxes is None else ",".join(map(str, self.boxes[k].tolist()))
            h.update(f"{p.as_posix()}\0{st.st_size}\0{st.st_mtime_ns}\0{box}\n".encode())

    def subset(self, positions: Sequence[int]) -> FileImages:
        pos = list(positions)
        boxes = None if self.boxes is None else self.boxes[pos]
        return FileImages([self.paths[i] for i in pos], [self.names[i] for i in pos], boxes)

    def missing(self) -> list[int]:
        return [i for i, p in enumerate(self.paths) if not p.is_file()]

    @staticmethod
    def _concat(lists: Sequence[FileImages]) -> FileImages:
        paths = [p for lst in lists for p in lst.paths]
        names = [n for lst in lists for n in lst.names]
        if all(lst.boxes is None for lst in lists):
            boxes = None
        else:
            boxes = np.concatenate([_boxes_or_full(lst) for lst in lists])
        return FileImages(paths, names, boxes)


def _boxes_or_full(lst: FileImages) -> np.ndarray:
    if lst.boxes is not None:
        return lst.boxes
    raise ValueError("cannot mix cropped and uncropped file lists")


@dataclass(eq=False)
class PixelImages(ImageList):
    """Images held as pixel rows of a table: `pixels` (N, H, W) grey or (N, H, W, 3) RGB uint8.
    `source` is the table they were read from and `rows` their 1-based line numbers in it."""

    pixels: np.ndarray
    names: list[str]
    source: Path
    rows: np.ndarray

    def __post_init__(self) -> None:
        self.rows = np.asarray(self.rows, dtype=np.int64)
        if not (len(self.pixels) == len(self.names) == len(self.rows)):
            raise ValueError("one name and one row number per image")

    def load(self, i: int) -> Image.Image:
        return Image.fromarray(np.ascontiguousarray(self.pixels[i])).convert("RGB")

    def describe(self, i: int) -> str:
        return f"{self.source}:{int(self.rows[i])}"

    def fingerprint(self, h: hashlib._Hash) -> None:
        st = self.source.stat()
        h.update(f"pixels\0{self.source.as_posix()}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
        h.update(self.rows.tobytes())
        h.update(np.ascontiguousarray(self.pixels).tobytes())

    def subset(self, positions: Sequence[int]) -> PixelImages:
        pos = np.asarray(list(positions), dtype=np.int64)
        return PixelImages(
            self.pixels[pos], [self.names[i] for i in pos], self.source, self.rows[pos]
        )

    @staticmethod
    def _concat(lists: Sequence[PixelImages]) -> PixelImages:
        sources = {lst.source for lst in lists}
        if len(sources) != 1:
            raise ValueError("pixel lists from different tables")
        return PixelImages(
            np.concatenate([lst.pixels for lst in lists]),
            [n for lst in lists for n in lst.names],
            lists[0].source,
            np.concatenate([lst.rows for lst in lists]),
        )


@dataclass
class LabeledImages:
    """A dataset split as its reader found it: images and their 0-based clean labels."""

    images: ImageList
    labels: np.ndarray

    def __post_init__(self) -> None:
        self.labels = np.asarray(self.labels, dtype=np.int64)
        if len(self.labels) != len(self.images):
            raise ValueError("one label per image")


@dataclass
class DatasetFiles:
    """What a reader returns: the class names and the dataset's splits.

    `splits` holds "train" and "test" (the split the field reports), and optionally "val" when the
    dataset ships its own validation split that is not trained on. `notes` say what the dataset's
    own rules dropped, one line each (they are logged)."""

    class_names: list[str]
    splits: dict[str, LabeledImages]
    notes: list[str] = field(default_factory=list)
