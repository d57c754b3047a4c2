"""Decoded-image cache: each dataset split decoded once into a memory-mapped uint8 array.

JPEG decoding dominates the per-sample pipeline's cost, and a sweep decodes the same images in every
job and every epoch. The cache is keyed by everything that decides its pixels (every image's path,
size, modification time and face box, or the pixel table and its rows, and the decode settings), so
sweep jobs share it and a changed dataset is never served stale. It is written to a temp file, fsynced and renamed
under a lock, so two jobs starting together neither corrupt it nor decode it twice.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset
from torchvision.transforms.v2 import functional as F
from tqdm import tqdm

from scn.data.sources import ImageList
from scn.errors import UserError
from scn.io import atomic_open

try:
    import fcntl
except ImportError:  # Windows: no advisory locks; the atomic rename still keeps the cache whole
    fcntl = None

log = logging.getLogger(__name__)

CACHE_VERSION = 2  # bump when the decoding itself changes, so old caches are not reused
PARALLEL_DECODE_FROM = 2000  # images; below this, worker start-up costs more than it saves


def cache_key(split: str, images: ImageList, cache_size: int | None) -> str:
    """sha256 over the decode settings and everything that decides each image's pixels."""
    h = hashlib.sha256()
    settings = {"version": CACHE_VERSION, "split": split, "cache_size": cache_size}
    h.update(json.dumps(settings, sort_keys=True).encode())
    images.fingerprint(h)
    return h.hexdigest()


class _Decode(Dataset):
    """One image -> uint8 HWC array, resized to `size` x `size` when a size is declared."""

    def __init__(self, images: ImageList, size: int | None):
        self.images = images
        self.size = size

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int) -> np.ndarray:
        x = F.pil_to_tensor(self.images.load(i))  # (3, H, W) uint8
        if self.size is not None and tuple(x.shape[-2:]) != (self.size, self.size):
            x = F.resize(x, [self.size, self.size], antialias=True)
        return x.permute(1, 2, 0).numpy()


@contextmanager
def _locked(lock_path: Path) -> Iterator[None]:
    """An exclusive advisory lock: the second job waits, then finds the finished cache."""
    lock_path.parent.mkdir(parents=True, exist_ok=True)
    if fcntl is None:
        yield
        return
    with open(lock_path, "w") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def _open(path: Path, count: int) -> np.ndarray:
    try:
        arr = np.load(path, mmap_mode="r")
    except (OSError, ValueError) as e:
        raise UserError(
            f"decoded-image cache {path} is unreadable ({e}); delete it to rebuild"
        ) from e
    if arr.dtype != np.uint8 or arr.ndim != 4 or arr.shape[0] != count or arr.shape[3] != 3:
        raise UserError(
            f"decoded-image cache {path} holds {arr.shape} {arr.dtype}, expected ({count}, H, W, 3) "
            "uint8; delete it to rebuild"
        )
    return arr


def _build(path: Path, images: ImageList, size: int | None, workers: int, progress: bool) -> None:
    """Decode every image into `path` through an atomic write (a temp file, fsynced, renamed).

    Rows are appended with plain writes after the .npy header rather than through a memory map, so
    the build's resident memory stays at a few batches however large the cache (AffectNet's 287k
    images at 224 px are 43 GB); the kernel writes the pages back as they fill."""
    loader = DataLoader(
        _Decode(images, size),
        batch_size=64,
        num_workers=workers,
        collate_fn=list,  # images may differ in size; the check below names the odd one
    )
    with atomic_open(path, "wb") as f:
        shape = None
        pos = 0
        bar = tqdm(total=len(images), desc="decoding images", leave=False, disable=not progress)
        for batch in loader:
            for img in batch:
                if shape is None:
                    shape = img.shape
                    header = {"descr": "|u1", "fortran_order": False,
                              "shape": (len(images), *shape)}  # fmt: skip
                    np.lib.format.write_array_header_1_0(f, header)
                if img.shape != shape:
                    raise UserError(
                        f"{images.describe(pos)} is {img.shape[1]}x{img.shape[0]} but "
                        f"{images.describe(0)} is {shape[1]}x{shape[0]}; the decoded-image "
                        "cache needs one size: set dataset.cache_size=<side> to resize every "
                        "image once to <side>x<side>, or use dataset.pipeline=files"
                    )
                f.write(np.ascontiguousarray(img, dtype=np.uint8).tobytes())
                pos += 1
            bar.update(len(batch))
        bar.close()


def decoded_images(
    cache_dir: Path,
    split: str,
    images: ImageList,
    cache_size: int | None = None,
    progress: bool = False,
) -> np.ndarray:
    """The split's images as a read-only memory-mapped uint8 array (N, H, W, 3), decoded on first use.

    `cache_size`: None keeps the stored size (all images must share it, as RAF-DB's 100x100 aligned
    images do); an int resizes every image once to `cache_size` x `cache_size`.
    """
    if len(images) == 0:
        raise UserError(f"the {split} split has no images to cache")
    key = cache_key(split, images, cache_size)
    folder = Path(cache_dir).expanduser() / "decoded"
    path = folder / f"{split}-{key[:24]}.npy"
    with _locked(folder / f"{path.name}.lock"):
        if not path.exists():
            workers = min(8, os.cpu_count() or 1) if len(images) >= PARALLEL_DECODE_FROM else 0
            log.info("decoding %d %s images once into %s", len(images), split, path)
            _build(path, images, cache_size, workers, progress)
        arr = _open(path, len(images))
    log.info("%s images: %s uint8 from %s", split, "x".join(map(str, arr.shape)), path)
    return arr


class ImageStore:
    """Decoded images held on the training device when they fit (a GPU cache, no host round trip),
    else memory-mapped on the host and copied per batch, through pinned memory for a GPU.
    `gather` returns (B, 3, H, W) uint8 in channels_last strides (the layout the uint8 resize kernels
    are fastest in), always a copy that augmentation may change in place."""

    DEVICE_SHARE = 0.25  # hold the cache on the GPU when it takes at most this share of free memory

    def __init__(self, images: np.ndarray, device: torch.device, on_device: bool | None = None):
        """`on_device`: None decides by size on CUDA and memory-maps on CPU; True loads the images
        into device memory (RAM on CPU), False keeps them memory-mapped."""
        self.host = images
        self.device = device
        if on_device is None:
            free = torch.cuda.mem_get_info(device)[0] if device.type == "cuda" else 0
            on_device = images.nbytes <= self.DEVICE_SHARE * free
        self.images = self._upload(images) if on_device else None
        self.pin = device.type == "cuda" and self.images is None

    def _upload(self, images: np.ndarray, chunk: int = 4096) -> torch.Tensor:
        out = torch.empty(images.shape, dtype=torch.uint8, device=self.device)
        for a in range(0, len(images), chunk):
            out[a : a + chunk].copy_(torch.from_numpy(np.array(images[a : a + chunk])))
        return out

    def gather(self, rows: torch.Tensor) -> torch.Tensor:
        if self.images is not None:
            batch = self.images.index_select(0, rows.to(self.device, non_blocking=True))
        else:
            batch = torch.from_numpy(self.host[rows.numpy()])
            if self.pin:
                batch = batch.pin_memory().to(self.device, non_blocking=True)
        return batch.permute(0, 3, 1, 2)
