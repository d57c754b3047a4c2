"""Weights & Biases: one run per job, nested config, per-epoch metrics, summary at the end."""

from __future__ import annotations

import logging
import netrc
import os
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from omegaconf import DictConfig

from scn.config import hydra_choices, to_container

log = logging.getLogger(__name__)


class NullTracker:
    """logger=none (or mode=disabled): local files only."""

    run_id: str | None = None

    def log(self, row: dict[str, Any]) -> None:
        pass

    def finish(self, summary: dict[str, Any] | None = None, exit_code: int = 0) -> None:
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
    ):
        import wandb

        config = to_container(cfg)
        config["choices"] = choices
        kwargs: dict[str, Any] = dict(
            project=cfg.logger.project,
            entity=cfg.logger.entity,
            group=cfg.logger.group or group,
            name=cfg.logger.name or name,
            tags=list(cfg.logger.tags),
            job_type="train",
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
        self.run.define_metric("epoch")
        self.run.define_metric("*", step_metric="epoch")
        for key in ("val/acc", "val/mean_class_acc", "test/acc", "test/mean_class_acc"):
            self.run.define_metric(key, step_metric="epoch", summary="max")
        log.info("W&B run %s (%s) in %s", self.run.name, mode, output_dir)

    def log(self, row: dict[str, Any]) -> None:
        self.run.log(flatten_row(row))

    def finish(self, summary: dict[str, Any] | None = None, exit_code: int = 0) -> None:
        if summary:
            for key, value in flatten_row(summary).items():
                self.run.summary[key] = value
            self.run.summary["selected_on"] = summary.get("selected_on")
        self.run.finish(exit_code=exit_code)


def build_tracker(cfg: DictConfig, output_dir: Path, run_id: str | None = None):
    """The tracker for `cfg.logger`, grouped and named from Hydra's multirun state when present."""
    if cfg.logger.backend == "none":
        return NullTracker()
    if cfg.logger.backend != "wandb":
        raise ValueError(f"logger.backend={cfg.logger.backend!r}: expected wandb or none")
    mode = resolve_mode(cfg.logger.mode)
    if mode == "disabled":
        return NullTracker()
    group, name = None, "default"
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    if HydraConfig.initialized():
        hc = HydraConfig.get()
        name = hc.job.override_dirname or "default"
        if hc.mode == RunMode.MULTIRUN:
            group = Path(hc.sweep.dir).name
    return WandbTracker(cfg, output_dir, group, name, hydra_choices(), mode, run_id)
