"""Stopping a run without losing or corrupting work: on a scheduler's signal (finish the step,
checkpoint, exit) and when training diverges (stop before non-finite state reaches a checkpoint)."""

from __future__ import annotations

import logging
import math
import signal
import threading
from pathlib import Path
from typing import Any

import torch

from scn.errors import UserError

log = logging.getLogger(__name__)

# SLURM sends SIGTERM before it kills a job (preemption, scancel, time limit); `--signal=USR1@90`
# asks for SIGUSR1 that many seconds earlier
STOP_SIGNALS = ("SIGTERM", "SIGUSR1")


class StopSignals:
    """While entered, SIGTERM and SIGUSR1 only set `received`; the training loop reads it after
    each step (a Python attribute, no device sync) and stops cleanly. The previous handlers come
    back on exit, since the jobs of a multirun share one process."""

    def __init__(self) -> None:
        self.received: int | None = None
        self._previous: dict[int, Any] = {}

    def __enter__(self) -> StopSignals:
        self.received = None
        if threading.current_thread() is not threading.main_thread():
            log.debug("not the main thread: stop signals keep their handlers")
            return self
        for name in STOP_SIGNALS:
            if hasattr(signal, name):
                sig = getattr(signal, name)
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc: object) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, signal.SIG_DFL if handler is None else handler)
        self._previous.clear()

    def _handle(self, signum: int, frame: object) -> None:
        self.received = signum  # nothing else: logging or I/O is not safe in a signal handler

    @property
    def name(self) -> str:
        return signal.Signals(self.received).name if self.received else ""


class Preempted(Exception):
    """The run stopped on a signal after writing a last.pt it can resume from."""

    def __init__(self, signal_name: str, where: str, saved: str | None, run_dir: Path):
        super().__init__(
            f"{signal_name} received: stopped {where} and saved {saved}; resume with "
            f"python run.py ckpt_path={run_dir}"
        )
        # what a shell reports for a process ended by that signal (143 for SIGTERM)
        self.exit_code = 128 + int(getattr(signal, signal_name))


class Diverged(UserError):
    """The loss or the weights became NaN or infinite."""


def weights_finite(model: torch.nn.Module) -> bool:
    """Every floating-point parameter and buffer is finite; one host sync, meant for epoch ends."""
    flags = [t.isfinite().all() for t in model.state_dict().values() if t.is_floating_point()]
    return bool(torch.stack(flags).all()) if flags else True


def check_finite(
    model: torch.nn.Module, epoch: int, loss: float, last_good: str | None, lr: float
) -> None:
    """Stop before a non-finite loss or weights reach a checkpoint or another epoch. `loss` is the
    epoch's device sum read at its end: it carries any step's NaN or inf, so no step syncs."""
    bad = [] if math.isfinite(loss) else [f"the loss is {loss}"]
    if not weights_finite(model):
        bad.append("the weights are NaN or infinite")
    if bad:
        raise Diverged(
            f"training diverged in epoch {epoch}: {' and '.join(bad)}. Nothing of that epoch was "
            f"saved; the last good checkpoint is {last_good or 'none (no last.pt written yet)'}. "
            f"Lower optimizer.lr (the epoch's rate was {lr:g}), or use trainer.precision=bf16 or "
            "fp32 instead of fp16"
        )
