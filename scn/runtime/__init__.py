"""Choosing the device a run or a tool uses, leaving it clean for the next job, and knowing
whether this start of a run restarts an earlier one."""

from __future__ import annotations

import gc
import os
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


# set by scn.cli when torchrun restarted this worker group (the same on every rank: rank 0's)
_elastic_restart: str | None = None


def set_elastic_restart(reason: str | None) -> None:
    """Record that this process belongs to a worker group torchrun restarted, and which attempt."""
    global _elastic_restart
    _elastic_restart = reason


def restart_reason(auto_resume: bool = False) -> str | None:
    """Why this start continues an earlier start of the same run in the same directory, or None
    for a fresh start. One answer for every supervisor: a torchrun group restart (noted by
    scn.cli), a SLURM requeue (SLURM_RESTART_COUNT > 0), or `trainer.auto_resume` for anything
    else that starts the same command again (systemd, a shell loop)."""
    if _elastic_restart:
        return _elastic_restart
    requeues = int(os.environ.get("SLURM_RESTART_COUNT") or 0)
    if requeues > 0:
        return f"SLURM requeue {requeues} (SLURM_RESTART_COUNT={requeues})"
    return "trainer.auto_resume=true" if auto_resume else None
