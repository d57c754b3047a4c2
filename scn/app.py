"""What `python run.py` does: dispatch on `task`, keep runs clean in multirun, return the metric."""

from __future__ import annotations

import json
import logging
import time
import traceback
from functools import partial
from pathlib import Path
from typing import Any

from hydra.errors import CompactHydraException
from omegaconf import Container, DictConfig, OmegaConf

from scn import sweep
from scn.checkpoints import load_checkpoint, remove_stray_temp_files, resume_file
from scn.config import complete_config, hydra_choices, to_container
from scn.engine.evaluate import evaluate_checkpoint
from scn.engine.guard import Preempted
from scn.engine.pretrain import PretrainTrainer
from scn.engine.trainer import Trainer
from scn.errors import JobFailed, UserError
from scn.inspect import wandb_galleries
from scn.runtime import release_job_resources, restart_reason
from scn.tracking.wandb_run import NullTracker, build_tracker

log = logging.getLogger(__name__)

# keys a resumed run may change, on the command line only: any key not given there keeps the
# checkpoint's value (trainer.epochs included); the speed settings come last
RESUME_OVERRIDABLE = (
    "task",
    "ckpt_path",
    "eval",
    "trainer.epochs",
    "trainer.device",
    "trainer.progress",
    "trainer.checkpoint_every",
    "trainer.checkpoint_steps",
    "trainer.auto_resume",
    "dataset.num_workers",
    "logger",
    "paths",
    "trainer.precision",
    "trainer.channels_last",
    "trainer.compile",
    "trainer.cuda_graphs",
    "dataset.pipeline",
)
# what a user can fix: our own errors and Hydra's config errors (composition, instantiation)
USER_ERRORS = (UserError, CompactHydraException)


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


def resume_config(
    cfg: DictConfig, state: dict[str, Any], ckpt_file: Path | None = None
) -> DictConfig:
    """The checkpoint's config, with the RESUME_OVERRIDABLE keys the command line sets and this
    run's directory; `ckpt_path` becomes `ckpt_file`, the file actually read.

    Any other key or group option given on the command line must agree with the checkpoint, so a
    resumed run never silently trains something other than what was started.
    """
    saved_choices = state.get("choices", {})
    # a checkpoint from before a key: the key's default from conf/, as a fresh run would have it
    merged = complete_config(state["config"], saved_choices)
    saved = OmegaConf.to_container(merged)
    flat_now, flat_saved = _flatten(to_container(cfg)), _flatten(saved)
    choices_now = hydra_choices()
    conflicts, given = [], []
    for override in _command_line_overrides():
        key = override.split("=", 1)[0].lstrip("+~")
        if _overridable(key):
            given.append(key)
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
            f"line changes {', '.join(conflicts)}. Only trainer.epochs, trainer.device, "
            "trainer.checkpoint_every, trainer.auto_resume, logger.*, paths.* and the speed settings (trainer.precision, channels_last, compile, "
            "cuda_graphs, dataset.pipeline) may change on resume; start a new run otherwise"
        )
    for key in ["task", "paths.output_dir", *given]:  # this run's task and directory, always
        value = OmegaConf.select(cfg, key)
        if isinstance(value, Container):
            value = OmegaConf.to_container(value, resolve=True)
        OmegaConf.update(merged, key, value, merge=False, force_add=True)
    merged.ckpt_path = str(ckpt_file or cfg.ckpt_path)
    return merged


def resume_source(cfg: DictConfig, output_dir: Path) -> tuple[Any, str | None]:
    """What this run resumes from (a checkpoint or run directory, or None) and why it resumes from
    its own directory (None otherwise). A restarted run (torchrun restarting its worker group, SLURM
    requeueing the job, or any start with trainer.auto_resume=true: scn.runtime.restart_reason)
    runs the same command in the same directory: it resumes from the newest last.pt it left there,
    or, with none yet, starts over there (from `ckpt_path` when given). Otherwise `ckpt_path`."""
    reason = restart_reason(bool(cfg.trainer.auto_resume))
    if reason is None:
        return cfg.ckpt_path, None
    remove_stray_temp_files(output_dir)  # a write the previous start did not finish
    if (output_dir / "last.pt").is_file():
        return output_dir, reason
    again = f"resuming {cfg.ckpt_path} again" if cfg.ckpt_path else "starting over"
    log.info("%s: no last.pt in %s yet, %s", reason, output_dir, again)
    return cfg.ckpt_path, None


def finished_summary(state: dict[str, Any], cfg: DictConfig, output_dir: Path) -> dict | None:
    """The summary of a run that had already finished when it was started again (a restarted
    multirun goes past its finished jobs), or None while epochs remain."""
    summary = output_dir / "summary.json"
    if state["epoch"] < cfg.trainer.epochs or state.get("partial") or not summary.is_file():
        return None
    return json.loads(summary.read_text())


# the loop each training task runs: a checkpoint resumes with the loop that wrote it
LOOPS: dict[str, type[Trainer]] = {"train": Trainer, "pretrain": PretrainTrainer}


def train(cfg: DictConfig, trainer_class: type[Trainer] = Trainer) -> dict[str, Any]:
    """Train (or resume) one run and return its summary; `trainer_class` is the task's loop."""
    started = time.perf_counter()  # start-up (time/startup_s) counts from here
    output_dir = Path(str(cfg.paths.output_dir))
    output_dir.mkdir(parents=True, exist_ok=True)
    state = None
    source, restarted = resume_source(cfg, output_dir)
    if source:
        ckpt_file = resume_file(source)
        remove_stray_temp_files(ckpt_file.parent)  # a write the previous job did not finish
        state = load_checkpoint(ckpt_file)
        cfg = resume_config(cfg, state, ckpt_file)
        saved_task = state["config"].get("task", "train")
        if saved_task in LOOPS and LOOPS[saved_task] is not trainer_class:
            log.info(
                "%s is a task=%s run: resuming it with that task's loop", ckpt_file, saved_task
            )
            trainer_class, cfg.task = LOOPS[saved_task], saved_task
        inside = state.get("partial")
        where = f"at step {inside['batches']} of epoch {inside['epoch']}" if inside else ""
        where = where or f"after epoch {state['epoch']}"
        log.info("%sresuming %s %s", f"{restarted}: " if restarted else "", ckpt_file, where)
        done = finished_summary(state, cfg, output_dir) if restarted else None
        if done is not None:
            log.info("%s had finished all %d epochs: nothing to do", output_dir, state["epoch"])
            return done
    trainer = trainer_class.for_config(cfg)(cfg, output_dir, state)
    trainer.clock.started_at(started)
    tracker = (  # torchrun: rank 0 logs the run
        build_tracker(
            cfg,
            output_dir,
            run_id=trainer.run_id,
            job_type=trainer.job_type,
            galleries=wandb_galleries,
        )
        if trainer.dist.main
        else NullTracker()
    )
    trainer.run_id = tracker.run_id
    try:
        summary = trainer.fit(tracker)
    except BaseException as e:  # the next job of a multirun starts with no open run
        tracker.finish(exit_code=1, error=describe(e), preempted=isinstance(e, Preempted))
        raise
    tracker.finish(summary, trainer)
    trainer.log_summary(summary)
    log.info("outputs in %s", output_dir)
    return summary


def evaluate(cfg: DictConfig) -> dict[str, Any]:
    """Re-evaluate a checkpoint and return its report."""
    tracker = build_tracker(cfg, Path(str(cfg.paths.output_dir)), job_type="eval")
    try:
        report = evaluate_checkpoint(cfg)
    except BaseException as e:
        tracker.finish(exit_code=1, error=describe(e))
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


# what run.py does for each `task`: the training tasks are their loops
TASKS = {
    "eval": evaluate,
    **{name: partial(train, trainer_class=loop) for name, loop in LOOPS.items()},
}
DEFAULT_METRIC = "test/acc"  # conf/config.yaml's optimized_metric


def main(cfg: DictConfig) -> float:
    """Run `cfg.task` and return `cfg.optimized_metric` from its summary for sweepers."""
    if cfg.task not in TASKS:
        raise UserError(f"task={cfg.task!r}; available: {', '.join(TASKS)}")
    missing = _missing_keys(cfg)
    if missing:  # `???` left by an abstract base (dataset=_base) or a schema's required key
        raise UserError(
            f"{', '.join(missing)} must be set: choose a group option that sets them "
            "(e.g. dataset=rafdb, backbone=resnet18) or give them on the command line"
        )
    try:
        summary = TASKS[cfg.task](cfg)
    finally:
        release_job_resources()
    metric = cfg.optimized_metric
    if metric == DEFAULT_METRIC and metric not in summary:  # a task selecting on another split
        # pretraining: verify/acc; distillation: distill/cos
        metric = summary.get("selected_metric") or f"{summary.get('selected_on')}/acc"
    if metric not in summary:
        raise UserError(
            f"optimized_metric={metric!r} is not in the summary; "
            f"choose one of {', '.join(k for k, v in summary.items() if isinstance(v, float))}"
        )
    return float(summary[metric])


def _missing_keys(cfg: DictConfig) -> list[str]:
    """The run's `???` keys, found without resolving interpolations (Hydra's own node left out:
    its job keys are filled later)."""

    def walk(node: Container, prefix: str) -> list[str]:
        found = []
        for key in node.keys() if isinstance(node, DictConfig) else range(len(node)):
            if not prefix and key == "hydra":
                continue
            child = node._get_node(key)
            if isinstance(child, Container) and not child._is_none() and not child._is_missing():
                found += walk(child, f"{prefix}{key}.")
            elif child._is_missing():
                found.append(f"{prefix}{key}")
        return found

    return sorted(walk(cfg, ""))


def describe(e: BaseException) -> str:
    """A failure in one line's worth: the message of errors a user can fix, else type and text."""
    return str(e) if isinstance(e, (*USER_ERRORS, Preempted)) else f"{type(e).__name__}: {e}"


def run_job(cfg: DictConfig) -> float | sweep.FailedJob:
    """What run.py calls for each job: `main`, with failures recorded. A single run (or a
    multirun with continue_on_error=false) ends the process through JobFailed, printed once by
    scn.cli.hydra_cli; a failed multirun job is recorded in its directory and the sweep goes on."""
    job = sweep.current_job()
    if job is not None:
        sweep.clear_failure(job)
    try:
        return main(cfg)
    except Preempted as e:  # the machine is going away: stop a multirun too
        _write_to_log_files(str(e))
        raise JobFailed(str(e), e.exit_code) from e
    except Exception as e:
        user = isinstance(e, USER_ERRORS)
        text = str(e) if user else "".join(traceback.format_exception(e))
        if job is not None:
            sweep.record_failure(job, text)
            if cfg.continue_on_error:
                return sweep.FailedJob(job.num, sweep.first_line(text))
        else:
            _write_to_log_files(text)
        raise JobFailed(text, 2 if user else 1) from e


def _write_to_log_files(text: str) -> None:
    """The run's log file records the error; the terminal gets it once, from hydra_cli."""
    record = log.makeRecord(log.name, logging.ERROR, __file__, 0, text, None, None)
    for handler in logging.getLogger().handlers:
        if isinstance(handler, logging.FileHandler):
            handler.handle(record)
