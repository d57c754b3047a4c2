"""Evaluation from confusion-matrix counts (summable across processes)."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from contextlib import AbstractContextManager, nullcontext
from pathlib import Path

import torch
import torch.nn as nn
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig
from tqdm import tqdm

from scn.config import cache_dir
from scn.data.datasets import load_dataset
from scn.data.pipeline import build_pipeline
from scn.engine.accel import resolve_accel
from scn.errors import UserError
from scn.inference import load_model
from scn.tracking.figures import save_confusion_png
from scn.tracking.local import write_json


def confusion_matrix(targets: torch.Tensor, preds: torch.Tensor, num_classes: int) -> torch.Tensor:
    """cm[t, p] = number of samples of true class t predicted as p (on the inputs' device, with
    no host sync)."""
    flat = targets.long() * num_classes + preds.long()
    cm = torch.zeros(num_classes * num_classes, dtype=torch.long, device=flat.device)
    cm.index_add_(0, flat, torch.ones_like(flat))
    return cm.view(num_classes, num_classes)


def metrics_from_confusion(cm: torch.Tensor, class_names: list[str], prefix: str) -> dict:
    """Accuracy, mean per-class accuracy (over classes present), per-class accuracy, the matrix."""
    cm = cm.long().cpu()
    support = cm.sum(dim=1)
    correct = cm.diag()
    present = support > 0
    per_class = {
        name: (correct[i].item() / support[i].item() if present[i] else None)
        for i, name in enumerate(class_names)
    }
    acc = correct.sum().item() / max(support.sum().item(), 1)
    mean_class = (correct[present].double() / support[present].double()).mean().item()
    return {
        f"{prefix}/acc": acc,
        f"{prefix}/mean_class_acc": mean_class,
        f"{prefix}/class_acc": per_class,
        f"{prefix}/confusion": cm.tolist(),
    }


@torch.no_grad()
def predict_confusion(
    model: nn.Module,
    loader: Iterable[tuple[torch.Tensor, torch.Tensor]],
    labels: torch.Tensor,
    num_classes: int,
    device: torch.device,
    memory_format: torch.memory_format = torch.contiguous_format,
    progress: bool = False,
    desc: str = "eval",
    hflip: bool = False,
    autocast: Callable[[], AbstractContextManager] = nullcontext,
) -> torch.Tensor:
    """Run the model over batches of (image, index) and count the confusion matrix; `autocast`
    gives the precision context the model runs in (probabilities are taken in fp32)."""
    was_training = model.training
    model.eval()
    labels = labels.to(device)
    cm = torch.zeros(num_classes, num_classes, dtype=torch.long, device=device)
    for x, idx in tqdm(loader, desc=desc, leave=False, disable=not progress):
        x = x.to(device, non_blocking=True, memory_format=memory_format)
        with autocast():
            scores = model(x).logits.float()
            if hflip:  # test-time augmentation: sum the probabilities of image and mirror
                mirror = model(x.flip(-1)).logits.float()
                scores = torch.softmax(scores, 1) + torch.softmax(mirror, 1)
        cm += confusion_matrix(labels[idx.to(device)], scores.argmax(dim=1), num_classes)
    model.train(was_training)
    return cm.cpu()


def evaluate_checkpoint(cfg: DictConfig) -> dict:
    """task=eval: re-evaluate `ckpt_path` on a split of the checkpoint's dataset (or of a dataset
    given on the command line) and write eval.json, confusion.json and confusion.png."""
    if not cfg.ckpt_path:
        raise UserError("task=eval needs ckpt_path=<best.pt or last.pt>")
    lm = load_model(cfg.ckpt_path, cfg.trainer.device)
    overrides = HydraConfig.get().overrides.task if HydraConfig.initialized() else []
    own_dataset = not any(o.lstrip("+~").startswith(("dataset", "experiment")) for o in overrides)
    dcfg = lm.config.dataset if own_dataset else cfg.dataset
    cache = cache_dir(cfg)
    data = load_dataset(dcfg, cache)
    split = {"train": data.train, "val": data.val, "test": data.test}.get(cfg.eval.split)
    if split is None:
        raise UserError(
            f"eval.split={cfg.eval.split!r}: use test, train, or val (needs a val split)"
        )
    if len(data.class_names) != len(lm.class_names):
        raise UserError(
            f"the checkpoint predicts {len(lm.class_names)} classes but the dataset has "
            f"{len(data.class_names)}; evaluate on a dataset with the same classes"
        )
    # precision and layout of this run's trainer settings (auto: what pays on this device)
    accel = resolve_accel(cfg.trainer, lm.device, lm.config.trainer.eval_batch_size)
    memory_format = accel.memory_format
    lm.model.to(memory_format=memory_format)
    pipeline = build_pipeline(dcfg, data, lm.preprocessing, lm.device, memory_format=memory_format,
                              cache_dir=cache, progress=cfg.trainer.progress)  # fmt: skip
    batches = pipeline.batches(split, False, lm.config.trainer.eval_batch_size)
    labels = torch.as_tensor(split.labels, dtype=torch.long)
    name = cfg.eval.split
    args = (
        lm.model,
        batches,
        labels,
        len(lm.class_names),
        lm.device,
        memory_format,
        cfg.trainer.progress,
    )
    result = metrics_from_confusion(
        predict_confusion(*args, desc=name, autocast=accel.autocast), lm.class_names, name
    )
    if cfg.eval.hflip:
        cm = predict_confusion(*args, desc=f"{name}+flip", hflip=True, autocast=accel.autocast)
        flipped = metrics_from_confusion(cm, lm.class_names, name)
        result["hflip"] = {k.split("/", 1)[1]: v for k, v in flipped.items()}
    out = Path(str(cfg.paths.output_dir))
    out.mkdir(parents=True, exist_ok=True)
    report = {"checkpoint": str(cfg.ckpt_path), "dataset": str(data.root), "split": name,
              "images": len(split), **result}  # fmt: skip
    write_json(out / "eval.json", report)
    write_json(
        out / "confusion.json",
        {"class_names": lm.class_names, "confusion": result[f"{name}/confusion"]},
    )
    save_confusion_png(result[f"{name}/confusion"], lm.class_names, out / "confusion.png",
                       f"{name}: acc {result[f'{name}/acc']:.4f}")  # fmt: skip
    return report
