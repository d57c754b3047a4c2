"""The training loop: the method's steps (scn.methods), label correction for methods that relabel,
per-epoch evaluation, selection, checkpoints and resume. Per-sample state (labels) is indexed by
dataset index and every metric is built from sums and counts, so the loop splits across
data-parallel processes."""

from __future__ import annotations

import copy
import itertools
import logging
import time
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig
from tqdm import tqdm
from tqdm.contrib.logging import logging_redirect_tqdm

from scn.config import cache_dir, hydra_choices, instantiate, to_container
from scn.data.datasets import Split, load_dataset
from scn.data.pipeline import build_pipeline
from scn.engine.accel import resolve_accel
from scn.engine.checkpoint import CheckpointWriter, checkpoint_every, host_copy, last_due
from scn.engine.evaluate import metrics_from_confusion, predict_confusion
from scn.engine.guard import Preempted, StopSignals, check_finite
from scn.engine.noise_detect import LOSS_ALIASES
from scn.engine.relabel import relabel_batch
from scn.engine.state import (
    EpochProgress,
    epoch_seed,
    rng_states,
    seed_everything,
    set_rng_states,
    step_seed,
)
from scn.engine.step import StepResult, train_step
from scn.engine.summary import log_train_summary, relabel_rows, train_summary
from scn.engine.timing import RunClock, preload_images
from scn.errors import UserError
from scn.methods import build_method
from scn.methods.base import Method, StepContext
from scn.models.backbones import create_backbone
from scn.models.weights import initial_weights
from scn.runtime import distributed, resolve_device
from scn.tracking.local import relabel_csv, write_json, write_metrics, write_text_atomic

log = logging.getLogger(__name__)

CHECKPOINT_CHOICES = ("none", "last", "best_and_last")
BASE_SUMS = ("n", "loss", "correct", "relabeled", "fixed", "broken")


class Trainer:
    """Owns the model, optimiser, scheduler and the train-label tensor that relabeling edits."""

    def __init__(self, cfg: DictConfig, output_dir: Path, state: dict[str, Any] | None = None):
        """`state`: a checkpoint to resume from (it replaces any backbone.weights and keeps the
        preprocessing the run started with)."""
        if cfg.trainer.checkpoints not in CHECKPOINT_CHOICES:
            raise UserError(
                f"trainer.checkpoints={cfg.trainer.checkpoints!r}; use one of {CHECKPOINT_CHOICES}"
            )
        self.cfg = cfg
        self.output_dir = Path(output_dir)
        self.cache_dir = cache_dir(cfg)  # shared caches
        self.dist = distributed.current()  # rank and world under torchrun; world 1 otherwise
        self.device = resolve_device(distributed.device_for(cfg.trainer.device, self.dist))
        distributed.check_batch(cfg.trainer.batch_size, self.dist)
        self.clock = RunClock(self.device)  # start-up's parts, then each epoch's phases
        self.writer = CheckpointWriter()  # checkpoints are written off the training loop
        self.checkpoint_every = checkpoint_every(cfg.trainer)
        self.progress = bool(cfg.trainer.progress)
        seed_everything(cfg.trainer.seed)

        self.data = self.load_data()
        self.clock.startup_lap("data")
        self.class_names = self.data.class_names
        self.num_classes = len(self.class_names)
        backbone = create_backbone(cfg.backbone)
        self.method = self.create_method()
        self.model = self.method.build_model(backbone, self.num_classes)
        # the epoch's device sums: the loop's, each loss term's, the method's statistics
        terms = self.method.term_names()
        self.sum_keys = (*BASE_SUMS, *terms, *self.method.stat_keys)
        # a resumed run keeps its preprocessing; else backbone.weights' implied one, or the config's
        saved = state["preprocessing"] if state is not None else None
        self.preprocessing = initial_weights(self.model, backbone, cfg, saved)
        log.info("preprocessing: %s", self.preprocessing)
        self.accel = resolve_accel(cfg.trainer, self.device, cfg.trainer.batch_size // self.dist.world,
                                   self.dist.enabled)  # fmt: skip
        log.info("model step: %s", self.accel.describe())
        self.memory_format = self.accel.memory_format
        self.model.to(self.device, memory_format=self.memory_format)
        # self.model keeps the state_dict keys; compiled code is cached under paths.cache_dir
        self.forward = self.accel.compiled(
            distributed.parallel(self.model, self.dist, self.device, cfg.trainer.get("sync_bn")),
            self.cache_dir,
        )
        self.scaler = self.accel.grad_scaler()
        groups = self.method.param_groups(self.model, float(cfg.optimizer.lr))
        self.optimizer = instantiate(cfg.optimizer)(params=groups)
        self.scheduler = instantiate(cfg.scheduler)(optimizer=self.optimizer)
        self.clock.startup_lap("model")

        train = self.data.train
        # the labels in use: one tensor indexed by dataset position, edited by relabeling
        # (on the training device, so a step looks labels up and relabels without a host sync)
        self.labels = torch.as_tensor(train.labels, dtype=torch.long).to(self.device)
        self.initial_labels = self.labels.clone()
        self.clean_labels = torch.as_tensor(train.clean_labels, dtype=torch.long).to(self.device)
        self.epoch = 0  # last completed epoch
        self.history: list[dict[str, Any]] = []
        self.best: dict[str, Any] | None = None  # {"epoch", "score"}
        self.run_id: str | None = None
        self.relabel_log: list[list[int]] = []  # [dataset index, old label, new label, epoch]
        self.epoch_alphas = torch.zeros(0)  # this epoch's importance weights (SCN), for histograms
        self.choices = hydra_choices()  # group options, so a resume can check them
        self.stop = StopSignals()  # entered by fit(): SIGTERM / SIGUSR1 end the run after a step
        self.resume_at: EpochProgress | None = None  # an epoch a stop signal interrupted
        self.last_good = str(cfg.ckpt_path) if state is not None else None  # newest last.pt

        pre = self.preprocessing
        self.pipeline = build_pipeline(cfg.dataset, self.data, pre, self.device,
                                       memory_format=self.memory_format, cache_dir=self.cache_dir,
                                       progress=self.progress, dist=self.dist)  # fmt: skip
        preload_images(self.pipeline, [train])  # decoded now: start-up's data time holds it
        self.clock.startup_lap("data")
        for note in self.data.notes:
            log.info(note)
        val = len(self.data.val) if self.data.val else 0
        log.info(f"{cfg.dataset.name}: {len(train)} train / {val} val / {len(self.data.test)} test "
                 f"images from {self.data.root}; {cfg.backbone.name} at {pre.input_size} px on "
                 f"{self.device} ({self.pipeline.kind} pipeline)")  # fmt: skip
        if state is not None:
            self.load_state_dict(state)
        self.clock.startup_lap("model")

    # ------------------------------------------------- what a task changes
    # A task (pretraining, ...) subclasses Trainer and overrides these; the loop stays one.
    selection_metric = "acc"  # `<split>/<metric>` picks the best epoch
    job_type = "train"  # the W&B job type

    def load_data(self):
        return load_dataset(self.cfg.dataset, self.cache_dir)

    @classmethod
    def for_config(cls, cfg: DictConfig) -> type[Trainer]:
        """The loop class that runs `cfg` (a task may have variants)."""
        return cls

    def create_method(self) -> Method:
        """The method the loop composes: `method=` (a task may train with its own)."""
        return build_method(self.cfg)

    def selected_on(self) -> str:
        """The split whose `selection_metric` selects the epoch."""
        return "val" if self.data.val is not None else "test"

    def evaluate_epoch(self) -> dict[str, Any]:
        """The per-epoch evaluation row."""
        row = self.evaluate(self.data.val, "val") if self.data.val is not None else {}
        row.update(self.evaluate(self.data.test, "test"))
        return row

    def record_samples(self, p: EpochProgress, idx, y, logits, score) -> None:
        """Per-sample loss and method score for the noise-detection figures."""
        stamp = p.batches * 65536 + self.dist.rank  # the latest record wins a merge (any world)
        p.samples.record(idx, y, self.clean_labels, logits, score, stamp)

    def on_selected(self, epoch: int) -> None:
        """The epoch just became the selected one (a task may ship what it holds now)."""

    def write_run_files(self) -> None:
        """Files beside summary.json at the end of the run."""
        write_text_atomic(self.output_dir / "relabels.csv", relabel_csv(self.relabel_rows()))

    def epoch_line(self, row: dict[str, Any]) -> str:
        val = f"val/acc {row['val/acc']:.4f}  " if "val/acc" in row else ""
        return (
            f"loss {row['train/loss']:.4f}  train/acc {row['train/acc']:.4f}  {val}"
            f"test/acc {row['test/acc']:.4f}  relabeled {row.get('scn/relabeled', '-')}"
        )

    # ---------------------------------------------------------------- state
    def state_dict(self) -> dict[str, Any]:
        return {
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "scaler": self.scaler.state_dict() if self.scaler is not None else None,
            "labels": self.labels.cpu().clone(),
            "initial_labels": self.initial_labels.cpu().clone(),
            "epoch": self.epoch,
            "best": self.best,
            "history": self.history,
            "rng": rng_states(),
            "class_names": self.class_names,
            "preprocessing": self.preprocessing.to_dict(),
            "config": to_container(self.cfg),
            "choices": self.choices,
            "wandb_run_id": self.run_id,
            "relabel_log": self.relabel_log,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if len(state["labels"]) != len(self.labels):
            raise UserError(
                f"checkpoint holds {len(state['labels'])} train labels but the dataset has "
                f"{len(self.labels)} train images; resume on the same data"
            )
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        if self.scaler is not None and state.get("scaler"):
            self.scaler.load_state_dict(state["scaler"])
        self.labels = state["labels"].to(self.device).clone()
        self.initial_labels = state["initial_labels"].to(self.device).clone()
        self.epoch = int(state["epoch"])
        self.best = state["best"]
        self.history = list(state["history"])
        self.run_id = state.get("wandb_run_id")
        self.relabel_log = [list(e) for e in state.get("relabel_log", [])]
        self.choices = state.get("choices", {})
        if state.get("partial"):
            self.resume_at = EpochProgress.from_state(state["partial"], self.device, self.sum_keys,
                                                      self.dist.main)  # fmt: skip
        set_rng_states(state["rng"])

    def save(self, name: str, partial: EpochProgress | None = None) -> None:
        """Copy the state to host memory and queue it for the background writer (`fit` waits for
        the write before it returns or raises)."""
        start = time.perf_counter()
        state = self.state_dict()
        if partial is not None:  # the position inside an interrupted epoch
            state["partial"] = partial.state_dict()
        if self.dist.main:  # torchrun: one process writes, the others hold the same state
            self.writer.submit(self.output_dir / name, host_copy(state))
        self.clock.add("checkpoint", time.perf_counter() - start)
        if name == "last.pt":
            self.last_good = str(self.output_dir / name)

    # ---------------------------------------------------------------- loops
    def train_epoch(self, epoch: int) -> dict[str, Any] | None:
        """One pass over train. Sums and counts accumulate on the device and are read once at the
        end, so the host queues work ahead of the device instead of waiting on it every step.
        Returns None when a stop signal ended it early, with its progress in `self.resume_at`."""
        cfg, method = self.cfg, self.method
        p = self.resume_at if self.resume_at and self.resume_at.epoch == epoch else None
        p, self.resume_at = p or EpochProgress.start(epoch, self.device, self.sum_keys), None
        seed = epoch_seed(cfg.trainer.seed, epoch)
        batches = self.pipeline.batches(self.data.train, True, cfg.trainer.batch_size, seed)
        # resuming inside the epoch: the batches already trained are made again and dropped, so
        # the rest keep the whole epoch's order and augmentation streams (bitwise on CPU)
        todo = itertools.islice(batches, p.batches, None)
        lr = self.optimizer.param_groups[0]["lr"]
        sums, alphas, changes = p.sums, p.alphas, p.changes
        every = int(cfg.trainer.get("checkpoint_steps") or 0)
        self.model.train()
        bar = tqdm(todo, total=len(batches), initial=p.batches, desc=f"epoch {epoch}",
                   leave=False, disable=not self.progress)  # fmt: skip
        for x, idx in bar:
            global_n = batches.global_sizes[p.batches]  # this process holds its share of it
            idx = idx.to(self.device, non_blocking=True)
            y = self.labels[idx]
            ctx = StepContext(self.dist, global_n, epoch, step_seed(seed, p.batches), self.device,
                              idx)  # fmt: skip
            r = self.step(x, y, ctx)
            out, n = r.out, len(idx)
            logits = out.logits.detach()
            sums.add("n", n)
            sums.add("loss", r.loss_sum.double())
            for name, value in r.term_sums.items():
                sums.add(name, value.double())
            sums.add("correct", method.correct(out, y, ctx))
            if method.label_audit:  # before relabeling
                self.record_samples(p, idx, y, logits, method.noise_score(out))
            method.add_stats(sums, out, ctx)
            new = method.relabel(out, y, ctx)
            if new is not None:
                changes.append(relabel_batch(self.labels, self.clean_labels, idx, new, sums,
                                             self.dist, global_n))  # fmt: skip
            if out.alpha is not None:  # a copy: compiled graphs may reuse their output buffers
                alphas.append(out.alpha.detach().float().clone())
            p.batches += 1
            # a Python attribute set by the signal handler (no sync); under torchrun the processes
            # agree over Gloo on the host, so all stop after the same step
            if self.dist.any(bool(self.stop.received)):
                self.resume_at = p
                return None
            if every and p.batches % every == 0 and p.batches < len(batches):
                self._save_partial(p, epoch)  # a position to resume from inside the epoch
        p.reduce(self.dist, len(self.labels), self.dist.any(bool(alphas)))  # torchrun: global
        return self._epoch_row(epoch, p, lr)

    def _epoch_row(self, epoch: int, p: EpochProgress, lr: float) -> dict[str, Any]:
        """The epoch's metrics from its sums, and its relabels into the audit log."""
        method = self.method
        self.epoch_alphas = torch.cat(p.alphas).cpu() if p.alphas else torch.zeros(0)
        if p.changes:
            pos, old, new, keep = torch.cat(p.changes, 1).cpu()
            changed = (old != new) & keep.bool()
            self.relabel_log += [
                [i, o, n, epoch]
                for i, o, n in zip(*(t[changed].tolist() for t in (pos, old, new)), strict=True)
            ]
        totals = p.sums.read()
        n = max(totals["n"], 1)
        row: dict[str, Any] = {"epoch": epoch, "train/loss": totals["loss"] / n}
        row.update({f"train/{k}": totals[k] / n for k in method.term_names()})
        row[method.acc_key] = totals["correct"] / n
        row["train/lr"] = lr
        if method.corrects_labels:
            row["scn/relabeled"] = int(totals["relabeled"])
            row["scn/relabel_fixed"] = int(totals["fixed"])
            row["scn/relabel_broken"] = int(totals["broken"])
        if method.label_audit:
            row["scn/noisy_labels"] = int((self.labels != self.clean_labels).sum())
            row.update(p.samples.metrics())  # noise/auc, noise/auc_loss, ...
        row.update(method.epoch_row(totals))
        aliases = {**LOSS_ALIASES, **method.metric_aliases()}
        row.update({old: row[new] for new, old in aliases.items() if new in row})
        return row

    def step(self, x: torch.Tensor, y: torch.Tensor, ctx: StepContext) -> StepResult:
        """One optimisation step on this process's share `x`, `y` of a global batch."""
        return train_step(self.forward, self.optimizer, self.accel, self.scaler, self.method, x, y,
                          ctx)  # fmt: skip

    def evaluate(self, split: Split, prefix: str) -> dict[str, Any]:
        cm = predict_confusion(  # eager: compiling eval shapes would cost more than it saves
            self.model,
            self.pipeline.batches(split, False, self.cfg.trainer.eval_batch_size),
            torch.as_tensor(split.labels, dtype=torch.long),
            self.num_classes,
            self.device,
            self.memory_format,
            self.progress,
            desc=prefix,
            autocast=self.accel.autocast,
        )
        self.dist.all_reduce_(cm)  # torchrun: each process counted its part of the split
        return metrics_from_confusion(cm, self.class_names, prefix)

    def fit(self, tracker) -> dict[str, Any]:
        """Train from the epoch after the last completed one to trainer.epochs."""
        cfg = self.cfg
        selected_on = self.selected_on()
        if self.epoch >= cfg.trainer.epochs:
            raise UserError(
                f"the checkpoint already completed epoch {self.epoch}; raise trainer.epochs to go on"
            )
        epochs = range(self.epoch + 1, cfg.trainer.epochs + 1)
        self.clock.watch_first_step(self, self.accel.compile)  # its end ends start-up
        try:
            # log lines print above the bars instead of through them
            with logging_redirect_tqdm(), self.stop:
                for epoch in tqdm(epochs, desc="epochs", disable=not self.progress):
                    self._fit_epoch(epoch, tracker, selected_on)
        except BaseException:
            self.writer.wait(raise_error=False)  # no write is lost; the first error is raised
            raise
        final_wait = self.writer.wait()
        summary = self.summary(selected_on)
        summary.update(self.clock.totals(self.history, self.writer.write_s, final_wait))
        if self.dist.main:  # torchrun: rank 0 writes the run's files
            write_json(self.output_dir / "summary.json", summary)
            self.write_run_files()
        return summary

    def _fit_epoch(self, epoch: int, tracker, selected_on: str) -> None:
        """Train one epoch, evaluate, select, record and checkpoint."""
        cfg = self.cfg
        keep, clock = cfg.trainer.checkpoints, self.clock
        clock.begin_epoch()
        start = time.perf_counter()
        row = self.train_epoch(epoch)
        clock.phase("train", start)
        if row is None:  # a stop signal: keep the position inside the epoch, then stop
            partial = self._save_partial(self.resume_at, epoch)
            self.writer.wait()  # on disk before the message names it
            raise Preempted(self.stop.name, f"after step {partial.batches} of epoch {epoch}",
                            self.last_good, self.output_dir)  # fmt: skip
        self._check_finite(epoch, row["train/loss"])
        start = time.perf_counter()
        row.update(self.evaluate_epoch())
        clock.phase("eval", start)
        self.scheduler.step()
        self.epoch = epoch
        self.history.append(row)
        score = row[f"{selected_on}/{self.selection_metric}"]
        improved = self.best is None or score > self.best["score"]
        if improved:
            self.best = {"epoch": epoch, "score": score}
            self.on_selected(epoch)
            if keep == "best_and_last":
                self.save("best.pt")
        # a stop signal after the epoch's last step (evaluation, checkpoints): the last epoch finishes
        stopping = self.dist.any(bool(self.stop.received)) and epoch < cfg.trainer.epochs
        due = last_due(epoch, self.checkpoint_every, cfg.trainer.epochs)
        if (keep in ("last", "best_and_last") and due) or stopping:
            self.save("last.pt")
        row.update(clock.end_epoch(self.writer.write_s))  # time/* (the checkpoints hold it later)
        if self.dist.main:
            write_metrics(self.output_dir / "metrics.jsonl", self.history)
        tracker.log(row, alphas=self.epoch_alphas)
        log.info("epoch %d/%d  %s  (%.1fs)", epoch, cfg.trainer.epochs, self.epoch_line(row),
                 row["time/epoch_s"])  # fmt: skip
        if stopping:
            self.writer.wait()
            raise Preempted(self.stop.name, f"after epoch {epoch}", self.last_good, self.output_dir)

    def _save_partial(self, p: EpochProgress, epoch: int) -> EpochProgress:
        """last.pt with the position inside the epoch (a stop signal, or every
        trainer.checkpoint_steps steps); under torchrun the saved sums are the processes' total,
        taken from a copy so the epoch goes on with each process's own."""
        snap = copy.deepcopy(p) if self.dist.enabled else p
        snap.reduce(self.dist, len(self.labels), self.dist.any(bool(snap.alphas)))
        self._check_finite(epoch, snap.sums.read()["loss"])
        self.save("last.pt", snap)
        return snap

    def _check_finite(self, epoch: int, loss: float) -> None:
        check_finite(self.model, epoch, loss, self.last_good, self.optimizer.param_groups[0]["lr"])

    def summary(self, selected_on: str) -> dict[str, Any]:
        return train_summary(self, selected_on)

    def relabel_rows(self) -> list[dict[str, Any]]:
        """The relabel audit: which sample changed label when, against the clean reference."""
        return relabel_rows(self.relabel_log, self.class_names, self.data.train.names,
                            self.clean_labels.tolist())  # fmt: skip

    def log_summary(self, summary: dict[str, Any]) -> None:
        log_train_summary(summary, self.method.corrects_labels)
