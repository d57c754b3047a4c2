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
from scn.engine.trainer import Trainer
from scn.engine.verify import embed, pair_similarities, verification_accuracy
from scn.io import atomic_open
from scn.methods.base import Method
from scn.methods.identity import IdentityMargin

log = logging.getLogger(__name__)

BACKBONE_FILE = "backbone.pth"


class PretrainTrainer(Trainer):
    """The training loop with identities as classes, a margin head, and verification as the
    per-epoch evaluation."""

    job_type = "pretrain"  # selects on verify/acc (selected_on() + the inherited "acc")

    def __init__(self, cfg: DictConfig, output_dir: Path, state: dict[str, Any] | None = None):
        super().__init__(cfg, output_dir, state)
        log.info(self.describe())

    @classmethod
    def for_config(cls, cfg: DictConfig) -> type[Trainer]:
        """With `pretrain.teacher`: distillation (scn.engine.distill) instead of identities."""
        if cfg.get("pretrain") is not None and cfg.pretrain.get("teacher"):
            from scn.engine.distill import DistillTrainer

            return DistillTrainer
        return cls

    def describe(self) -> str:
        head = self.model.head
        return (f"pretraining on {self.num_classes} identities: {head.loss} loss, scale "
                f"{head.scale:g}, margin {head.margin:g}, {head.weight.shape[1]}-d embedding")  # fmt: skip

    def load_data(self):
        return load_identities(self.cfg.dataset, self.cache_dir)

    def create_method(self) -> Method:
        """Identities with a margin loss (the `pretrain` group), whatever `method=` says."""
        return IdentityMargin(self.cfg)

    def selected_on(self) -> str:
        return "verify"

    def test_embeddings(self) -> torch.Tensor:
        """The model's embeddings of the test images (under torchrun: every process's part)."""
        data = self.data
        batches = self.pipeline.batches(data.test, False, self.cfg.trainer.eval_batch_size)
        emb = embed(self.model, batches, self.device, self.memory_format, self.accel.autocast,
                    self.progress)  # fmt: skip
        if self.dist.enabled:  # each process embedded its contiguous part of the images
            emb = self.dist.all_gather_cat(emb.to(self.device), self.dist.sizes(len(data.test)))
            emb = emb.cpu()
        return emb

    def evaluate_epoch(self) -> dict[str, Any]:
        d = self.data
        sims = pair_similarities(self.test_embeddings(), d.pairs)
        return verification_accuracy(sims, d.same, d.folds)

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
            f"{BACKBONE_FILE} holds the selected epoch's backbone",
            "epochs": self.epoch,
            "backbone_file": str(self.output_dir / BACKBONE_FILE),
            "output_dir": str(self.output_dir),
        }

    def on_selected(self, epoch: int) -> None:
        """backbone.pth holds the backbone of the epoch the summary reports (selected on the
        held-out check), written when the epoch is selected so a resumed run keeps it."""
        if not self.dist.main:
            return
        state = {
            k: v.detach().cpu().contiguous() for k, v in self.model.backbone.state_dict().items()
        }
        with atomic_open(self.output_dir / BACKBONE_FILE, "wb") as f:
            torch.save({"state_dict": state, "preprocessing": self.preprocessing.to_dict()}, f)

    def write_run_files(self) -> None:
        """backbone.pth is written when its epoch is selected (on_selected)."""

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
