"""Multirun bookkeeping: a failed job is recorded where its outputs go and the sweep goes on;
`python run.py -m` then lists the failed jobs and exits non-zero, whichever launcher ran them."""

from __future__ import annotations

import functools
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig

from scn.errors import JobFailed
from scn.io import atomic_open, os_error_in, run_dir_error

log = logging.getLogger(__name__)

ERROR_FILE = "error.txt"  # in a failed job's directory: the message, or a bug's traceback
SWEEP_LOG = "failed_jobs.log"  # in the sweep directory: a line per failed job
_sweeps: list[tuple[Path, float]] = []  # (sweep dir, start time) of the multiruns of this process
_unwritten: list[tuple[float, Path, str]] = []  # (when, job dir, error) without an error.txt


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
    """error.txt in the job's directory, a line in the sweep's failed_jobs.log and in the log.
    A job whose directory cannot be written (its setup failed there) is remembered in this
    process instead of error.txt, so `failed_jobs` still lists it."""
    error_file = job.dir / ERROR_FILE
    try:
        with atomic_open(error_file, "w") as f:
            f.write(text.rstrip() + "\n")
    except OSError:
        _unwritten.append((time.time(), job.dir, first_line(text)))
        error_file = None
    line = f"job {job.num} ({' '.join(job.overrides)}) failed: {first_line(text)}"
    try:
        with open(job.sweep_dir / SWEEP_LOG, "a") as f:
            f.write(f"{time.strftime('%Y-%m-%d %H:%M:%S')} {line}; see {error_file or 'the log'}\n")
    except OSError as e:
        log.warning("cannot add to %s: %s", job.sweep_dir / SWEEP_LOG, e)
    where = f" (details in {error_file})" if error_file else ""
    log.error("job %d failed: %s%s", job.num, first_line(text), where)


class SweepRecorder(Callback):
    """Notes each multirun's directory and start, so the entry point can list its failed jobs
    afterwards from their error.txt files (jobs may have run in other processes or machines)."""

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        _sweeps.append((Path(str(config.hydra.sweep.dir)), time.time()))
        _guard_job_setup()


def _guard_job_setup() -> None:
    """Hydra's basic launcher runs each job through `hydra.core.utils.run_job`, which makes the
    job's directory, `.hydra/` and log file before it calls the job: an OSError there (a file in
    the path, no permission, no space) would end the whole sweep with a traceback. Wrapped, that
    job fails like any other (error.txt where its directory allows, the sweep goes on, the multirun
    exits 1 listing it). Other launchers run jobs in their own processes and report there."""
    from hydra._internal.core_plugins import basic_launcher

    if not getattr(basic_launcher.run_job, "scn_guarded", False):
        basic_launcher.run_job = _recording_setup_failures(basic_launcher.run_job)


def _recording_setup_failures(run_job: Any) -> Any:
    @functools.wraps(run_job)
    def guarded(*args: Any, **kwargs: Any) -> Any:
        try:
            return run_job(*args, **kwargs)
        except Exception as e:  # the job itself reports its failures: this is its setup
            problem = os_error_in(e)
            if problem is None:
                raise
            return _setup_failed(kwargs["config"] if "config" in kwargs else args[1], problem)

    guarded.scn_guarded = True
    return guarded


def _setup_failed(config: DictConfig, e: OSError) -> Any:
    """Record a job whose directory could not be set up; the sweeper gets a FailedJob."""
    from hydra.core.utils import JobReturn, JobStatus

    hc = config.hydra  # named as failed_jobs names the jobs with an error.txt
    job = Job(int(hc.job.num), Path(str(hc.sweep.dir)) / str(hc.sweep.subdir),
              Path(str(hc.sweep.dir)), list(hc.overrides.task))  # fmt: skip
    text = run_dir_error(e)
    record_failure(job, text)
    if not config.continue_on_error:
        raise JobFailed(text, 2) from e
    ret = JobReturn(overrides=job.overrides, status=JobStatus.COMPLETED)
    ret.return_value = FailedJob(job.num, first_line(text))
    return ret


def failed_jobs() -> list[tuple[Path, str]]:
    """(job directory, first line of its error) of every job that failed in this process's
    multiruns; error files older than the sweep (a reused sweep directory) are not counted."""
    failed = list(_unwritten)
    for sweep_dir, start in _sweeps:
        errors = sweep_dir.rglob(ERROR_FILE) if sweep_dir.is_dir() else []
        for error in errors:
            if error.stat().st_mtime >= start - 2:  # a little slack for a shared file system
                failed.append((error.stat().st_mtime, error.parent, first_line(error.read_text())))
    return [(job, line) for _, job, line in sorted(failed)]  # in the order they failed
