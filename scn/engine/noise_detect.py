"""How well a per-sample score finds the wrong labels: the method's own score (SCN: 1 - alpha,
RUL: its uncertainty) against the small-loss rule, for every method under one key family
(`noise/auc`, `noise/precision` for the method's score; `noise/auc_loss`, `noise/precision_loss`
for the training loss).

Every train step writes each sample's score, training loss and whether its label in use was wrong
into tensors on the training device, at the sample's dataset position (no host sync); the epoch's
figures are read once at its end. Ties are handled exactly: the AUC counts a tied (wrong, right) pair
as half, and precision counts the tied block at the cut by its expected share of wrong labels.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

# the figures of the two detectors (metrics.jsonl, W&B, and summary.json at the last epoch)
KEYS = ("noise/auc", "noise/precision", "noise/auc_loss", "noise/precision_loss")
# the loss-based figures' names before the `noise/` family, kept for every method
LOSS_ALIASES = {"noise/auc_loss": "train/noise_auc_loss",
                "noise/precision_loss": "train/noise_precision_loss"}  # fmt: skip


def detection_auc(scores: torch.Tensor, wrong: torch.Tensor) -> torch.Tensor:
    """ROC-AUC of `scores` (higher = more suspect) as a detector of `wrong` (bool): the chance that a
    random wrong sample scores above a random right one, ties counted as half (Mann-Whitney U with
    average ranks). Undefined (nan) when either group is empty."""
    s = scores.double()
    _, inverse, counts = torch.unique(s, return_inverse=True, return_counts=True)
    ends = counts.cumsum(0).double()
    ranks = (ends - (counts.double() - 1) / 2)[inverse]  # 1-based average ranks, ascending
    n_pos = wrong.sum().double()
    n_neg = wrong.numel() - n_pos
    u = ranks[wrong].sum() - n_pos * (n_pos + 1) / 2
    return u / (n_pos * n_neg)


def precision_at_k(scores: torch.Tensor, wrong: torch.Tensor) -> torch.Tensor:
    """Share of wrong labels among the k highest scores, k = the number of wrong labels. Scores tied
    at the cut enter by their expected share (the mean over random tie-breaks)."""
    s = scores.double()
    w = wrong.double()
    k = w.sum()
    if wrong.numel() == 0:
        return k * float("nan")
    cut = torch.sort(s, descending=True).values[(k.long() - 1).clamp(min=0)]
    above, tied = s > cut, s == cut
    need = k - above.sum()
    hits = w[above].sum() + need * w[tied].sum() / tied.sum()
    return hits / k


class SampleScores:
    """One epoch's per-sample method score, training loss and wrong-label flag, indexed by dataset
    position and allocated on the training device by the first step. A position seen twice in an
    epoch (balanced sampler) keeps its latest step."""

    def __init__(self) -> None:
        self.seen: torch.Tensor | None = None
        self.wrong = self.loss = self.score = None
        self.stamp: torch.Tensor | None = None  # when each position was last recorded (-1: never)

    def record(
        self,
        idx: torch.Tensor,
        labels: torch.Tensor,
        clean: torch.Tensor,
        logits: torch.Tensor,
        score: torch.Tensor | None,
        stamp: int = 0,
    ) -> None:
        """A step's samples at positions `idx`: `labels` the ones trained with, `clean` the whole
        train set's clean reference, `logits` the ones trained on (SCN's alpha-weighted logits), so
        the loss is the per-sample CE on them; `score` the method's (higher = more suspect). `stamp`: increasing over the epoch's steps
        and distinct between processes, so merging processes keeps each position's latest record."""
        if self.seen is None:
            self._allocate(len(clean), clean.device)
        self.seen[idx] = True
        self.stamp[idx] = stamp
        self.wrong[idx] = labels != clean[idx]
        self.loss[idx] = F.cross_entropy(logits.detach().float(), labels, reduction="none")
        if score is not None:
            if self.score is None:
                self.score = torch.zeros_like(self.loss)
            self.score[idx] = score.detach().float()

    def _allocate(self, n: int, device: torch.device) -> None:
        self.seen = torch.zeros(n, dtype=torch.bool, device=device)
        self.wrong = torch.zeros_like(self.seen)
        self.loss = torch.zeros(n, device=device)
        self.stamp = torch.full((n,), -1, dtype=torch.long, device=device)

    def merge(self, dist, n: int, device: torch.device) -> None:
        """Under torchrun: every process ends with the whole epoch's records (`n` positions), each
        position's from the process that recorded it last."""
        if not dist.enabled:
            return
        if self.seen is None:  # nothing recorded here (a resumed epoch with no step left)
            self._allocate(n, device)
        if dist.any(self.score is not None) and self.score is None:
            self.score = torch.zeros_like(self.loss)
        latest = dist.all_reduce_(self.stamp.clone(), "max")
        mine = (self.stamp == latest) & (latest >= 0)
        for name in ("wrong", "loss", "score"):
            t = getattr(self, name)
            if t is not None:
                merged = dist.all_reduce_(torch.where(mine, t.float(), 0.0))
                setattr(self, name, merged.bool() if t.dtype == torch.bool else merged)
        self.stamp, self.seen = latest, latest >= 0

    def metrics(self) -> dict[str, float]:
        """The epoch's detection figures; empty when no label in use was wrong. The AUC is left out
        when every label was wrong (no right label to rank against)."""
        if self.seen is None:
            return {}
        wrong = self.wrong[self.seen]
        detectors = [("noise/auc_loss", "noise/precision_loss", self.loss)]
        if self.score is not None:
            detectors.append(("noise/auc", "noise/precision", self.score))
        values = [
            f(score[self.seen], wrong)
            for _, _, score in detectors
            for f in (detection_auc, precision_at_k)
        ]
        read = torch.stack([wrong.sum().double(), *values]).tolist()  # the one device read
        if read[0] == 0:
            return {}
        keys = [k for auc, prec, _ in detectors for k in (auc, prec)]
        return {k: v for k, v in zip(keys, read[1:], strict=True) if v == v}  # nan: undefined

    def state_dict(self) -> dict[str, Any]:
        names = ("seen", "wrong", "loss", "score", "stamp")
        return {k: getattr(self, k).cpu() for k in names if getattr(self, k) is not None}

    @classmethod
    def from_state(cls, state: dict[str, Any], device: torch.device | str) -> SampleScores:
        s = cls()
        state = dict(state)
        if "alpha" in state:  # saved before the method seam: SCN's alpha, scored as 1 - alpha
            state["score"] = 1 - state.pop("alpha")
        for k, v in state.items():
            setattr(s, k, v.to(device))
        if s.stamp is None and s.seen is not None:  # saved before stamps: one earlier step
            s.stamp = torch.where(s.seen, 0, -1)
        return s


def noise_summary(history: list[dict[str, Any]], aliases: dict[str, str]) -> dict[str, float]:
    """The last epoch's detection figures (and their older names in `aliases`), for summary.json."""
    last = history[-1] if history else {}
    out = {k: last[k] for k in KEYS if k in last}
    aliases = {**LOSS_ALIASES, **aliases}
    return {**out, **{old: out[new] for new, old in aliases.items() if new in out}}
