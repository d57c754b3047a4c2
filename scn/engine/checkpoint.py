"""Checkpoints: one dict holding all mutable training state, written atomically."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from scn.errors import UserError
from scn.io import atomic_open

CHECKPOINT_VERSION = 1


def save_checkpoint(path: Path | str, state: dict[str, Any]) -> None:
    """Atomic: a crash never leaves a truncated checkpoint, readers see the old or the new file."""
    with atomic_open(path, "wb") as f:
        torch.save({"version": CHECKPOINT_VERSION, **state}, f)


REQUIRED_KEYS = ("model", "optimizer", "scheduler", "labels", "epoch", "config", "history")


def resume_file(path: Path | str) -> Path:
    """The checkpoint a resume reads: `path` itself, or the last.pt of a run directory."""
    path = Path(path).expanduser()
    if not path.is_dir():
        return path
    if not (path / "last.pt").is_file():
        raise UserError(
            f"ckpt_path={path} is a directory without a last.pt: the run saved none (it was "
            "stopped in its first epoch, or ran with trainer.checkpoints=none); pass a checkpoint "
            "file, or start a new run"
        )
    return path / "last.pt"


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
