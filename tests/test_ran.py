"""RAN and SCN+RAN: region crops, self- and relation-attention, the region-biased loss (hand
values), the config checks, and tiny end-to-end runs (train, exact resume, eval, predict, features)."""

from __future__ import annotations

import csv
import math
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf

from scn.app import evaluate, train
from scn.checkpoints import load_checkpoint
from scn.engine.state import DeviceSums
from scn.engine.trainer import Trainer
from scn.errors import UserError
from scn.features import export
from scn.inference import dataset_images, load_model
from scn.methods.ran import (
    CORNER_CROPS,
    RELEASED_CROPS,
    RANModel,
    RegionAttention,
    add_ran_stats,
    build_ran_model,
    crop_regions,
    ran_row,
    ran_stat_keys,
    region_biased_loss,
)
from scn.predict import predict
from scn.report import write_report
from scn.tracking.local import read_metrics
from tests.conftest import ROOT, compose_cfg, tiny_args, untimed_rows

DEFAULT_CROPS = [[0.0, 0.0, 0.75, 0.75], [0.25, 0.0, 1.0, 0.75], [0.0, 0.25, 0.75, 1.0],
                 [0.25, 0.25, 1.0, 1.0], [0.125, 0.125, 0.875, 0.875]]  # fmt: skip
assert DEFAULT_CROPS == CORNER_CROPS  # ran.crops=corners: the first default, kept by name


class MeanBackbone(torch.nn.Module):
    """A stand-in backbone: the per-channel mean, and the shapes it was called with."""

    num_features = 3

    def __init__(self):
        super().__init__()
        self.calls: list[tuple[int, ...]] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.calls.append(tuple(x.shape))
        return x.mean(dim=(2, 3))


def test_attention_pools_regions_as_computed_by_hand():
    # d = 1, two regions: f_0 = 0, f_1 = ln 3; mu_i = sigmoid(f_i) = 1/2, 3/4
    att = RegionAttention(1)
    with torch.no_grad():
        att.self_att.weight.fill_(1.0), att.self_att.bias.zero_()
        att.rel_att.weight.copy_(torch.tensor([[1.0, 0.0]])), att.rel_att.bias.zero_()
    ln3 = math.log(3)
    p, mu = att(torch.tensor([[[0.0], [ln3]]]))
    assert mu[0].tolist() == pytest.approx([0.5, 0.75])
    # F = (1/2 * 0 + 3/4 * ln3) / (5/4) = 0.6 ln3; nu_i = sigmoid(f_i), so mu_i nu_i = 1/4, 9/16
    # P = (1/4 [0; F] + 9/16 [ln3; F]) / (13/16) = [9/13 ln3; 0.6 ln3]
    assert p[0].tolist() == pytest.approx([9 / 13 * ln3, 0.6 * ln3])


def test_region_biased_loss_and_epoch_statistics_by_hand():
    mu = torch.tensor(
        [
            [0.50, 0.75, 0.60],  # a crop leads by 0.25 >= margin: hinge inactive, 0
            [0.80, 0.70, 0.75],  # the whole face is largest: 0.02 - (0.75 - 0.80) = 0.07
            [0.50, 0.51, 0.40],  # a crop leads by only 0.01: 0.02 - 0.01 = 0.01
        ]
    )
    assert region_biased_loss(mu[:1], 0.02).item() == 0.0
    assert region_biased_loss(mu[1:2], 0.02).item() == pytest.approx(0.07)
    assert region_biased_loss(mu, 0.02).item() == pytest.approx((0 + 0.07 + 0.01) / 3)
    assert region_biased_loss(mu, 0.02, "sum").item() == pytest.approx(0.08)  # what the step adds
    model = build_ran_model(MeanBackbone(), 2, _ran_cfg([[0, 0, 1, 1], [0, 0, 0.5, 0.5]]), True)
    keys = ran_stat_keys(model.num_regions)
    assert keys == ("face_top", "mu_0", "mu_1", "mu_2")
    sums = DeviceSums(("n", *keys), torch.device("cpu"))
    sums.add("n", 3)
    add_ran_stats(sums, mu)
    row = ran_row(sums.read(), keys)
    assert row["ran/face_top"] == pytest.approx(1 / 3)  # only the second sample
    assert [row[f"ran/mu_{i}"] for i in range(3)] == pytest.approx([0.6, 1.96 / 3, 1.75 / 3])


def _ran_cfg(crops):
    return OmegaConf.create({"crops": crops, "region_size": None})


def test_default_crops_cut_exactly_the_expected_pixels():
    # an 8 x 8 image whose every pixel is distinct: a 0.75 box is 6 x 6 pixels, cut at 6 px
    img = torch.arange(2 * 3 * 64, dtype=torch.float32).view(2, 3, 8, 8)
    regions = crop_regions(img, torch.tensor(DEFAULT_CROPS), 6).view(2, 5, 3, 6, 6)
    expected = [img[..., 0:6, 0:6], img[..., 0:6, 2:8], img[..., 2:8, 0:6], img[..., 2:8, 2:8],
                img[..., 1:7, 1:7]]  # fmt: skip
    for i, want in enumerate(expected):
        torch.testing.assert_close(regions[:, i], want, rtol=0, atol=1e-3)
        assert torch.equal(regions[:, i].round(), want)
    # the whole face at its own size is the image; halved, each output pixel averages a 2x2 block
    whole = crop_regions(img, torch.tensor([[0.0, 0.0, 1.0, 1.0]]), 8)
    assert torch.equal(whole.round(), img)
    half = crop_regions(img[:, :1], torch.tensor([[0.0, 0.0, 1.0, 1.0]]), 4)
    torch.testing.assert_close(half, torch.nn.functional.avg_pool2d(img[:, :1], 2))


def test_the_model_batches_face_and_crops_through_one_backbone_call():
    model = RANModel(MeanBackbone(), 4, DEFAULT_CROPS)
    out = model(torch.rand(2, 3, 8, 8))
    assert model.backbone.calls == [(12, 3, 8, 8)]  # B x (K+1) regions in one call
    # crops at their own size: the whole face keeps the input's, crops batched in a second call
    model = RANModel(MeanBackbone(), 4, DEFAULT_CROPS, region_size=6)
    model(torch.rand(2, 3, 8, 8))
    assert model.backbone.calls == [(2, 3, 8, 8), (10, 3, 6, 6)]
    assert out.mu.shape == (2, 6) and out.features.shape == (2, 6) and out.alpha.shape == (2,)
    assert (
        RANModel(MeanBackbone(), 4, DEFAULT_CROPS, scn=False)(torch.rand(2, 3, 8, 8)).alpha is None
    )


@pytest.mark.parametrize(
    ("crops", "message"),
    [
        ("[[0,0,0.5,0.5],[0,0,1.2,1]]", r"ran.crops\[1\]=\[0.0, 0.0, 1.2, 1.0\]: .*\[0, 1\]"),
        ("[[0.5,0,0.5,1]]", r"ran.crops\[0\]=.*x1 > x0"),
        ("[[0,0,1]]", r"ran.crops\[0\]=.*4 numbers"),
    ],
)
def test_bad_crop_boxes_are_refused_at_start_naming_the_key(tmp_path, crops, message):
    cfg = compose_cfg(tiny_args("method=ran", f"ran.crops={crops}"), tmp_path)
    with pytest.raises(UserError, match=message):
        Trainer(cfg, tmp_path)


def test_the_ran_group_is_typed_and_off_by_default(tmp_path):
    cfg = compose_cfg(tiny_args(), tmp_path)
    assert cfg.method.name == "scn" and cfg.ran.enabled is None
    assert cfg.ran.crops == "released" and cfg.ran.margin == 0.02
    assert len(RELEASED_CROPS) == 7 and [0.125, 0.25, 0.875, 1.0] in RELEASED_CROPS  # the mouth
    with pytest.raises(Exception, match="ran.margn"):
        compose_cfg(tiny_args("ran.margn=0.1"), tmp_path)
    with pytest.raises(Exception, match="region_size"):
        compose_cfg(tiny_args("ran.region_size=big"), tmp_path)


# ------------------------------------------------------------------------------ end to end
# two crops at 16 px keep the runs short; the default boxes are tested above
RAN_RUN = ["method=scn_ran", "ran.region_size=16", "ran.crops=[[0,0,0.75,0.75],[0.25,0.25,1,1]]",
           "trainer.checkpoints=best_and_last", "dataset.noise.rate=0.2", "scn.relabel_epoch=2",
           "scn.margin_2=0.0"]  # fmt: skip


@pytest.fixture(scope="module")
def scn_ran(tmp_path_factory, cache_dir):
    """One uninterrupted SCN+RAN run (2 epochs, relabeling in epoch 2), shared by the tests."""
    out = tmp_path_factory.mktemp("scn_ran")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("SCN_CACHE_DIR", str(cache_dir))
        summary = train(compose_cfg(tiny_args(*RAN_RUN), out))
    return out, summary


def test_scn_ran_logs_region_metrics_and_resumes_bitwise_from_inside_an_epoch(
    scn_ran, tmp_path, monkeypatch
):
    full, summary = scn_ran
    rows = read_metrics(full / "metrics.jsonl")
    for row in rows:
        mus = [row[f"ran/mu_{i}"] for i in range(3)]
        assert all(0 < m < 1 for m in mus) and 0 <= row["ran/face_top"] <= 1
        assert row["ran/rb"] >= 0 and row["scn/alpha_high"] >= row["scn/alpha_low"]
    assert summary["scn/relabeled_total"] > 0
    # stopped after the second step of epoch 1 (3 steps per epoch), as a SIGTERM would
    real_step, steps = Trainer.step, []

    def step(self, x, y, global_n):
        out = real_step(self, x, y, global_n)
        steps.append(1)
        if len(steps) == 2:
            self.stop.received = 15
        return out

    monkeypatch.setattr(Trainer, "step", step)
    with pytest.raises(Exception, match="SIGTERM"):
        train(compose_cfg(tiny_args(*RAN_RUN), tmp_path / "part"))
    monkeypatch.setattr(Trainer, "step", real_step)
    assert load_checkpoint(tmp_path / "part/last.pt")["partial"]["batches"] == 2
    resumed = train(compose_cfg(tiny_args(f"ckpt_path={tmp_path / 'part'}"), tmp_path / "res"))
    assert untimed_rows(tmp_path / "res/metrics.jsonl") == untimed_rows(full / "metrics.jsonl")
    a, b = load_checkpoint(full / "last.pt"), load_checkpoint(tmp_path / "res/last.pt")
    assert all(torch.equal(a["model"][k], b["model"][k]) for k in a["model"])
    assert resumed["test/acc"] == summary["test/acc"]


def test_scn_ran_checkpoints_serve_eval_predict_and_features(scn_ran, tmp_path, tiny_synthetic):
    run_dir, summary = scn_ran
    best = str(run_dir / "best.pt")
    report = evaluate(compose_cfg(tiny_args("task=eval", f"ckpt_path={best}"), tmp_path / "ev"))
    assert report["test/acc"] == summary["test/acc"] and "acc" in report["hflip"]
    out = tmp_path / "p.csv"
    assert predict(best, str(tiny_synthetic), str(out), dataset="synthetic") == 21
    rows = list(csv.DictReader(out.open()))
    assert list(rows[0])[-4:] == ["alpha", *(f"mu_{i}" for i in range(3))]
    images, labels = dataset_images("synthetic", tiny_synthetic, "test")
    names = load_model(best, "cpu").class_names
    truth = {n: names[lab] for n, lab in zip(images.names, labels, strict=True)}
    correct = sum(r["prediction"] == truth[r["path"]] for r in rows)
    assert correct / 21 == pytest.approx(summary["test/acc"])  # the training eval's predictions
    export(best, str(tiny_synthetic), str(tmp_path / "f"), split="test", dataset="synthetic")
    z = np.load(tmp_path / "f/features.npz")
    assert z["features"].shape == (21, 1024) and z["region_weights"].shape == (21, 3)
    mu = np.array([[float(r[f"mu_{i}"]) for i in range(3)] for r in rows])
    assert np.allclose(z["region_weights"], mu, atol=1e-5)
    lm = load_model(best, "cpu")
    assert isinstance(lm.model, RANModel) and lm.model.head.classifier.alpha is not None


def test_methods_multirun_writes_six_configurations_the_report_names_by_method(tmp_path, cache_dir):
    args = tiny_args("trainer.epochs=1", "trainer.checkpoints=none", "dataset.image_size=16",
                     "ran.region_size=8")  # fmt: skip
    proc = subprocess.run(
        [sys.executable, str(ROOT / "run.py"), "-m", "hparams_search=methods", "trainer.seed=0",
         *args, "hydra.sweep.dir=sweep"],
        cwd=tmp_path, env={**os.environ, "SCN_CACHE_DIR": str(cache_dir)},
        capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert len(list((tmp_path / "sweep").glob("*/summary.json"))) == 6
    ran_rows = [read_metrics(p)[0] for p in (tmp_path / "sweep").glob("*/metrics.jsonl")]
    assert sorted("ran/mu_5" in r for r in ran_rows) == [False] * 4 + [True] * 2
    out = write_report(tmp_path / "sweep")
    with (out / "report.csv").open() as f:
        rows = [(r["method"], r["config"], r["n"]) for r in csv.DictReader(f)]
    methods = ["baseline", "scn", "ran", "scn_ran", "eac", "rul"]
    assert rows == [(m, "", "1") for m in methods]  # only the method differs: no configuration
    assert "| scn_ran | 1 |" in (out / "report.md").read_text()
