"""Finding unreadable images before a run trains on them (`dataset.skip_unreadable=true`).

Large web-collected sets (AffectNet) hold a few files that do not decode. Checking means decoding
every image once, so the verdict is kept under `paths.cache_dir/checked/`, keyed like the decoded
cache, and later runs on the same files read it instead of decoding again."""

from __future__ import annotations

import hashlib
import json
import logging
import os
from pathlib import Path

from torch.utils.data import DataLoader, Dataset
from tqdm import tqdm

from scn.data.sources import ImageList
from scn.errors import UserError
from scn.io import atomic_open

log = logging.getLogger(__name__)

PARALLEL_FROM = 2000  # images; below this, worker start-up costs more than it saves


class _Try(Dataset):
    def __init__(self, images: ImageList, positions: list[int]):
        self.images = images
        self.positions = positions

    def __len__(self) -> int:
        return len(self.positions)

    def __getitem__(self, k: int) -> tuple[int, str | None]:
        i = self.positions[k]
        try:
            self.images.load(i)
        except UserError as e:
            return i, str(e.__cause__ or e)  # the decoder's words; the caller names the file
        return i, None


def unreadable_images(
    images: ImageList, cache_dir: Path, exclude: set[int] | None = None
) -> dict[int, str]:
    """Positions of images that cannot be decoded, with the reason (positions in `exclude`, e.g.
    files already known to be missing, are not tried)."""
    exclude = exclude or set()
    positions = [i for i in range(len(images)) if i not in exclude]
    h = hashlib.sha256(b"checked-v1\n")
    for i in positions:
        h.update(f"{i}\n".encode())
    images.subset(positions).fingerprint(h)
    path = Path(cache_dir).expanduser() / "checked" / f"{h.hexdigest()[:24]}.json"
    if path.is_file():
        return {int(k): v for k, v in json.loads(path.read_text()).items()}
    workers = min(8, os.cpu_count() or 1) if len(positions) >= PARALLEL_FROM else 0
    loader = DataLoader(
        _Try(images, positions), batch_size=64, num_workers=workers, collate_fn=list
    )
    bad: dict[int, str] = {}
    log.info("checking that %d images decode (dataset.skip_unreadable)", len(positions))
    for batch in tqdm(loader, desc="checking images", leave=False, disable=len(positions) < 2000):
        bad.update({i: reason for i, reason in batch if reason is not None})
    with atomic_open(path) as f:
        json.dump({str(k): v for k, v in bad.items()}, f)
    return bad
