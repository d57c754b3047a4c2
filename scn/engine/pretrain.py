"""`task=pretrain`: train a backbone to recognise face identities (ArcFace / CosFace / normalised
softmax over an embedding layer) with the shared training loop, select epochs on held-out
verification pairs, and write `backbone.pth` for `backbone.weights=` of a training run."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig

from scn.data.identities import load_identities
from scn.engine.state import EpochProgress
from scn.engine.step import StepResult
from scn.engine.trainer import Trainer
from scn.engine.verify import embed, pair_similarities, verification_accuracy
from scn.errors import UserError
from scn.io import atomic_open
from scn.models.margin import DEFAULT_MARGIN, PretrainModel, PretrainOutput, logits_cross_entropy

log = logging.getLogger(__name__)

BACKBONE_FILE = "backbone.pth"


def pretrain_config(cfg: DictConfig) -> DictConfig:
    """The expression-specific methods are off while pretraining (SCN's relabeling, RAN's crops)."""
    if cfg.get("ran") is not None and cfg.ran.enabled:
        raise UserError("task=pretrain trains a plain backbone; set ran.enabled=false")
    cfg.scn.enabled = False
    return cfg


def margin_of(pcfg: DictConfig) -> float:
    """pretrain.margin, or the loss's usual one when null (0.5 ArcFace, 0.35 CosFace)."""
    loss = getattr(pcfg.loss, "value", pcfg.loss)
    return float(pcfg.margin) if pcfg.margin is not None else DEFAULT_MARGIN[loss]


class PretrainTrainer(Trainer):
    """The training loop with identities as classes, a margin head, and verification as the
    per-epoch evaluation."""

    job_type = "pretrain"  # selects on verify/acc (selected_on() + the inherited "acc")

    def __init__(self, cfg: DictConfig, output_dir: Path, state: dict[str, Any] | None = None):
        super().__init__(pretrain_config(cfg), output_dir, state)
        log.info(
            "pretraining on %d identities: %s loss, scale %g, margin %g, %d-d embedding",
            self.num_classes,
            self.model.head.loss,
            self.model.head.scale,
            self.model.head.margin,
            self.model.head.weight.shape[1],
        )

    def load_data(self):
        return load_identities(self.cfg.dataset, Path(str(self.cfg.paths.cache_dir)).expanduser())

    def build_model(self, backbone: torch.nn.Module) -> torch.nn.Module:
        p = self.cfg.pretrain
        loss = getattr(p.loss, "value", p.loss)  # the schema's enum, or a resumed run's string
        return PretrainModel(backbone, self.num_classes, loss, p.scale, margin_of(p),
                             p.embedding_dim)  # fmt: skip

    def selected_on(self) -> str:
        return "verify"

    def step(self, x: torch.Tensor, y: torch.Tensor, global_n: int | None = None) -> StepResult:
        """Embeddings in the configured precision; cosines, margin and loss in fp32, the B x C
        logits built once (scn.models.margin). Under torchrun `x` is this process's share of a
        global batch of `global_n`: the objective is scaled so DDP's gradient average is the
        global batch's mean-loss gradient (each process keeps every class centre)."""
        accel = self.accel
        accel.step_begin()
        with accel.autocast():
            emb = self.forward(x)
        with torch.autocast(x.device.type, enabled=False):
            logits, plain = self.model.head.logits_and_target(emb.float(), y)
            loss = logits_cross_entropy(logits, y)
        objective = loss * (len(y) * self.dist.world / (global_n or len(y)))
        self.optimizer.zero_grad(set_to_none=True)
        if self.scaler is not None:
            self.scaler.scale(objective).backward()
            self.scaler.step(self.optimizer)
            self.scaler.update()
        else:
            objective.backward()
            self.optimizer.step()
        total = loss.detach() * len(y)
        # the loop's argmax then gives the plain identity prediction (train/id_acc), no copy
        shown = self.model.head.without_margin(logits.detach(), y, plain)
        return StepResult(PretrainOutput(shown), total, total, None)

    def record_samples(self, p: EpochProgress, idx, y, logits, alpha) -> None:
        """No per-sample noise scores: identity labels are taken as given, and their loss would be
        another B x C copy of the logits."""

    def train_epoch(self, epoch: int) -> dict[str, Any] | None:
        row = super().train_epoch(epoch)
        if row is None:
            return None
        row["train/id_acc"] = row.pop("train/acc")  # argmax of s * cos: no margin at the label
        row.pop("scn/noisy_labels", None)
        return row

    def evaluate_epoch(self) -> dict[str, Any]:
        data = self.data
        batches = self.pipeline.batches(data.test, False, self.cfg.trainer.eval_batch_size)
        emb = embed(self.model, batches, self.device, self.memory_format, self.accel.autocast,
                    self.progress)  # fmt: skip
        if self.dist.enabled:  # each process embedded its contiguous part of the images
            emb = self.dist.all_gather_cat(emb.to(self.device), self.dist.sizes(len(data.test)))
            emb = emb.cpu()
        return verification_accuracy(pair_similarities(emb, data.pairs), data.same, data.folds)

    def epoch_line(self, row: dict[str, Any]) -> str:
        return (
            f"loss {row['train/loss']:.4f}  train/id_acc {row['train/id_acc']:.4f}  "
            f"verify/acc {row['verify/acc']:.4f} (std {row['verify/acc_std']:.4f} over folds)"
        )

    def summary(self, selected_on: str) -> dict[str, Any]:
        sel = self.history[self.best["epoch"] - 1]
        last = self.history[-1]
        return {
            "verify/acc": sel["verify/acc"],
            "verify/acc_std": sel["verify/acc_std"],
            "verify/threshold": sel["verify/threshold"],
            "verify/acc_best": max(r["verify/acc"] for r in self.history),
            "verify/acc_last": last["verify/acc"],
            "verify/pairs": sel["verify/pairs"],
            "train/id_acc": sel["train/id_acc"],
            "train/id_acc_last": last["train/id_acc"],
            "train/loss_last": last["train/loss"],
            "identities": self.num_classes,
            "train_images": len(self.data.train),
            "selected_epoch": self.best["epoch"],
            "selected_on": selected_on,
            "selection_note": "epoch selected on verification pairs of identities not trained on; "
            f"{BACKBONE_FILE} holds the last epoch's backbone",
            "epochs": self.epoch,
            "backbone_file": str(self.output_dir / BACKBONE_FILE),
            "output_dir": str(self.output_dir),
        }

    def write_run_files(self) -> None:
        """backbone.pth: the backbone's tensors under the names backbone=<name> builds (no
        embedding layer, no margin head) and the preprocessing it was trained with."""
        state = {
            k: v.detach().cpu().contiguous() for k, v in self.model.backbone.state_dict().items()
        }
        with atomic_open(self.output_dir / BACKBONE_FILE, "wb") as f:
            torch.save({"state_dict": state, "preprocessing": self.preprocessing.to_dict()}, f)

    def relabel_rows(self) -> list[dict[str, Any]]:
        return []

    def log_summary(self, summary: dict[str, Any]) -> None:
        log.info(
            "verify/acc %.4f (std %.4f over folds, %d pairs) at epoch %d; last %.4f; "
            "train/id_acc %.4f; backbone in %s",
            summary["verify/acc"],
            summary["verify/acc_std"],
            summary["verify/pairs"],
            summary["selected_epoch"],
            summary["verify/acc_last"],
            summary["train/id_acc"],
            summary["backbone_file"],
        )
