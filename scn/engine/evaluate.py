"""Evaluation from confusion-matrix counts (summable across processes)."""

from __future__ import annotations

import torch
import torch.nn as nn
from torch.utils.data import DataLoader
from tqdm import tqdm


def confusion_matrix(targets: torch.Tensor, preds: torch.Tensor, num_classes: int) -> torch.Tensor:
    """cm[t, p] = number of samples of true class t predicted as p."""
    flat = targets.long() * num_classes + preds.long()
    return torch.bincount(flat, minlength=num_classes**2).reshape(num_classes, num_classes)


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
    loader: DataLoader,
    labels: torch.Tensor,
    num_classes: int,
    device: torch.device,
    memory_format: torch.memory_format = torch.contiguous_format,
    progress: bool = False,
    desc: str = "eval",
) -> torch.Tensor:
    """Run the model over a loader of (image, index) and count the confusion matrix."""
    was_training = model.training
    model.eval()
    cm = torch.zeros(num_classes, num_classes, dtype=torch.long)
    for x, idx in tqdm(loader, desc=desc, leave=False, disable=not progress):
        preds = (
            model(x.to(device, non_blocking=True, memory_format=memory_format))
            .logits.argmax(dim=1)
            .cpu()
        )
        cm += confusion_matrix(labels[idx], preds, num_classes)
    model.train(was_training)
    return cm
