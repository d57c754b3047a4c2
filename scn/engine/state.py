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


def step_seed(epoch_seed: int, step: int) -> int:
    """A step's seed (a method's own random choices): from the epoch's seed and the step only."""
    return int(np.random.SeedSequence([epoch_seed, step]).generate_state(1)[0])


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


# the sums of checkpoints written before the method seam, by position
OLD_SUM_KEYS = ("n", "loss", "ce", "correct", "rr", "high", "low", "relabeled", "fixed", "broken")


@dataclass
class EpochProgress:
    """An epoch's training so far: batches done and what its metrics and audit are built from.
    Saved when a run is stopped inside an epoch, so the resumed run finishes that same epoch."""

    epoch: int
    sums: DeviceSums
    batches: int = 0
    alphas: list[torch.Tensor] = field(default_factory=list)
    changes: list[torch.Tensor] = field(default_factory=list)  # (position, old, new, kept) rows
    samples: SampleScores = field(default_factory=SampleScores)  # noise-detection figures

    @classmethod
    def start(cls, epoch: int, device: torch.device, keys: tuple[str, ...]) -> EpochProgress:
        """`keys`: the epoch's sums (the loop's, the loss terms', the method's statistics)."""
        return cls(epoch, DeviceSums(tuple(keys), device))

    def state_dict(self) -> dict[str, Any]:
        return {
            "epoch": self.epoch,
            "batches": self.batches,
            "sums": self.sums.values.cpu(),
            "sum_keys": list(self.sums.keys),
            "alphas": torch.cat(self.alphas).cpu() if self.alphas else None,
            "changes": torch.cat(self.changes, 1).cpu() if self.changes else None,
            "samples": self.samples.state_dict(),
        }

    def reduce(self, dist, n: int, has_alpha: bool) -> None:
        """Under torchrun, once per epoch (or before saving a position inside one): every process
        ends with the global sums, per-sample records (`n` train images) and alphas. The relabel
        changes are global already (exchanged every step)."""
        if not dist.enabled:
            return
        dist.all_reduce_(self.sums.values)
        self.samples.merge(dist, n, self.sums.values.device)
        mine = torch.cat(self.alphas).cpu() if self.alphas else torch.zeros(0)
        self.alphas = [torch.cat(dist.gather_objects(mine)).to(self.sums.values.device)]

    @classmethod
    def from_state(
        cls, state: dict[str, Any], device: torch.device, keys: tuple[str, ...], main: bool = True
    ) -> EpochProgress:
        """`keys`: this run's sums (saved sums are matched by name; checkpoints from before the
        method seam stored SCN's group counts apart). `main`: under torchrun only rank 0 takes the
        saved sums, records and alphas (the epoch's end adds the processes' up); every process
        takes the relabel changes."""
        p = cls.start(int(state["epoch"]), device, keys)
        p.batches = int(state["batches"])
        if state["changes"] is not None:
            changes = state["changes"].to(device)
            if changes.shape[0] == 3:  # before the kept row: every change was kept
                changes = torch.cat([changes, torch.ones_like(changes[:1])])
            p.changes.append(changes)
        if not main:
            return p
        if state.get("samples"):
            p.samples = SampleScores.from_state(state["samples"], device)
        saved_keys = list(state.get("sum_keys", OLD_SUM_KEYS))
        saved = dict(zip(saved_keys, state["sums"].tolist(), strict=True))
        saved.update({"high_n": state.get("high_count", 0), "low_n": state.get("low_count", 0)}
                     if "high_count" in state else {})  # fmt: skip
        for k in keys:
            p.sums.values[p.sums.index[k]] = float(saved.get(k, 0.0))
        if state["alphas"] is not None:
            p.alphas.append(state["alphas"].to(device))
        return p
