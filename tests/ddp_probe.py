"""Run the real Trainer on tiny data and record, per training step, what the equivalence test
compares between one process and torchrun: the global loss and RR, the label tensor the step started
from, the batch's relabel rows (position, old, new, kept; the whole global batch on every process),
and (for the first step) every parameter's gradient after DDP's all-reduce.

Usage: `python tests/ddp_probe.py OUT override...` or the same under `torchrun --nproc_per_node=N`.
Writes OUT/rank<r>.pt on each process."""

from __future__ import annotations

import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import scn.engine.trainer as trainer_module  # noqa: E402
from scn.engine.trainer import Trainer  # noqa: E402
from scn.runtime import distributed  # noqa: E402
from scn.tracking.wandb_run import NullTracker  # noqa: E402
from tests.conftest import compose_cfg  # noqa: E402


def main(out: Path, overrides: list[str]) -> None:
    d = distributed.init()
    torch.set_num_threads(1)
    cfg = compose_cfg(overrides, out / "run")
    trainer = Trainer(cfg, out / "run")
    record: dict = {"loss": [], "rr": [], "labels": [], "grads": None, "relabeled": [],
                    "changes": []}  # fmt: skip
    step, relabel = trainer.step, trainer_module.relabel_batch

    def probed(x, y, ctx):
        record["labels"].append(trainer.labels.cpu().clone())
        r = step(x, y, ctx)
        loss = d.all_reduce_(r.loss_sum.detach().double().clone()) / ctx.global_n
        record["loss"].append(loss.item())
        # RR over the global batch: every process holds it, counted for its own samples
        rr = r.term_sums.get("rr")
        record["rr"].append(rr.item() / len(y) if rr is not None else None)
        if record["grads"] is None:  # the first step's gradients, as the optimiser used them
            record["grads"] = {
                k: p.grad.detach().cpu().clone() for k, p in trainer.model.named_parameters()
            }
        return r

    def relabeled(*args):
        rows = relabel(*args)
        record["changes"].append(rows.cpu().clone())
        return rows

    trainer.step, trainer_module.relabel_batch = probed, relabeled
    trainer.fit(NullTracker())
    record["final_labels"] = trainer.labels.cpu().clone()
    record["relabeled"] = [row.get("scn/relabeled") for row in trainer.history]
    record["test_acc"] = [row["test/acc"] for row in trainer.history]
    out.mkdir(parents=True, exist_ok=True)
    torch.save(record, out / f"rank{d.rank}.pt")


if __name__ == "__main__":
    main(Path(sys.argv[1]), sys.argv[2:])
