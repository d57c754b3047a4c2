"""Choosing the device a run or a tool uses, and leaving it clean for the next job."""

from __future__ import annotations

import gc
import sys

import torch

from scn.errors import UserError


def resolve_device(name: str) -> torch.device:
    """`auto` picks CUDA when present; asking for CUDA without it is a clear error, not a fallback."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UserError(
            f"device {name!r} (trainer.device or --device) needs CUDA, which is not available; use cpu"
        )
    return device


def release_job_resources() -> None:
    """Hydra's basic launcher runs a multirun's jobs in one process: drop compiled graphs and cached
    GPU memory (and peak statistics) so the next job starts as a fresh process would."""
    gc.collect()
    if "torch._dynamo" in sys.modules:  # only when something was compiled (importing it costs ~2 s)
        torch.compiler.reset()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
