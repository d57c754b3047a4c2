"""Where a run's time goes: start-up (data, model, compilation) once, then each epoch's phases.

The training loop queues GPU work ahead of the device, so a host clock read alone would charge one
phase's kernels to the next; on CUDA each phase end synchronises the device first (once per phase
per epoch, never per step). Keys, all in seconds (`time/...` in metrics rows, W&B and summary.json):

- `time/train_s`, `time/eval_s`: the training pass and the evaluation of an epoch;
- `time/checkpoint_s`: what checkpointing cost the training loop (the host copy of the state);
- `time/checkpoint_write_s`: the background writes that finished during the epoch (off the loop);
- `time/epoch_s`: from the end of the previous epoch (or the start of `fit`) to the row, so the
  epochs tile the run after start-up;
- once per run, in the first epoch's row and the summary: `time/startup_s` (from the start of the
  job to the end of its first training step) and its parts `time/startup_data_s` (dataset index,
  pipeline, decoded-image cache), `time/startup_model_s` (building, weights, device, optimiser,
  resumed state) and `time/startup_compile_s` (the first step with torch.compile on: compilation;
  0 when compile is off).
"""

from __future__ import annotations

import time
from typing import Any

import torch

PHASES = ("train", "eval", "checkpoint")
STARTUP_PARTS = ("data", "model", "compile")


class RunClock:
    """Accumulates start-up parts and per-epoch phase times for one Trainer."""

    def __init__(self, device: torch.device, start: float | None = None):
        self.device = device
        self.start = time.perf_counter() if start is None else start
        self._lap = time.perf_counter()
        self.startup: dict[str, float] = dict.fromkeys(STARTUP_PARTS, 0.0)
        self.startup_s: float | None = None  # set by the first training step
        self._startup_reported = False
        self._epoch: dict[str, float] = dict.fromkeys(PHASES, 0.0)
        self._epoch_start: float | None = None
        self._written = 0.0  # background write seconds already reported in a row

    def sync(self) -> None:
        """Wait for the device's queued work, so a host clock read covers it."""
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    # ------------------------------------------------------------------------------ start-up
    def started_at(self, start: float) -> None:
        """Count start-up from `start` (a `time.perf_counter()` taken when the job began)."""
        self.start = min(self.start, start)

    def startup_lap(self, part: str) -> None:
        """Charge the time since the previous lap to start-up part `part`."""
        now = time.perf_counter()
        self.startup[part] += now - self._lap
        self._lap = now

    def watch_first_step(self, trainer: Any, compiling: bool) -> None:
        """Time the trainer's next `step` call (synchronised): with compile on it is the
        compilation; its end ends start-up. Later steps call the method directly again."""
        step, own = trainer.step, "step" in vars(trainer)

        def first_step(*args: Any, **kwargs: Any) -> Any:
            if own:
                trainer.step = step
            else:
                del trainer.step  # the instance attribute: the class's method is back
            t0 = time.perf_counter()
            out = step(*args, **kwargs)
            self.sync()
            now = time.perf_counter()
            if compiling:
                self.startup["compile"] += now - t0
            self.startup_s = now - self.start
            return out

        trainer.step = first_step

    def startup_row(self) -> dict[str, float]:
        """The start-up keys (empty before the first step ended)."""
        if self.startup_s is None:
            return {}
        row = {"time/startup_s": self.startup_s}
        row.update({f"time/startup_{k}_s": v for k, v in self.startup.items()})
        return {k: round(v, 4) for k, v in row.items()}

    # -------------------------------------------------------------------------------- epochs
    def begin_epoch(self) -> float:
        """Start an epoch's clock: at the end of the previous epoch, or now for the first."""
        self._epoch = dict.fromkeys(PHASES, 0.0)
        if self._epoch_start is None:
            self._epoch_start = time.perf_counter()
        return self._epoch_start

    def phase(self, name: str, since: float) -> None:
        """Charge the time since `since` to phase `name`, after the device finished its work."""
        self.sync()
        self._epoch[name] += time.perf_counter() - since

    def add(self, name: str, seconds: float) -> None:
        self._epoch[name] += seconds

    def end_epoch(self, written_s: float) -> dict[str, float]:
        """The epoch's `time/*` keys; `written_s` is the writer's total background write time so
        far. The start-up keys come with the first row after the first step."""
        now = time.perf_counter()
        row = {f"time/{k}_s": v for k, v in self._epoch.items()}
        row["time/checkpoint_write_s"] = written_s - self._written
        row["time/epoch_s"] = now - (self._epoch_start if self._epoch_start is not None else now)
        self._written = written_s
        self._epoch_start = now
        if not self._startup_reported and self.startup_s is not None:
            row.update(self.startup_row())
            self._startup_reported = True
        return {k: round(v, 4) for k, v in row.items()}

    def totals(self, history: list[dict[str, Any]], written_s: float, wait_s: float) -> dict:
        """summary.json's `time/*`: each per-epoch key summed over the rows (a resumed run's
        earlier epochs included), the writes that finished after the last row, the end's wait for
        them (`time/checkpoint_wait_s`) and this job's start-up."""
        keys = [f"time/{k}_s" for k in (*PHASES, "checkpoint_write", "epoch")]
        out = {k: sum(r.get(k, 0.0) for r in history) for k in keys}
        out["time/checkpoint_write_s"] += written_s - self._written
        out["time/checkpoint_wait_s"] = wait_s
        out = {k: round(v, 4) for k, v in out.items()}
        return {**out, **self.startup_row()}


def preload_images(pipeline: Any, splits: list[Any]) -> None:
    """Load (decode when new) the cached pipeline's images of `splits` now, so start-up's data part
    holds them instead of the first batch."""
    if getattr(pipeline, "kind", None) != "cached":
        return
    for source in dict.fromkeys(s.source for s in splits if s is not None):
        pipeline.store(source)
