"""Every method end to end on tiny data: one epoch of training with its loss terms in the
metrics, a position saved inside the epoch (trainer.checkpoint_steps) that a resumed run finishes
bitwise, then the checkpoint through task=eval, `python -m scn.predict` and `python -m
scn.features` (their entry points, in process)."""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from scn.app import main as run_task
from scn.app import train
from scn.checkpoints import load_checkpoint
from scn.data.synthetic import ensure_synthetic
from scn.engine.trainer import Trainer
from scn.features import main as features_main
from scn.inference import dataset_images
from scn.predict import main as predict_main
from tests.conftest import compose_cfg, tiny_args, untimed_rows

# one small crop at 16 px keeps the region methods cheap
RAN_SMALL = ["ran.crops=[[0,0,0.75,0.75]]", "ran.region_size=16"]
RELABEL = ["scn.relabel_epoch=1", "scn.margin_2=0.0"]  # relabels on both sides of the stop
RUNS = {
    "scn": RELABEL,
    "baseline": [],
    "ran": RAN_SMALL,
    "scn_ran": [*RAN_SMALL, *RELABEL],
    "eac": [],
    "rul": [],
}
# train/loss = sum of weight x term, with the default weights (EAC's lam is 5)
TERMS = {
    "scn": {"ce": 1, "rr": 1},
    "baseline": {"ce": 1},
    "ran": {"ce": 1, "rb": 1},
    "scn_ran": {"ce": 1, "rb": 1, "rr": 1},
    "eac": {"ce": 1, "cam": 5},
    "rul": {"ce": 1},
}
SCORED = {"scn", "scn_ran", "rul"}  # methods with a per-sample noise score (noise/auc)
FEATURES = {"scn": 512, "baseline": 512, "ran": 1024, "scn_ran": 1024, "eac": 512, "rul": 64}
# 21 train images in steps of 8, 8 and 5; 14 test images
SMALL = ["dataset.synthetic.train_per_class=3", "dataset.synthetic.test_per_class=2",
         "trainer.batch_size=8"]  # fmt: skip
COMMON = [*SMALL, "trainer.epochs=1", "trainer.checkpoints=best_and_last", "dataset.noise.rate=0.2"]


def args(method: str, *extra: str) -> list[str]:
    return tiny_args(f"method={method}", *COMMON, *RUNS[method], *extra)


@pytest.fixture(scope="module")
def small_synthetic(cache_dir) -> Path:
    return ensure_synthetic(cache_dir, train_per_class=3, test_per_class=2, image_size=40, seed=0)


@pytest.fixture(scope="module", params=list(RUNS))
def run(request, tmp_path_factory, cache_dir):
    """One uninterrupted 1-epoch run of the method; the last.pt it writes after step 2
    (trainer.checkpoint_steps=2) is kept as step2.pt before the epoch's end replaces it."""
    method = request.param
    out = tmp_path_factory.mktemp(method)
    real_save = Trainer.save

    def save(self, name, partial=None):
        real_save(self, name, partial)
        if partial is not None:
            self.writer.wait()
            shutil.copy(out / "last.pt", out / "step2.pt")

    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("SCN_CACHE_DIR", str(cache_dir))
        mp.setattr(Trainer, "save", save)
        summary = train(compose_cfg(args(method, "trainer.checkpoint_steps=2"), out))
    return method, out, summary


def test_a_method_trains_logs_its_terms_and_resumes_inside_the_epoch_bitwise(run, tmp_path):
    method, full, summary = run
    assert summary["method"] == method
    assert json.loads((full / "summary.json").read_text())["method"] == method
    (row,) = untimed_rows(full / "metrics.jsonl")
    terms = TERMS[method]
    assert {k for k in ("ce", "rr", "rb", "cam") if f"train/{k}" in row} == set(terms)
    total = sum(w * row[f"train/{k}"] for k, w in terms.items())
    assert row["train/loss"] == pytest.approx(total, rel=1e-6)  # fp32 sums
    assert all(row[f"train/{k}"] > 0 for k in terms if k != "rr")  # rr may sit at its hinge
    assert ("noise/auc" in row) == (method in SCORED) and "noise/auc_loss" in row
    if method.startswith("scn"):
        assert row["scn/relabeled"] > 0 and row["scn/noise_auc"] == row["noise/auc"]
    else:
        assert "scn/relabeled" not in row and "scn/alpha_high" not in row

    part = load_checkpoint(full / "step2.pt")
    assert part["epoch"] == 0 and part["partial"]["batches"] == 2
    resume = tiny_args(*SMALL, "trainer.epochs=1", f"ckpt_path={full / 'step2.pt'}")
    resumed = train(compose_cfg(resume, tmp_path / "res"))
    assert untimed_rows(tmp_path / "res/metrics.jsonl") == [row]
    a, b = load_checkpoint(full / "last.pt"), load_checkpoint(tmp_path / "res/last.pt")
    assert a["model"].keys() == b["model"].keys()
    assert all(torch.equal(a["model"][k], b["model"][k]) for k in a["model"])
    assert torch.equal(a["labels"], b["labels"]) and a["relabel_log"] == b["relabel_log"]
    assert resumed["test/acc"] == summary["test/acc"] and resumed["method"] == method


def test_a_methods_checkpoint_evaluates_predicts_and_gives_features(run, tmp_path, small_synthetic):
    method, full, summary = run
    best = full / "best.pt"
    cfg = compose_cfg(tiny_args(*SMALL, "task=eval", f"ckpt_path={best}"), tmp_path / "ev")
    assert run_task(cfg) == summary["test/acc"]  # best.pt: the only epoch
    report = json.loads((tmp_path / "ev/eval.json").read_text())
    assert report["images"] == 14 and "acc" in report["hflip"]

    pred = tmp_path / "pred.csv"
    argv = [str(best), str(small_synthetic), "--dataset", "synthetic", "--out", str(pred)]
    assert predict_main([*argv, "--device", "cpu"]) == 0
    rows = list(csv.DictReader(pred.open()))
    images, labels = dataset_images("synthetic", small_synthetic, "test")
    names = load_checkpoint(best)["class_names"]
    truth = {n: names[lab] for n, lab in zip(images.names, labels, strict=True)}
    # the training run's evaluation and predict see the same logits
    correct = sum(r["prediction"] == truth[r["path"]] for r in rows)
    assert len(rows) == 14 and correct / 14 == pytest.approx(summary["test/acc"])
    regions = [k for k in rows[0] if k.startswith("mu_")]
    assert len(regions) == (2 if "ran" in method else 0)  # the whole face and one crop
    alphas = [r["alpha"] for r in rows]
    if method.startswith("scn"):
        assert all(0 < float(a) < 1 for a in alphas)
    else:
        assert set(alphas) == {""}

    feats = tmp_path / "feats"
    argv = [str(best), str(small_synthetic), "--split", "test", "--dataset", "synthetic"]
    assert features_main([*argv, "--out", str(feats), "--device", "cpu"]) == 0
    z = np.load(feats / "features.npz")
    assert z["features"].shape == (14, FEATURES[method]) and z["logits"].shape == (14, 7)
    assert np.isfinite(z["features"]).all()
    by_name = {r["path"]: r["prediction"] for r in rows}
    assert [names[i] for i in z["logits"].argmax(1)] == [by_name[n] for n in z["names"]]
    assert ("region_weights" in z) == ("ran" in method)
