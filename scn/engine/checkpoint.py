"""Checkpoints: one dict holding all mutable training state, written atomically."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any

import torch

from scn.errors import UserError

CHECKPOINT_VERSION = 1


def save_checkpoint(path: Path | str, state: dict[str, Any]) -> None:
    """Write to a temp file in the same folder and rename it over `path`: a crash never leaves a
    truncated checkpoint, and readers see either the old or the new file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save({"version": CHECKPOINT_VERSION, **state}, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


REQUIRED_KEYS = ("model", "optimizer", "scheduler", "labels", "epoch", "config", "history")


def load_checkpoint(path: Path | str) -> dict[str, Any]:
    """Load one of this project's checkpoints (tensors and plain data only: weights_only=True)."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise UserError(f"checkpoint not found: {path} (ckpt_path); pass a last.pt or best.pt file")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # truncated, foreign pickle, not a torch file
        raise UserError(f"cannot load checkpoint {path}: {e}") from e
    missing = [k for k in REQUIRED_KEYS if not isinstance(state, dict) or k not in state]
    if missing:
        raise UserError(
            f"{path} is not a training checkpoint of this project (missing {missing}); resume needs "
            "the last.pt a run wrote"
        )
    return state
