"""Speed settings of the model step: precision, memory layout, torch.compile and CUDA graphs.

`auto` means what pays on the device: on CUDA bf16 autocast (fp16 with a gradient scaler where bf16
is unsupported), channels_last, compile, and CUDA graphs for batches up to 128 (launch overhead
dominates small batches); on CPU fp32 and no compile (bf16 autocast and compile time cost more than
they save on a few cores), but channels_last, which measured faster on CPU too (1.37x for ResNet-18 at
224 px on 2 cores). Only the model's forward and backward change; the SCN loss, rank regularization
and relabeling always run in fp32.

Compiled code is cached on disk under `paths.cache_dir/compile/` (Inductor's FX-graph and AOTAutograd
caches, Triton's kernels), so the later jobs of a sweep and resumed runs start warm.
"""

from __future__ import annotations

import contextlib
import importlib.util
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn
from omegaconf import DictConfig

from scn.errors import UserError

log = logging.getLogger(__name__)

PRECISIONS = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
CUDA_GRAPHS_MAX_BATCH = 128


def _flag(value: Any, key: str) -> bool | None:
    """True / False, or None for auto."""
    if value == "auto" or value is None:
        return None
    if isinstance(value, bool):
        return value
    raise UserError(f"trainer.{key}={value!r}; use auto, true or false")


@dataclass(frozen=True)
class Accel:
    device: torch.device
    precision: str  # fp32 | bf16 | fp16
    channels_last: bool
    compile: bool
    cuda_graphs: bool

    @property
    def memory_format(self) -> torch.memory_format:
        return torch.channels_last if self.channels_last else torch.contiguous_format

    @property
    def dtype(self) -> torch.dtype:
        return PRECISIONS[self.precision]

    def autocast(self) -> contextlib.AbstractContextManager:
        if self.precision == "fp32":
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.dtype)

    def grad_scaler(self) -> torch.amp.GradScaler | None:
        """fp16 gradients underflow without loss scaling; bf16 has fp32's range and needs none."""
        if self.precision != "fp16":
            return None
        return torch.amp.GradScaler(self.device.type)

    def compiled(self, model: nn.Module, cache_dir: Path | None = None) -> nn.Module:
        """The module to call for forward passes (the plain one keeps state_dict keys unchanged).
        With `cache_dir`, compiled code is cached under `cache_dir/compile` (see compile_cache)."""
        if not self.compile:
            return model
        if cache_dir is not None:
            compile_cache(cache_dir)
        mode = "reduce-overhead" if self.cuda_graphs else None
        return torch.compile(model, mode=mode, dynamic=False)

    def step_begin(self) -> None:
        """Marks a new training iteration, so CUDA-graph outputs of the last one may be reused."""
        if self.compile and self.cuda_graphs:
            torch.compiler.cudagraph_mark_step_begin()

    def describe(self) -> str:
        return (
            f"precision {self.precision}, channels_last {self.channels_last}, "
            f"compile {self.compile}, cuda_graphs {self.cuda_graphs}"
        )


def compile_cache(cache_dir: Path | str) -> bool:
    """Point the compiler's on-disk caches at `cache_dir/compile/` (before the first compile:
    torch.compile is lazy, so before the first step) and log whether they held compiled code
    already; returns that (True = a warm start). A job sharing the folder reuses the entries."""
    root = Path(cache_dir).expanduser() / "compile"
    inductor, triton = root / "inductor", root / "triton"
    entries = sum(1 for p in inductor.rglob("*") if p.is_file()) if inductor.is_dir() else 0
    os.environ["TORCHINDUCTOR_CACHE_DIR"] = str(inductor)  # FX-graph and AOTAutograd caches
    os.environ["TRITON_CACHE_DIR"] = str(triton)  # compiled GPU kernels
    if entries:
        log.info("compile cache: warm, %d files in %s", entries, root)
    else:
        log.info("compile cache: cold (empty %s); later runs sharing it start warm", root)
    return entries > 0


def resolve_accel(tcfg: DictConfig, device: torch.device, batch_size: int,
                  distributed: bool = False) -> Accel:  # fmt: skip
    """Turn the trainer's auto/explicit settings into concrete ones for this device."""
    cuda = device.type == "cuda"
    precision = tcfg.precision
    if precision == "auto":
        bf16_ok = cuda and torch.cuda.is_bf16_supported()
        precision = "bf16" if bf16_ok else ("fp16" if cuda else "fp32")
    if precision not in PRECISIONS:
        raise UserError(f"trainer.precision={precision!r}; use auto, {', '.join(PRECISIONS)}")
    if precision == "fp16" and not cuda:
        raise UserError("trainer.precision=fp16 needs CUDA; on CPU use fp32 or bf16")

    channels_last = _flag(tcfg.channels_last, "channels_last")
    if channels_last is None:
        channels_last = True

    compile_ = _flag(tcfg.compile, "compile")
    if compile_ is None:
        compile_ = cuda and importlib.util.find_spec("triton") is not None
        if cuda and not compile_:
            log.warning("trainer.compile=auto: triton is not installed, so the model runs eagerly")
    graphs = _flag(tcfg.cuda_graphs, "cuda_graphs")
    if graphs is None:
        # not under torchrun: DDP's gradient all-reduce runs between the captured graphs
        graphs = cuda and compile_ and batch_size <= CUDA_GRAPHS_MAX_BATCH and not distributed
    if graphs and not (cuda and compile_):
        raise UserError("trainer.cuda_graphs=true needs CUDA and trainer.compile=true")
    return Accel(device, precision, bool(channels_last), bool(compile_), bool(graphs))
