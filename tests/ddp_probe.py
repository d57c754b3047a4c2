"""Run the real Trainer on tiny data and record, per training step, what the equivalence test
compares between one process and torchrun: the global loss and RR, the label tensor the step started
from, and (for the first step) every parameter's gradient after DDP's all-reduce.

Usage: `python tests/ddp_probe.py OUT override...` or the same under `torchrun --nproc_per_node=N`.
Writes OUT/rank<r>.pt on each process."""

from __future__ import annotations

import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from scn.engine import distributed  # noqa: E402
from scn.engine.trainer import Trainer  # noqa: E402
from scn.tracking.wandb_run import NullTracker  # noqa: E402
from tests.conftest import compose_cfg  # noqa: E402


def main(out: Path, overrides: list[str]) -> None:
    d = distributed.init()
    torch.set_num_threads(1)
    cfg = compose_cfg(overrides, out / "run")
    trainer = Trainer(cfg, out / "run")
    record: dict = {"loss": [], "rr": [], "labels": [], "grads": None, "relabeled": []}
    step = trainer.step

    def probed(x, y, global_n):
        record["labels"].append(trainer.labels.cpu().clone())
        r = step(x, y, global_n)
        loss = d.all_reduce_(r.loss_sum.detach().double().clone()) / global_n
        record["loss"].append(loss.item())
        record["rr"].append(r.rr.rr.item() if r.rr is not None else None)
        if record["grads"] is None:  # the first step's gradients, as the optimiser used them
            record["grads"] = {
                k: p.grad.detach().cpu().clone() for k, p in trainer.model.named_parameters()
            }
        return r

    trainer.step = probed
    trainer.fit(NullTracker())
    record["final_labels"] = trainer.labels.cpu().clone()
    record["relabeled"] = [row.get("scn/relabeled") for row in trainer.history]
    record["test_acc"] = [row["test/acc"] for row in trainer.history]
    out.mkdir(parents=True, exist_ok=True)
    torch.save(record, out / f"rank{d.rank}.pt")


if __name__ == "__main__":
    main(Path(sys.argv[1]), sys.argv[2:])
