"""insightface's MXNet RecordIO face-identity releases (MS1M-ArcFace, MS1MV3, Glint360K), read
without MXNet.

The layout relied on (and nothing else; anything different is refused, naming file and offset):

- `train.idx`: text lines `<record index>\\t<byte offset into train.rec>`.
- `train.rec`: at each offset a record: uint32 magic 0xced7230a, uint32 `lrecord` (upper 3 bits
  `cflag`, lower 29 bits the payload length), the payload, zero padding to a multiple of 4 bytes.
  Only whole records (cflag 0) are accepted; MXNet's multi-part records (cflag 1-3) are refused.
- payload: the IRHeader `struct.pack('<IfQQ', flag, label, id, id2)` (24 bytes), then `flag`
  float32 labels when flag > 0, then the JPEG (or PNG) bytes. An image's identity is `label` when
  flag is 0, else the first of the float32 labels.
- record 0 of the MS1M releases is a header record (flag > 0, labels `[a, b]`): records 1..a-1 are
  the images and records a..b-1 one per identity (labels `[first, end)` image record range). We take
  the images as records 1..a-1 and skip the identity records (the image headers carry the identity).
  A release without such a header (record 0 an ordinary image, flag 0) is read as all images.
- `property`: `num_classes,height,width`; only informational (logged), the images decide their size.
"""

from __future__ import annotations

import hashlib
import io
import os
import struct
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from scn.data.sources import ImageList
from scn.errors import UserError

MAGIC = 0xCED7230A
HEADER = struct.Struct("<IfQQ")  # IRHeader: flag, label, id, id2
LENGTH_BITS = 29


@dataclass
class Record:
    """One decoded IRHeader and what follows it."""

    flag: int
    label: float
    id: int
    id2: int
    labels: np.ndarray  # the float32 label array when flag > 0, else empty
    data: bytes  # the image bytes

    @property
    def identity(self) -> int:
        return int(self.labels[0]) if self.flag > 0 else int(self.label)


def pack(
    flag: int, label: float | Sequence[float], data: bytes, id: int = 0, id2: int = 0
) -> bytes:
    """A payload as insightface's `mx.recordio.pack`: a scalar label (flag 0) or a label array."""
    if flag == 0:
        return HEADER.pack(0, float(label), id, id2) + data
    arr = np.asarray(label, dtype=np.float32).reshape(-1)
    return HEADER.pack(len(arr), 0.0, id, id2) + arr.tobytes() + data


def write_record(f, payload: bytes) -> int:
    """Append one whole record to the open file `f`; returns its offset (what train.idx stores)."""
    offset = f.tell()
    if len(payload) >= 1 << LENGTH_BITS:
        raise ValueError("payload too large for one record")
    f.write(struct.pack("<II", MAGIC, len(payload)))
    f.write(payload)
    f.write(b"\0" * (-len(payload) % 4))
    return offset


def read_payload(f, offset: int, path: Path) -> bytes:
    """The payload of the record at `offset` of the open file `f` (named `path` in errors)."""
    f.seek(offset)
    head = f.read(8)
    if len(head) < 8:
        raise UserError(f"{path}: offset {offset} is past the end of the file (truncated?)")
    magic, lrecord = struct.unpack("<II", head)
    if magic != MAGIC:
        raise UserError(
            f"{path}: no RecordIO record at offset {offset} (magic {magic:#010x}, expected "
            f"{MAGIC:#010x}); train.idx must list the byte offsets of train.rec's records"
        )
    cflag, length = lrecord >> LENGTH_BITS, lrecord & ((1 << LENGTH_BITS) - 1)
    if cflag != 0:
        raise UserError(
            f"{path}: the record at offset {offset} is a multi-part record (cflag {cflag}); only "
            "whole records (cflag 0, as insightface's face releases write them) are supported"
        )
    payload = f.read(length)
    if len(payload) < length:
        raise UserError(f"{path}: the record at offset {offset} is truncated")
    return payload


def unpack(payload: bytes, path: Path, offset: int) -> Record:
    """Split a payload into its IRHeader, label array and image bytes."""
    if len(payload) < HEADER.size:
        raise UserError(f"{path}: the record at offset {offset} is shorter than its IRHeader")
    flag, label, id_, id2 = HEADER.unpack_from(payload)
    end = HEADER.size + 4 * flag
    if len(payload) < end:
        raise UserError(
            f"{path}: the record at offset {offset} declares {flag} float labels but holds fewer"
        )
    labels = np.frombuffer(payload[HEADER.size : end], dtype=np.float32).copy()
    return Record(flag, label, id_, id2, labels, payload[end:])


def read_index(path: Path) -> dict[int, int]:
    """train.idx: record index -> byte offset."""
    out: dict[int, int] = {}
    with open(path) as f:
        for n, line in enumerate(f, start=1):
            if not line.strip():
                continue
            parts = line.split()
            try:
                key, offset = int(parts[0]), int(parts[1])
            except (IndexError, ValueError):
                raise UserError(
                    f"{path}:{n}: expected '<record index>\\t<byte offset>', got {line.strip()!r}"
                ) from None
            out[key] = offset
    if not out:
        raise UserError(f"{path} lists no records")
    return out


def read_property(path: Path) -> tuple[int, int, int] | None:
    """`property`: num_classes,height,width (None when the file is absent)."""
    if not path.is_file():
        return None
    text = path.read_text().strip()
    try:
        n, h, w = (int(v) for v in text.split(","))
    except ValueError:
        raise UserError(f"{path}: expected 'num_classes,height,width', got {text!r}") from None
    return n, h, w


def scan_recordio(root: Path) -> tuple[Path, np.ndarray, np.ndarray, list[str]]:
    """(train.rec, image record offsets, their identity labels, notes) of a release folder."""
    rec, idx = root / "train.rec", root / "train.idx"
    for p in (rec, idx):
        if not p.is_file():
            raise UserError(
                f"{p} not found; a RecordIO release holds train.rec, train.idx, property"
            )
    index = read_index(idx)
    notes = []
    keys = sorted(index)
    with open(rec, "rb") as f:
        first = unpack(read_payload(f, index[keys[0]], rec), rec, index[keys[0]])
        if keys[0] == 0 and first.flag > 0:  # MS1M header record: images are 1..a-1
            end = int(first.labels[0])
            keys = [k for k in keys if 1 <= k < end]
            notes.append(f"RecordIO header record 0: image records 1..{end - 1}")
        offsets = np.array([index[k] for k in keys], dtype=np.int64)
        labels = np.empty(len(keys), dtype=np.int64)
        for i, off in enumerate(offsets):
            labels[i] = _identity_at(f, int(off), rec)
    prop = read_property(root / "property")
    if prop is not None:
        notes.append(f"RecordIO property: {prop[0]} identities, {prop[1]}x{prop[2]} images")
    return rec, offsets, labels, notes


def _identity_at(f, offset: int, path: Path) -> int:
    """The identity in the record header at `offset`, reading only the header and its labels."""
    f.seek(offset)
    head = f.read(8 + HEADER.size + 4)
    if len(head) < 8 + HEADER.size:
        raise UserError(f"{path}: the record at offset {offset} is truncated")
    magic, lrecord = struct.unpack_from("<II", head)
    if magic != MAGIC or lrecord >> LENGTH_BITS:
        read_payload(f, offset, path)  # raises the full message
    flag, label, _, _ = HEADER.unpack_from(head, 8)
    if flag == 0:
        return int(label)
    return int(np.frombuffer(head[8 + HEADER.size : 8 + HEADER.size + 4], dtype=np.float32)[0])


@dataclass(eq=False)
class RecordImages(ImageList):
    """Images stored as records of one train.rec, addressed by byte offset; each process opens the
    file once (DataLoader workers included)."""

    path: Path
    offsets: np.ndarray
    names: list[str] = field(default_factory=list)  # default: rec:<offset>

    def __post_init__(self) -> None:
        self.offsets = np.asarray(self.offsets, dtype=np.int64)
        if not self.names:
            self.names = [f"rec:{int(o)}" for o in self.offsets]
        self._file = None
        self._pid = -1

    def __getstate__(self) -> dict:
        state = dict(self.__dict__)
        state["_file"], state["_pid"] = None, -1
        return state

    def _handle(self):
        if self._file is None or self._pid != os.getpid():
            self._file, self._pid = open(self.path, "rb"), os.getpid()  # noqa: SIM115
        return self._file

    def load(self, i: int) -> Image.Image:
        offset = int(self.offsets[i])
        record = unpack(read_payload(self._handle(), offset, self.path), self.path, offset)
        try:
            with Image.open(io.BytesIO(record.data)) as img:
                img.load()
                return img.convert("RGB")
        except (OSError, UnidentifiedImageError, ValueError) as e:
            raise UserError(
                f"cannot decode the image of {self.describe(i)}: {e}. Set "
                "dataset.skip_unreadable=true to skip such records"
            ) from e

    def describe(self, i: int) -> str:
        return f"{self.path} at offset {int(self.offsets[i])}"

    def fingerprint(self, h: hashlib._Hash) -> None:
        st = self.path.stat()
        h.update(f"recordio\0{self.path.as_posix()}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
        h.update(self.offsets.tobytes())

    def subset(self, positions: Sequence[int]) -> RecordImages:
        pos = np.asarray(list(positions), dtype=np.int64)
        return RecordImages(self.path, self.offsets[pos], [self.names[i] for i in pos])

    def missing(self) -> list[int]:
        return [] if self.path.is_file() else list(range(len(self)))

    @staticmethod
    def _concat(lists: Sequence[RecordImages]) -> RecordImages:
        if len({lst.path for lst in lists}) != 1:
            raise ValueError("record lists from different files")
        return RecordImages(
            lists[0].path,
            np.concatenate([lst.offsets for lst in lists]),
            [n for lst in lists for n in lst.names],
        )
