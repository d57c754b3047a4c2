"""What a training run reports at its end: summary.json's figures, the relabel audit, the log lines."""

from __future__ import annotations

import logging
from typing import Any

from scn.engine.noise_detect import noise_summary

log = logging.getLogger(__name__)


LAST_K = 5  # EAC's rule: the mean of the last five epochs


def rule_figures(history: list[dict[str, Any]], split: str) -> dict[str, float]:
    """The evaluation rules side by side for `split`: the best epoch (SCN's and RUL's code), the
    last epoch, and the mean of the last five (EAC's paper; fewer when fewer ran), for accuracy and
    mean per-class accuracy."""
    out: dict[str, float] = {}
    tail = history[-LAST_K:]
    for metric in ("acc", "mean_class_acc"):
        values = [r[f"{split}/{metric}"] for r in history]
        out[f"{split}/{metric}_best"] = max(values)
        out[f"{split}/{metric}_last"] = values[-1]
        out[f"{split}/{metric}_last5"] = sum(r[f"{split}/{metric}"] for r in tail) / len(tail)
    return out


def train_summary(trainer, selected_on: str) -> dict[str, Any]:
    """summary.json of a training run: the selected epoch's figures, the evaluation rules (best,
    last, mean of the last five), relabel totals, the method's own figures."""
    sel = trainer.history[trainer.best["epoch"] - 1]
    noisy0 = trainer.initial_labels != trainer.clean_labels
    right_now = trainer.labels == trainer.clean_labels
    summary: dict[str, Any] = {
        "test/acc": sel["test/acc"],
        "test/mean_class_acc": sel["test/mean_class_acc"],
        "test/class_acc": sel["test/class_acc"],
        **rule_figures(trainer.history, "test"),
        "method": trainer.method.name,
        "selected_epoch": trainer.best["epoch"],
        "selected_on": selected_on,
        "selection_note": (
            "epoch selected on a validation split held out from train"
            if selected_on == "val"
            else "epoch selected on the test split, as the papers do (set dataset.val_fraction "
            "for an unbiased estimate)"
        ),
        "epochs": trainer.epoch,
        "scn/relabeled_total": sum(r.get("scn/relabeled", 0) for r in trainer.history),
        "scn/noisy_labels_initial": int(noisy0.sum()),
        "scn/noisy_labels_final": int((~right_now).sum()),
        "scn/noisy_labels_fixed": int((noisy0 & right_now).sum()),
        "scn/clean_labels_broken": int((~noisy0 & ~right_now).sum()),
        "output_dir": str(trainer.output_dir),
        # the last epoch's noise-detection figures
        **noise_summary(trainer.history, trainer.method.metric_aliases()),
        **trainer.method.summary(trainer.history),
    }
    if selected_on == "val":
        summary["val/acc"] = sel["val/acc"]
        summary["val/mean_class_acc"] = sel["val/mean_class_acc"]
        summary.update(rule_figures(trainer.history, "val"))
    return summary


def log_train_summary(s: dict[str, Any], relabels: bool) -> None:
    log.info(
        "test/acc %.4f (mean per class %.4f) at epoch %d selected on %s; best %.4f, last %.4f, "
        "mean of the last 5 epochs %.4f",
        s["test/acc"],
        s["test/mean_class_acc"],
        s["selected_epoch"],
        s["selected_on"],
        s["test/acc_best"],
        s["test/acc_last"],
        s["test/acc_last5"],
    )
    if relabels:
        log.info(
            "relabels %d; noisy train labels %d -> %d (fixed %d, clean labels broken %d)",
            s["scn/relabeled_total"],
            s["scn/noisy_labels_initial"],
            s["scn/noisy_labels_final"],
            s["scn/noisy_labels_fixed"],
            s["scn/clean_labels_broken"],
        )


def relabel_rows(relabel_log: list[list[int]], class_names: list[str], samples: list[str],
                 clean: list[int]) -> list[dict[str, Any]]:  # fmt: skip
    """The relabel audit rows: which sample changed label when, against the clean reference."""
    names = class_names
    return [
        {
            "sample": samples[i],
            "old": names[o],
            "new": names[n],
            "epoch": e,
            "clean": names[clean[i]],
        }
        for i, o, n, e in relabel_log
    ]
