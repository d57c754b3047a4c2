"""What `python run.py` does: dispatch on `task`, keep runs clean in multirun, return the metric."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from scn.config import hydra_choices, to_container
from scn.engine.checkpoint import load_checkpoint
from scn.engine.evaluate import evaluate_checkpoint
from scn.engine.trainer import Trainer
from scn.errors import UserError
from scn.runtime import release_job_resources
from scn.tracking.wandb_run import build_tracker

log = logging.getLogger(__name__)

# keys a resumed run may take from the command line instead of the checkpoint
RESUME_OVERRIDABLE = (
    "task",
    "ckpt_path",
    "eval",
    "trainer.epochs",
    "trainer.device",
    "trainer.progress",
    "dataset.num_workers",
    "logger",
    "paths",
)
# speed settings a resumed run keeps from the checkpoint unless the command line sets them
RESUME_TUNABLE = (
    "trainer.precision",
    "trainer.channels_last",
    "trainer.compile",
    "trainer.cuda_graphs",
    "dataset.pipeline",
)


def _flatten(d: Any, prefix: str = "") -> dict[str, Any]:
    if not isinstance(d, dict):
        return {prefix: d}
    out: dict[str, Any] = {}
    for k, v in d.items():
        out.update(_flatten(v, f"{prefix}.{k}" if prefix else str(k)))
    return out


def _overridable(key: str) -> bool:
    return any(key == k or key.startswith(k + ".") for k in RESUME_OVERRIDABLE)


def _command_line_overrides() -> list[str]:
    from hydra.core.hydra_config import HydraConfig

    if not HydraConfig.initialized():
        return []
    return list(HydraConfig.get().overrides.task)


def resume_config(cfg: DictConfig, state: dict[str, Any]) -> DictConfig:
    """The checkpoint's config, with epochs, logger, paths (and device/workers) from this run.

    Any other key or group option given on the command line must agree with the checkpoint, so a
    resumed run never silently trains something other than what was started.
    """
    saved, saved_choices = state["config"], state.get("choices", {})
    flat_now, flat_saved = _flatten(to_container(cfg)), _flatten(saved)
    choices_now = hydra_choices()
    conflicts, tuned = [], []
    for override in _command_line_overrides():
        key = override.split("=", 1)[0].lstrip("+~")
        if key in RESUME_TUNABLE:
            tuned.append(key)
            continue
        if _overridable(key):
            continue
        if key in choices_now:  # a group option such as dataset=synthetic
            if saved_choices.get(key) != choices_now[key]:
                conflicts.append(f"{key}: {saved_choices.get(key)} -> {choices_now[key]}")
            continue
        for k in sorted(set(flat_now) | set(flat_saved)):
            if (k == key or k.startswith(key + ".")) and flat_now.get(k) != flat_saved.get(k):
                conflicts.append(f"{k}: {flat_saved.get(k)} -> {flat_now.get(k)}")
    if conflicts:
        raise UserError(
            f"resuming from {cfg.ckpt_path} takes its config from the checkpoint, but the command "
            f"line changes {', '.join(conflicts)}. Only trainer.epochs, trainer.device, logger.*, "
            "paths.* and the speed settings (trainer.precision, channels_last, compile, "
            "cuda_graphs, dataset.pipeline) may change on resume; start a new run otherwise"
        )
    merged = OmegaConf.create(saved)
    for key in RESUME_OVERRIDABLE:
        if key in ("task", "ckpt_path", "eval") or "." in key:
            OmegaConf.update(merged, key, OmegaConf.select(cfg, key), force_add=True)
        else:
            merged[key] = cfg[key]
    for key in tuned:
        OmegaConf.update(merged, key, OmegaConf.select(cfg, key), force_add=True)
    return merged


def train(cfg: DictConfig) -> dict[str, Any]:
    """Train (or resume) one run and return its summary."""
    output_dir = Path(str(cfg.paths.output_dir))
    output_dir.mkdir(parents=True, exist_ok=True)
    state = None
    if cfg.ckpt_path:
        state = load_checkpoint(cfg.ckpt_path)
        cfg = resume_config(cfg, state)
        log.info("resuming %s after epoch %d", cfg.ckpt_path, state["epoch"])
    trainer = Trainer(cfg, output_dir, state)
    tracker = build_tracker(cfg, output_dir, run_id=trainer.run_id)
    trainer.run_id = tracker.run_id
    try:
        summary = trainer.fit(tracker)
    except BaseException:
        tracker.finish(exit_code=1)  # the next job of a multirun starts with no open run
        raise
    tracker.finish(summary, trainer)
    s = summary
    log.info(
        "test/acc %.4f (mean per class %.4f) at epoch %d selected on %s; best %.4f, last %.4f",
        s["test/acc"],
        s["test/mean_class_acc"],
        s["selected_epoch"],
        s["selected_on"],
        s["test/acc_best"],
        s["test/acc_last"],
    )
    if cfg.scn.enabled:
        log.info(
            "relabels %d; noisy train labels %d -> %d (fixed %d, clean labels broken %d)",
            s["scn/relabeled_total"],
            s["scn/noisy_labels_initial"],
            s["scn/noisy_labels_final"],
            s["scn/noisy_labels_fixed"],
            s["scn/clean_labels_broken"],
        )
    log.info("outputs in %s", output_dir)
    return summary


def evaluate(cfg: DictConfig) -> dict[str, Any]:
    """Re-evaluate a checkpoint and return its report."""
    tracker = build_tracker(cfg, Path(str(cfg.paths.output_dir)), job_type="eval")
    try:
        report = evaluate_checkpoint(cfg)
    except BaseException:
        tracker.finish(exit_code=1)
        raise
    tracker.finish(report)
    split = report["split"]
    line = f"{split}/acc %.4f, mean per class %.4f on %d images"
    args = [report[f"{split}/acc"], report[f"{split}/mean_class_acc"], report["images"]]
    if "hflip" in report:
        line += "; with flip TTA %.4f"
        args.append(report["hflip"]["acc"])
    log.info(line, *args)
    log.info("outputs in %s", cfg.paths.output_dir)
    return report


TASKS = {"train": train, "eval": evaluate}


def main(cfg: DictConfig) -> float:
    """Run `cfg.task` and return `cfg.optimized_metric` from its summary for sweepers."""
    if cfg.task not in TASKS:
        raise UserError(f"task={cfg.task!r}; available: {', '.join(TASKS)}")
    try:
        summary = TASKS[cfg.task](cfg)
    finally:
        release_job_resources()
    if cfg.optimized_metric not in summary:
        raise UserError(
            f"optimized_metric={cfg.optimized_metric!r} is not in the summary; "
            f"choose one of {', '.join(k for k, v in summary.items() if isinstance(v, float))}"
        )
    return float(summary[cfg.optimized_metric])
