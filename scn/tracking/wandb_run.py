"""Weights & Biases: one run per job, nested config, per-epoch metrics, summary at the end."""

from __future__ import annotations

import logging
import netrc
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from omegaconf import DictConfig

from scn.config import hydra_choices, to_container

log = logging.getLogger(__name__)


class NullTracker:
    """logger=none (or mode=disabled): local files only."""

    run_id: str | None = None

    def log(self, row: dict[str, Any], alphas=None) -> None:
        pass

    def finish(
        self,
        summary: dict[str, Any] | None = None,
        trainer=None,
        exit_code: int = 0,
        error: str | None = None,
        preempted: bool = False,
    ) -> None:
        pass


def has_credentials() -> bool:
    """An API key in the environment or in ~/.netrc for the W&B host (what `wandb login` writes)."""
    if os.environ.get("WANDB_API_KEY"):
        return True
    host = urlparse(os.environ.get("WANDB_BASE_URL", "https://api.wandb.ai")).hostname
    try:
        return netrc.netrc().authenticators(host) is not None
    except (OSError, netrc.NetrcParseError):
        return False


def resolve_mode(mode: str | None) -> str:
    """Explicit mode, else WANDB_MODE, else online with credentials, else offline (never a prompt)."""
    if mode:
        return str(mode)
    if os.environ.get("WANDB_MODE"):
        return os.environ["WANDB_MODE"]
    if has_credentials():
        return "online"
    log.info(
        "W&B: no credentials found, logging offline (`wandb login`, then `wandb sync <run dir>`)"
    )
    return "offline"


def flatten_row(row: dict[str, Any]) -> dict[str, float | int]:
    """Scalars as they are, per-class dicts as `<prefix>/class_acc/<name>`; matrices are left out."""
    flat: dict[str, float | int] = {}
    for key, value in row.items():
        if isinstance(value, dict):
            flat.update({f"{key}/{k}": v for k, v in value.items() if v is not None})
        elif isinstance(value, (int, float)) and not isinstance(value, bool):
            flat[key] = value
    return flat


class WandbTracker:
    def __init__(
        self,
        cfg: DictConfig,
        output_dir: Path,
        group: str | None,
        name: str,
        choices: dict[str, str],
        mode: str,
        run_id: str | None = None,
        job_type: str = "train",
        tags: list[str] | None = None,
        galleries: Callable[[Path, str], dict] | None = None,
    ):
        """`galleries(run_dir, ckpt)`: the image galleries to log at the end (logger.log_images),
        given by the caller (scn.inspect draws them), so tracking needs no tool above it."""
        import wandb

        config = to_container(cfg)
        config["choices"] = choices
        kwargs: dict[str, Any] = dict(
            project=cfg.logger.project,
            entity=cfg.logger.entity,
            group=cfg.logger.group or group,
            name=cfg.logger.name or name,
            tags=[*cfg.logger.tags, *(tags or [])],
            job_type=job_type,
            dir=str(output_dir),
            config=config,
            mode=mode,
            id=run_id,
            resume="allow" if run_id else None,
            settings=wandb.Settings(console="off", init_timeout=60),
        )
        try:
            self.run = wandb.init(**kwargs)
        except Exception as e:  # no network, service down: never lose the training run for it
            if mode != "online":
                raise
            log.warning("W&B online init failed (%s); logging offline, `wandb sync` later", e)
            self.run = wandb.init(**{**kwargs, "mode": "offline"})
        self.run_id = self.run.id
        self.log_model = bool(cfg.logger.log_model)
        self.log_images = bool(cfg.logger.log_images) and galleries is not None
        self.galleries = galleries
        self.output_dir = output_dir
        self.run.define_metric("epoch")
        self.run.define_metric("*", step_metric="epoch")
        for key in ("val/acc", "val/mean_class_acc", "test/acc", "test/mean_class_acc"):
            self.run.define_metric(key, step_metric="epoch", summary="max")
        log.info("W&B run %s (%s) in %s", self.run.name, mode, output_dir)

    def log(self, row: dict[str, Any], alphas=None) -> None:
        import wandb

        flat: dict[str, Any] = flatten_row(row)
        if alphas is not None and len(alphas):
            flat["scn/alpha_hist"] = wandb.Histogram(alphas.numpy(), num_bins=50)
        self.run.log(flat)

    def finish(
        self,
        summary: dict[str, Any] | None = None,
        trainer=None,
        exit_code: int = 0,
        error: str | None = None,
        preempted: bool = False,
    ) -> None:
        """Summary values, end-of-run tables and the model artifact; then close the run. A failed
        run keeps its message in the summary (`error`) and is marked failed (or preempting)."""
        if error:
            self.run.summary["error"] = error[:2000]
        if preempted:
            self.run.mark_preempting()
        if summary:
            for key, value in flatten_row(summary).items():
                self.run.summary[key] = value
            for key in ("selected_on", "split"):
                if key in summary:
                    self.run.summary[key] = summary[key]
        # confusion tables and galleries are for expression classifiers (not task=pretrain)
        expressions = getattr(trainer, "job_type", "train") == "train"
        if trainer is not None and trainer.history and expressions:
            self._log_tables(trainer)
            if self.log_images and exit_code == 0:  # scn.inspect's galleries, once per run
                self._log_galleries(trainer.history[-1]["epoch"])
        best = self.output_dir / "best.pt"
        if self.log_model and exit_code == 0 and best.is_file():
            import wandb

            artifact = wandb.Artifact(f"model-{self.run.id}", type="model", metadata=summary or {})
            artifact.add_file(str(best))
            self.run.log_artifact(artifact, aliases=["best"])
        self.run.finish(exit_code=exit_code)

    def _log_tables(self, trainer) -> None:
        """Confusion matrices and per-class accuracy at the selected and last epochs, and the
        relabel audit: heavy media once per run, not per epoch."""
        import wandb

        names = trainer.class_names
        selected = trainer.history[trainer.best["epoch"] - 1]
        last = trainer.history[-1]
        tables: dict[str, Any] = {}
        for tag, row in (("selected", selected), ("last", last)):
            cm = wandb.Table(columns=["Actual", "Predicted", "nPredictions"])
            for i, counts in enumerate(row["test/confusion"]):
                for j, c in enumerate(counts):
                    cm.add_data(names[i], names[j], c)
            tables[f"test/confusion_{tag}"] = wandb.plot_table(
                "wandb/confusion_matrix/v1", cm,
                {"Actual": "Actual", "Predicted": "Predicted", "nPredictions": "nPredictions"},
                {"title": f"test confusion, {tag} epoch {row['epoch']}"},
            )  # fmt: skip
        per_class = wandb.Table(columns=["class", "acc_selected", "acc_last"])
        for n in names:
            per_class.add_data(n, selected["test/class_acc"][n], last["test/class_acc"][n])
        tables["test/per_class"] = per_class
        audit = wandb.Table(columns=["sample", "old", "new", "epoch", "clean"])
        for r in trainer.relabel_rows():
            audit.add_data(r["sample"], r["old"], r["new"], r["epoch"], r["clean"])
        tables["scn/relabels"] = audit
        self.run.log({"epoch": last["epoch"], **tables})

    def _log_galleries(self, epoch: int) -> None:
        ckpt = next((c for c in ("best", "last") if (self.output_dir / f"{c}.pt").is_file()), None)
        if ckpt is None:
            log.warning("logger.log_images: no best.pt or last.pt to draw galleries from "
                        "(trainer.checkpoints=none); none logged")  # fmt: skip
            return
        self.run.log({"epoch": epoch, **self.galleries(self.output_dir, ckpt)})


def build_tracker(
    cfg: DictConfig,
    output_dir: Path,
    run_id: str | None = None,
    job_type: str = "train",
    galleries: Callable[[Path, str], dict] | None = None,
):
    """The tracker for `cfg.logger`, grouped and named from Hydra's multirun state when present."""
    if cfg.logger.backend == "none":
        return NullTracker()
    if cfg.logger.backend != "wandb":
        raise ValueError(f"logger.backend={cfg.logger.backend!r}: expected wandb or none")
    mode = resolve_mode(cfg.logger.mode)
    if mode == "disabled":
        return NullTracker()
    group, name, tags = None, "default", []
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    if HydraConfig.initialized():
        hc = HydraConfig.get()
        name = hc.job.override_dirname or "default"
        # the configuration as tags, so the dashboard can group by it and average the seeds
        tags = [t[:64] for t in hc.job.override_dirname.split(",") if t]
        if hc.mode == RunMode.MULTIRUN:
            group = Path(hc.sweep.dir).name
    return WandbTracker(cfg, output_dir, group, name, hydra_choices(), mode, run_id, job_type, tags,
                        galleries)  # fmt: skip
