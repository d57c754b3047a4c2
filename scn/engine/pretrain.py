"""`task=pretrain`: train a backbone to recognise face identities (ArcFace / CosFace / normalised
softmax over an embedding layer) with the shared training loop, select epochs on held-out
verification pairs, and write `backbone.pth` for `backbone.weights=` of a training run.

With `pretrain.teacher` (DistillTrainer): distil a frozen face-identity teacher into any
backbone on unlabeled face images, and ship the student's backbone as `backbone.pth`.

The images are any dataset option's train split (labels ignored), or every image under a flat
`dataset=folder` root (a tenth held out). The teacher sees each image once, unaugmented, at its own
input size and standardisation (FaceNet: 160 px, (x - 127.5) / 128) whatever the student's
`dataset.image_size`; its L2-normalised embeddings are cached under `paths.cache_dir`, so later runs
and resumed ones skip it. The student trains on augmented views towards them (scn.methods.distill).
Each epoch reports the student-teacher cosine on held-out images (`distill/cos`, which selects the
epoch) and, for identity data, verification accuracy on its pairs."""

from __future__ import annotations

import hashlib
import logging
from contextlib import nullcontext
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn as nn
from omegaconf import DictConfig

from scn.data.datasets import DataBundle, Split, load_dataset
from scn.data.identities import load_identities
from scn.data.pipeline import build_pipeline
from scn.data.sources import FileImages
from scn.engine.trainer import Trainer
from scn.engine.verify import embed, pair_similarities, verification_accuracy
from scn.errors import UserError
from scn.inference import IMAGE_SUFFIXES
from scn.io import atomic_open
from scn.methods.base import Method
from scn.methods.distill import Distill
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
        """With `pretrain.teacher`: distillation (DistillTrainer, below) instead of identities."""
        if cfg.pretrain.teacher:
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


# ------------------------------------------------------------------------------ distillation
HELD_OUT = 0.1  # share of a flat folder's images held out for the per-epoch cosine


class TeacherEmbedding(nn.Module):
    """The teacher's L2-normalised embedding as a forward (what `embed` runs)."""

    def __init__(self, teacher: nn.Module):
        super().__init__()
        self.teacher = teacher

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.teacher.embed(x)


def load_teacher(name: str, cache_dir: Path):
    """(frozen teacher, its preprocessing) for `pretrain.teacher`: a registered name or a path to
    a FaceNet graph."""
    from scn.models.facenet import facenet_teacher

    if name == "facenet_casia":
        return facenet_teacher(cache_dir)
    if Path(name).expanduser().is_file():
        return facenet_teacher(cache_dir, Path(name).expanduser())
    raise UserError(
        f"pretrain.teacher={name!r}: use facenet_casia (FaceNet trained on CASIA-WebFace, from the "
        "faces extra) or the path to a FaceNet frozen graph (.pb)"
    )


def flat_folder(dcfg, root: Path) -> bool:
    """A `dataset=folder` root without its split folders: a plain folder of face images."""
    return dcfg.format == "folder" and not any(
        (root / str(d)).is_dir() for d in dcfg.split_dirs.values()
    )


def flat_folder_data(root: Path, seed: int) -> DataBundle:
    """Every image under `root` (recursively), a seeded tenth held out for the cosine check."""
    paths = sorted(p for p in root.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
    if len(paths) < 2:
        raise UserError(f"{root}: distillation needs at least 2 images (found {len(paths)})")
    images = FileImages(paths, [p.relative_to(root).as_posix() for p in paths])
    order = np.random.default_rng(seed).permutation(len(paths))
    held = max(1, int(round(HELD_OUT * len(paths))))
    test_rows, train_rows = np.sort(order[:held]), np.sort(order[held:])
    zeros = np.zeros(len(paths), dtype=np.int64)

    def split(rows: np.ndarray) -> Split:
        return Split(images.subset(rows), zeros[rows].copy(), zeros[rows], "train", rows)

    notes = [f"flat folder {root}: {len(train_rows)} images to distil on, {held} held out"]
    return DataBundle(root, ["face"], split(train_rows), split(test_rows), None, notes,
                      {"train": images})  # fmt: skip


class DistillTrainer(PretrainTrainer):
    """The training loop with the teacher's embeddings as targets and the held-out cosine as the
    per-epoch evaluation."""

    selection_metric = "cos"  # distill/cos

    def describe(self) -> str:
        return (f"distilling {self.cfg.pretrain.teacher} into {self.cfg.backbone.name} on "
                f"{len(self.data.train)} images")  # fmt: skip

    def load_data(self):
        d, cache = self.cfg.dataset, self.cache_dir
        if d.format == "identities":
            return load_identities(d, cache)  # verification pairs as well
        root = Path(str(d.root)).expanduser()
        if flat_folder(d, root):
            return flat_folder_data(root, int(self.cfg.trainer.seed))
        return load_dataset(d, cache)

    def create_method(self) -> Method:
        teacher, pre = load_teacher(str(self.cfg.pretrain.teacher), self.cache_dir)
        log.info("teacher %s: %s", self.cfg.pretrain.teacher, pre)
        teacher = TeacherEmbedding(teacher).to(self.device)
        # every process embeds every image (the cache then serves the runs after it)
        pipe = build_pipeline(self.cfg.dataset, self.data, pre, self.device,
                              cache_dir=self.cache_dir, progress=self.progress)  # fmt: skip
        train, self.teacher_test = (self.teacher_embeddings(teacher, pipe, s, pre)
                                    for s in (self.data.train, self.data.test))  # fmt: skip
        return Distill(self.cfg, train.to(self.device))

    def teacher_embeddings(self, teacher, pipe, split: Split, pre) -> torch.Tensor:
        """The teacher's embeddings of `split`'s images, from the cache when computed before."""
        key = hashlib.sha1(
            "\n".join(
                [str(self.cfg.pretrain.teacher), str(pre), str(self.data.root), *split.names]
            ).encode()
        ).hexdigest()[:20]
        path = self.cache_dir / "distill" / f"{key}.pt"
        if path.is_file():
            return torch.load(path, map_location="cpu", weights_only=True)
        batches = pipe.batches(split, False, self.cfg.trainer.eval_batch_size)
        emb = embed(teacher, batches, self.device, torch.contiguous_format, nullcontext,
                    self.progress)  # fmt: skip
        if self.dist.main:
            path.parent.mkdir(parents=True, exist_ok=True)
            with atomic_open(path, "wb") as f:
                torch.save(emb, f)
        log.info("teacher embeddings of %d images cached in %s", len(emb), path)
        return emb

    def selected_on(self) -> str:
        return "distill"

    def evaluate_epoch(self) -> dict[str, Any]:
        emb = self.test_embeddings()
        cos = torch.nn.functional.normalize(emb, dim=1).mul(self.teacher_test).sum(1)
        row: dict[str, Any] = {"distill/cos": float(cos.mean())}
        if getattr(self.data, "pairs", None) is not None:
            d = self.data
            row.update(verification_accuracy(pair_similarities(emb, d.pairs), d.same, d.folds))
        return row

    def epoch_line(self, row: dict[str, Any]) -> str:
        verify = f"  verify/acc {row['verify/acc']:.4f}" if "verify/acc" in row else ""
        return (f"distance {row['train/distance']:.4f}  train/retrieval_acc "
                f"{row['train/retrieval_acc']:.4f}  held-out distill/cos "
                f"{row['distill/cos']:.4f}{verify}")  # fmt: skip

    def summary(self, selected_on: str) -> dict[str, Any]:
        sel, last = self.history[self.best["epoch"] - 1], self.history[-1]
        out = {
            "distill/cos": sel["distill/cos"],
            "distill/cos_best": max(r["distill/cos"] for r in self.history),
            "distill/cos_last": last["distill/cos"],
            "train/distance_last": last["train/distance"],
            "teacher": str(self.cfg.pretrain.teacher),
            "train_images": len(self.data.train),
            "held_out_images": len(self.data.test),
            "selected_epoch": self.best["epoch"],
            "selected_on": selected_on,
            "selected_metric": "distill/cos",
            "selection_note": "epoch selected on the student-teacher cosine of held-out images; "
            f"{BACKBONE_FILE} holds the selected epoch's backbone",
            "epochs": self.epoch,
            "backbone_file": str(self.output_dir / BACKBONE_FILE),
            "output_dir": str(self.output_dir),
        }
        if "verify/acc" in sel:
            out.update({"verify/acc": sel["verify/acc"], "verify/acc_last": last["verify/acc"]})
        return out

    def log_summary(self, summary: dict[str, Any]) -> None:
        log.info("held-out distill/cos %.4f at epoch %d (last %.4f); backbone in %s",
                 summary["distill/cos"], summary["selected_epoch"], summary["distill/cos_last"],
                 summary["backbone_file"])  # fmt: skip
