"""Training state that is not the model: seeds, RNG states, the epoch's device sums and the
position inside an interrupted epoch, so a resumed run repeats an uninterrupted one exactly."""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from scn.engine.noise_detect import SampleScores


def epoch_seed(seed: int, epoch: int) -> int:
    """Each epoch's shuffling and augmentation depend on (seed, epoch) only, so a resumed run
    repeats the uninterrupted one exactly."""
    return int(np.random.SeedSequence([seed, epoch]).generate_state(1)[0])


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def rng_states() -> dict[str, Any]:
    """Every global RNG's state, as tensors and plain data (loadable with weights_only=True)."""
    np_state = np.random.get_state()
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "numpy": [np_state[0], torch.from_numpy(np_state[1].astype(np.int64)), *np_state[2:]],
        "python": random.getstate(),
    }


def set_rng_states(states: dict[str, Any]) -> None:
    torch.set_rng_state(states["torch"])
    if states["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(states["cuda"])
    name, keys, *rest = states["numpy"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), *rest))
    version, internal, gauss = states["python"]
    random.setstate((version, tuple(internal), gauss))


class DeviceSums:
    """Named running sums kept on the training device and read once, so no step waits for it."""

    def __init__(self, keys: tuple[str, ...], device: torch.device):
        self.keys = keys
        self.index = {k: i for i, k in enumerate(keys)}
        self.values = torch.zeros(len(keys), dtype=torch.float64, device=device)

    def add(self, key: str, value: torch.Tensor | float) -> None:
        self.values[self.index[key]] += value

    def read(self) -> dict[str, float]:
        return dict(zip(self.keys, self.values.tolist(), strict=True))


SUM_KEYS = ("n", "loss", "ce", "correct", "rr", "high", "low", "relabeled", "fixed", "broken")


@dataclass
class EpochProgress:
    """An epoch's training so far: batches done and what its metrics and audit are built from.
    Saved when a run is stopped inside an epoch, so the resumed run finishes that same epoch."""

    epoch: int
    sums: DeviceSums
    batches: int = 0
    high_count: int = 0
    low_count: int = 0
    alphas: list[torch.Tensor] = field(default_factory=list)
    changes: list[torch.Tensor] = field(default_factory=list)  # (position, old, new) rows
    samples: SampleScores = field(default_factory=SampleScores)  # noise-detection figures

    @classmethod
    def start(cls, epoch: int, device: torch.device, extra: tuple[str, ...] = ()) -> EpochProgress:
        """`extra`: sum keys beyond SUM_KEYS (RAN's region statistics)."""
        return cls(epoch, DeviceSums(SUM_KEYS + tuple(extra), device))

    def state_dict(self) -> dict[str, Any]:
        return {
            "epoch": self.epoch,
            "batches": self.batches,
            "sums": self.sums.values.cpu(),
            "sum_keys": list(self.sums.keys),
            "high_count": self.high_count,
            "low_count": self.low_count,
            "alphas": torch.cat(self.alphas).cpu() if self.alphas else None,
            "changes": torch.cat(self.changes, 1).cpu() if self.changes else None,
            "samples": self.samples.state_dict(),
        }

    def reduce(self, dist, n: int, has_alpha: bool) -> None:
        """Under torchrun, once per epoch (or before saving a stopped one): every process ends with
        the global sums, counts, per-sample records (`n` train images) and alphas. The relabel
        changes are global already (exchanged every step)."""
        if not dist.enabled:
            return
        dist.all_reduce_(self.sums.values)
        counts = torch.tensor([self.high_count, self.low_count], dtype=torch.long)
        self.high_count, self.low_count = dist.all_reduce_(counts).tolist()
        self.samples.merge(dist, n, self.sums.values.device, has_alpha)
        mine = torch.cat(self.alphas).cpu() if self.alphas else torch.zeros(0)
        self.alphas = [torch.cat(dist.gather_objects(mine)).to(self.sums.values.device)]

    @classmethod
    def from_state(
        cls, state: dict[str, Any], device: torch.device, main: bool = True
    ) -> EpochProgress:
        """`main`: under torchrun only rank 0 takes the saved sums, counts, records and alphas (the
        epoch's end adds the processes' up); every process takes the relabel changes."""
        extra = tuple(state.get("sum_keys", SUM_KEYS))[len(SUM_KEYS) :]
        p = cls.start(int(state["epoch"]), device, extra)
        p.batches = int(state["batches"])
        if state["changes"] is not None:
            p.changes.append(state["changes"].to(device))
        if not main:
            return p
        if state.get("samples"):
            p.samples = SampleScores.from_state(state["samples"], device)
        p.sums.values = state["sums"].to(device=device, dtype=torch.float64)
        p.high_count, p.low_count = int(state["high_count"]), int(state["low_count"])
        if state["alphas"] is not None:
            p.alphas.append(state["alphas"].to(device))
        return p
