"""One reader per dataset format, behind one interface: `read(dcfg, root) -> DatasetFiles`.

A reader maps the files a user downloaded onto the project's splits ("train", "test", optionally the
dataset's own "val"), 0-based clean labels and class names, applying the dataset's own rules (what it
drops is counted in `DatasetFiles.notes`). It never applies noise, label files or hold-out splits:
`scn.data.datasets.load_dataset` does that the same way for every dataset. Bad input raises a
UserError naming the file and the row or line.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from pathlib import Path

from omegaconf import DictConfig

from scn.data.sources import DatasetFiles
from scn.errors import UserError

Reader = Callable[[DictConfig, Path], DatasetFiles]


FORMATS = (
    "rafdb",
    "affectnet",
    "ferplus",
    "fer2013",
    "folder",
    "identities",
)  # module names in this package


def get_reader(fmt: str) -> Reader:
    """The `read` function of `dataset.format`'s module, imported on demand."""
    if fmt not in FORMATS:
        raise UserError(f"dataset.format={fmt!r}; available: {', '.join(FORMATS)}")
    return importlib.import_module(f"{__name__}.{fmt}").read
