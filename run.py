"""Entry point: `python run.py [group=option ...] [key=value ...]`, or `-m` for a multirun."""

import hydra
from omegaconf import DictConfig

import scn.config  # noqa: F401  (registers the typed `scn` schema before composition)
from scn.app import main as run_task


@hydra.main(version_base="1.3", config_path="conf", config_name="config")
def main(cfg: DictConfig) -> float:
    return run_task(cfg)


if __name__ == "__main__":
    main()
