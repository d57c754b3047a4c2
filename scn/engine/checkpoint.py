"""Checkpoints off the training loop: the loop copies the state to host memory and a background
thread writes it in the file format of scn.checkpoints; how often last.pt is written."""

from __future__ import annotations

import copy
import logging
import threading
import time
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig

from scn.checkpoints import save_checkpoint
from scn.errors import UserError

log = logging.getLogger(__name__)


# ------------------------------------------------------------------------ off the training loop
class CheckpointWriteError(UserError):
    """A background checkpoint write failed (disk full, permissions, ...)."""


def host_copy(obj: Any) -> Any:
    """A copy of a state dict in host memory that shares nothing mutable with it: tensors are copied
    to the CPU (`copy=True`, also for CPU tensors) and containers rebuilt, so training can keep
    changing the originals while the copy is written."""
    if isinstance(obj, torch.Tensor):
        return obj.detach().to("cpu", copy=True)
    if isinstance(obj, dict):
        out = type(obj)((k, host_copy(v)) for k, v in obj.items())
        if hasattr(obj, "_metadata"):  # a module state_dict's versions, read by load_state_dict
            out._metadata = copy.deepcopy(obj._metadata)
        return out
    if isinstance(obj, list):
        return [host_copy(v) for v in obj]
    if isinstance(obj, tuple):
        return tuple(host_copy(v) for v in obj)
    return copy.deepcopy(obj)


class CheckpointWriter:
    """Writes checkpoints (temp file, fsync, rename) on one background thread while training goes
    on. At most one write is in flight; a newer request for a path replaces one still queued for it.
    A failed write is raised in the training thread by the next `submit` or `wait`, naming the file;
    the previous file stays intact. The thread runs only while there is work."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._queue: dict[Path, dict[str, Any]] = {}  # pending writes in order, one per path
        self._busy: Path | None = None
        self._thread: threading.Thread | None = None
        self._error: CheckpointWriteError | None = None
        self.write_s = 0.0  # seconds spent in finished writes
        self.writes = 0

    def submit(self, path: Path | str, state: dict[str, Any]) -> None:
        """Queue `state` (a `host_copy`, never touched again by the caller) for `path`."""
        self._raise_error()
        path = Path(path)
        with self._cond:
            if self._queue.pop(path, None) is not None:
                log.debug("checkpoint %s: a newer state replaces the queued one", path)
            self._queue[path] = state
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="scn-checkpoint-writer",
                                                daemon=True)  # fmt: skip
                self._thread.start()
            self._cond.notify_all()

    def wait(self, raise_error: bool = True) -> float:
        """Block until every queued write is on disk; returns the seconds waited. A failed write
        raises here (or, with `raise_error=False`, is logged: the caller is failing already)."""
        t0 = time.perf_counter()
        with self._cond:
            while self._queue or self._busy is not None:
                self._cond.wait()
        if raise_error:
            self._raise_error()
        elif self._error is not None:
            log.error("%s", self._error)
        return time.perf_counter() - t0

    def _raise_error(self) -> None:
        error, self._error = self._error, None
        if error is not None:
            raise error

    def _run(self) -> None:
        while True:
            with self._cond:
                if not self._queue:
                    self._thread = None
                    self._cond.notify_all()
                    return
                path = next(iter(self._queue))
                state = self._queue.pop(path)
                self._busy = path
            t0 = time.perf_counter()
            error = None
            try:
                save_checkpoint(path, state)
            except BaseException as e:  # reported in the training thread, never lost here
                error = CheckpointWriteError(
                    f"could not write checkpoint {path}: {type(e).__name__}: {e}. The previous "
                    f"{path.name} (if any) is intact; free disk space or fix the folder's "
                    "permissions, then resume from it"
                )
                error.__cause__ = e
            del state
            with self._cond:
                self._busy = None
                self.write_s += time.perf_counter() - t0
                self.writes += 1
                if error is not None:
                    self._error = self._error or error
                    self._queue.clear()  # the run fails: later writes would not be read
                self._cond.notify_all()


def checkpoint_every(tcfg: DictConfig) -> int:
    """`trainer.checkpoint_every` (epochs between last.pt writes), checked."""
    every = tcfg.checkpoint_every
    if isinstance(every, bool) or not isinstance(every, int) or every < 1:
        raise UserError(
            f"trainer.checkpoint_every={every!r}; use a whole number of epochs >= 1 (1 writes "
            "last.pt after every epoch)"
        )
    return every


def last_due(epoch: int, every: int, final: int) -> bool:
    """Whether last.pt is written after `epoch`: every `every` epochs and after the final one."""
    return epoch % every == 0 or epoch >= final
