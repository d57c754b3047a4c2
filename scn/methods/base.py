"""What every method gives the training loop: its model, its loss terms, its epoch statistics, its
per-sample noise score and (for label-correcting methods) new labels. The loop composes these and
knows no method by name; each method lives in its own module of this package."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, NamedTuple

import torch
import torch.nn as nn
from omegaconf import DictConfig


class ModelOutput(NamedTuple):
    """What a model returns in both modes (evaluation, predict and features read `logits`,
    `alpha`, `features` and `mu`; `extra` carries what only the method's training loss needs)."""

    logits: torch.Tensor  # used for CE, argmax and relabeling (SCN: alpha-weighted)
    alpha: torch.Tensor | None = None  # SCN's importance weight (B,); None for other methods
    features: torch.Tensor | None = None  # the representation the classifier sees
    mu: torch.Tensor | None = None  # RAN's region weights (B, K+1), the whole face first
    extra: dict[str, torch.Tensor] | None = None  # training-only tensors (EAC's maps, RUL's stats)


@dataclass
class Term:
    """One loss term of a step, in fp32. `per_sample`: `value` is the sum over this process's
    samples (the step divides by the global batch); otherwise `value` is one batch-level value
    (SCN's RR), the same on every process unless `local` (computed on this process's share)."""

    value: torch.Tensor
    weight: float = 1.0
    per_sample: bool = True
    local: bool = False


@dataclass
class StepContext:
    """What a loss may need beyond the batch: the process layout, the epoch, and a random
    generator seeded by (run seed, epoch, step), so a method's random choices (EAC's erasing,
    RUL's pairing) repeat exactly on resume without state of their own."""

    dist: Any
    global_n: int
    epoch: int = 0
    seed: int = 0  # the step's seed
    device: torch.device | str = "cpu"
    idx: torch.Tensor | None = None  # the batch's dataset positions (a distillation target table)
    stats: dict[str, Any] = field(default_factory=dict)  # filled by the terms, read by relabel
    _rng: torch.Generator | None = None

    def rng(self) -> torch.Generator:
        if self._rng is None:
            self._rng = torch.Generator(device=self.device).manual_seed(self.seed)
        return self._rng


class Method:
    """A training method. Subclasses set `name`, build their model and return their terms; the
    defaults are those of plain cross-entropy training."""

    name = "base"
    score_name: str | None = None  # what `noise_score` is ("1 - alpha", "uncertainty")
    stat_keys: tuple[str, ...] = ()  # the method's epoch sums beyond the loss terms
    acc_key = "train/acc"  # what the argmax of the training logits measures
    label_audit = True  # labels have a clean reference: noise figures and the relabel audit

    def __init__(self, cfg: DictConfig):
        self.cfg = cfg

    # ---------------------------------------------------------------- model
    def build_model(self, backbone: nn.Module, num_classes: int) -> nn.Module:
        raise NotImplementedError

    def param_groups(self, model: nn.Module, lr: float) -> list[dict[str, Any]]:
        """The optimiser's parameter groups (one group; a method may give its heads their own lr)."""
        return [{"params": list(model.parameters())}]

    # ----------------------------------------------------------------- step
    def train_inputs(self, x: torch.Tensor, ctx: StepContext) -> torch.Tensor:
        """The batch the model trains on (EAC adds the flipped views)."""
        return x

    def terms(self, out: ModelOutput, y: torch.Tensor, ctx: StepContext) -> dict[str, Term]:
        """The loss terms, `ce` first; the objective is their weighted sum."""
        ce = torch.nn.functional.cross_entropy(out.logits.float(), y, reduction="sum")
        return {"ce": Term(ce)}

    def term_names(self) -> tuple[str, ...]:
        """The names `terms` returns, for the epoch's sums (train/<name>)."""
        return ("ce",)

    def train_output(self, out: ModelOutput, y: torch.Tensor, ctx: StepContext) -> ModelOutput:
        """What the loop reads after the step (accuracy, noise records, relabeling): the rows of
        the original images (a method that adds views puts them after these)."""
        n = len(y)
        if out.logits.shape[0] == n:
            return out
        return ModelOutput(*(t[:n] if isinstance(t, torch.Tensor) else t for t in out))

    def correct(self, out: ModelOutput, y: torch.Tensor, ctx: StepContext) -> torch.Tensor:
        """How many of the batch the training output gets right (`acc_key`)."""
        return (out.logits.detach().argmax(1) == y).sum()

    def add_stats(self, sums, out: ModelOutput, ctx: StepContext) -> None:
        """Accumulate the method's epoch statistics (`stat_keys`) on the device."""

    def relabel(self, out: ModelOutput, y: torch.Tensor, ctx: StepContext) -> torch.Tensor | None:
        """New labels for the batch, or None (methods that do not correct labels)."""
        return None

    def noise_score(self, out: ModelOutput) -> torch.Tensor | None:
        """A per-sample score, higher = label more suspect; None when the method has none."""
        return None

    # ---------------------------------------------------------------- epoch
    def epoch_row(self, totals: dict[str, float]) -> dict[str, Any]:
        """The method's metrics from the epoch's sums (`totals["n"]` samples)."""
        return {}

    def metric_aliases(self) -> dict[str, str]:
        """Older names kept for a metric (`new key -> old key`), so existing dashboards go on."""
        return {}

    def summary(self, history: list[dict[str, Any]]) -> dict[str, Any]:
        """What the method adds to summary.json."""
        return {}

    def summary_lines(self, summary: dict[str, Any]) -> list[str]:
        """Log lines at the end of the run."""
        return []

    @property
    def corrects_labels(self) -> bool:
        return type(self).relabel is not Method.relabel


class ClassifierModel(nn.Module):
    """Backbone + head with state-dict keys `backbone.*` and `head.*` (the layout of every
    checkpoint of this project). The head runs in fp32 under any autocast."""

    def __init__(self, backbone: nn.Module, head: nn.Module):
        super().__init__()
        self.backbone = backbone
        self.head = head

    def forward(self, x: torch.Tensor) -> ModelOutput:
        features = self.backbone(x)
        with torch.autocast(x.device.type, enabled=False):
            out = self.head(features.float())
        return out._replace(features=features)  # as the backbone gave it (its precision)
