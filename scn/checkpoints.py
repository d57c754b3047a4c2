"""The checkpoint file format, owned here: one dict holding all mutable training state (model,
optimiser, scheduler, labels, epoch, history, RNG, config), written atomically; reading one (older
releases' configs upgraded to today's terms); which file a resume reads; the temp files a killed
write leaves. The trainer, inference, inspect and the tasks all read and write through this."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import torch

from scn.errors import UserError
from scn.io import atomic_open
from scn.methods import upgrade_config

log = logging.getLogger(__name__)

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
    state["config"] = upgrade_config(state["config"])  # older releases' configs in today's terms
    return state


def remove_stray_temp_files(folder: Path | str) -> list[Path]:
    """Remove the temp files a run killed mid-write left beside its checkpoints (the checkpoints
    themselves are whole: a write renames its temp file over them only when complete)."""
    stray = [p for name in ("last.pt", "best.pt") for p in Path(folder).glob(f".{name}.*")]
    for p in stray:
        p.unlink(missing_ok=True)
        log.info("removed %s, left by a checkpoint write that did not finish", p)
    return stray
