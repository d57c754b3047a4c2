"""Entry point: `python run.py [group=option ...] [key=value ...]`, or `-m` for a multirun."""

import sys

import hydra
from omegaconf import DictConfig

import scn.config  # noqa: F401  (registers the typed `scn` schema before composition)
from scn.cli import hydra_cli


@hydra.main(version_base="1.3", config_path="conf", config_name="config")
def main(cfg: DictConfig) -> float:
    from scn.app import run_job  # imported here, so a config error is reported before torch loads

    return run_job(cfg)


if __name__ == "__main__":
    sys.exit(hydra_cli(main))
