"""Multirun bookkeeping: a failed job is recorded where its outputs go and the sweep goes on;
`python run.py -m` then lists the failed jobs and exits non-zero, whichever launcher ran them."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig

from scn.io import atomic_open

log = logging.getLogger(__name__)

ERROR_FILE = "error.txt"  # in a failed job's directory: the message, or a bug's traceback
SWEEP_LOG = "failed_jobs.log"  # in the sweep directory: a line per failed job
_sweeps: list[tuple[Path, float]] = []  # (sweep dir, start time) of the multiruns of this process


@dataclass
class Job:
    num: int
    dir: Path
    sweep_dir: Path
    overrides: list[str]


def current_job() -> Job | None:
    """This job of a multirun, or None for a single run."""
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    if not HydraConfig.initialized() or HydraConfig.get().mode != RunMode.MULTIRUN:
        return None
    hc = HydraConfig.get()
    return Job(int(hc.job.num), Path(hc.runtime.output_dir), Path(hc.sweep.dir),
               list(hc.overrides.task))  # fmt: skip


class FailedJob:
    """What a failed job returns to the sweeper: not a score. The basic sweeper ignores returns;
    Optuna's cannot read it as a float and records the trial as failed (a NaN would crash it)."""

    def __init__(self, num: int, message: str):
        self.num, self.message = num, message

    def __float__(self) -> float:
        raise ValueError(str(self))

    def __str__(self) -> str:
        return f"job {self.num} failed: {self.message}"

    __repr__ = __str__


def first_line(text: str) -> str:
    lines = [line for line in text.strip().splitlines() if line.strip()]
    return lines[-1] if lines and lines[0].startswith("Traceback") else (lines or [""])[0]


def clear_failure(job: Job) -> None:
    """A job run again in the same directory starts without the last attempt's error."""
    (job.dir / ERROR_FILE).unlink(missing_ok=True)


def record_failure(job: Job, text: str) -> None:
    """error.txt in the job's directory, a line in the sweep's failed_jobs.log and in the log."""
    with atomic_open(job.dir / ERROR_FILE, "w") as f:
        f.write(text.rstrip() + "\n")
    line = f"job {job.num} ({' '.join(job.overrides)}) failed: {first_line(text)}"
    with open(job.sweep_dir / SWEEP_LOG, "a") as f:
        f.write(f"{time.strftime('%Y-%m-%d %H:%M:%S')} {line}; see {job.dir / ERROR_FILE}\n")
    log.error("job %d failed: %s (details in %s)", job.num, first_line(text), job.dir / ERROR_FILE)


class SweepRecorder(Callback):
    """Notes each multirun's directory and start, so the entry point can list its failed jobs
    afterwards from their error.txt files (jobs may have run in other processes or machines)."""

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        _sweeps.append((Path(str(config.hydra.sweep.dir)), time.time()))


def failed_jobs() -> list[tuple[Path, str]]:
    """(job directory, first line of its error) of every job that failed in this process's
    multiruns; error files older than the sweep (a reused sweep directory) are not counted."""
    failed = []
    for sweep_dir, start in _sweeps:
        errors = sweep_dir.rglob(ERROR_FILE) if sweep_dir.is_dir() else []
        for error in sorted(errors, key=lambda e: e.stat().st_mtime):  # in the order they failed
            if error.stat().st_mtime >= start - 2:  # a little slack for a shared file system
                failed.append((error.parent, first_line(error.read_text())))
    return failed
