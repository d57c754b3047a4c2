"""scn.inspect: CAM math on crafted inputs, and the page of a tiny trained run."""

from __future__ import annotations

import base64
import csv
import io
import re

import pytest
import torch
from PIL import Image

from scn.app import train
from scn.checkpoints import load_checkpoint
from scn.errors import UserError
from scn.inspect import (
    class_activation_map,
    feature_maps,
    inspect_run,
    main,
    wandb_galleries,
)
from scn.methods.scn import SCNModel
from scn.models.backbones import create_backbone
from tests.conftest import TINY, compose_cfg


def test_cam_of_a_crafted_feature_map_and_classifier():
    fmap = torch.tensor([[[1.0, 0.0], [0.0, 0.0]], [[0.0, 2.0], [1.0, 0.0]]])  # C=2, 2x2
    weight = torch.tensor([[0.5, -1.0], [2.0, 1.0]])  # 2 classes
    # class 1: 2 * channel 0 + 1 * channel 1; class 0: 0.5 * channel 0 - channel 1
    assert class_activation_map(fmap, weight, 1).tolist() == [[2.0, 2.0], [1.0, 0.0]]
    assert class_activation_map(fmap, weight, 0).tolist() == [[0.5, -2.0], [-1.0, 0.0]]


def test_cam_averages_to_the_logit_of_a_resnet():
    """ResNet's pooled feature is its feature map's mean, so a CAM's mean is that class's logit
    without the bias."""
    from omegaconf import OmegaConf

    torch.manual_seed(0)
    bcfg = OmegaConf.create({"name": "resnet10t"})
    model = SCNModel(create_backbone(bcfg), 3, scn=False).eval()
    x = torch.randn(2, 3, 32, 32)
    fmap = feature_maps(model, x)
    logits = model(x).logits - model.head.fc.bias
    for b in range(2):
        for c in range(3):
            cam = class_activation_map(fmap[b], model.head.fc.weight, c)
            assert cam.mean().item() == pytest.approx(logits[b, c].item(), abs=1e-4)


class MaxPooled(torch.nn.Module):
    """A backbone whose feature is the maximum of its map, not the mean: CAM does not apply."""

    num_features = 3

    def forward_features(self, x):
        return x

    def forward(self, x):
        return x.amax((2, 3))


def test_no_cam_when_the_feature_is_not_the_maps_average():
    model = SCNModel(MaxPooled(), 2, scn=False)
    assert feature_maps(model, torch.rand(1, 3, 4, 4)) is None


@pytest.fixture(scope="module")
def scn_run(tmp_path_factory, cache_dir):
    out = tmp_path_factory.mktemp("inspect_run")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("SCN_CACHE_DIR", str(cache_dir))
        overrides = [*TINY, "backbone=resnet10t", "dataset.noise.rate=0.3",
                     "scn.relabel_epoch=1", "scn.margin_2=0.0", "trainer.epochs=1"]  # fmt: skip
        summary = train(compose_cfg(overrides, out))
    return out, summary


def sections(page: str) -> dict[str, list[str]]:
    """Each section's img sources, by section id."""
    found = re.findall(r'<section id="(\w+)">(.*?)</section>', page, re.S)
    return {key: re.findall(r'<img src="([^"]*)"', body) for key, body in found}


def test_inspect_page_holds_each_section_and_opens_alone(scn_run, tmp_path):
    run_dir, summary = scn_run
    assert main([str(run_dir), "--per-class", "2", "--out", str(tmp_path / "page")]) == 0
    page = (tmp_path / "page/inspect.html").read_text()
    imgs = sections(page)
    state = load_checkpoint(run_dir / "best.pt")
    in_use = state["labels"].tolist()
    # per class of the label in use: 2 images, or all of a class with fewer
    per_class = sum(min(2, in_use.count(c)) for c in range(7))
    assert len(imgs["low"]) == len(imgs["high"]) == per_class
    with (run_dir / "relabels.csv").open() as f:
        relabels = list(csv.DictReader(f))
    assert len(relabels) > 0 and len(imgs["relabels"]) == min(200, len(relabels))
    fixed = sum(r["new"] == r["clean"] for r in relabels)
    assert f": {fixed} fixed a wrong label" in page
    # the checkpoint's test accuracy: 21 test images, the 14 (2 x 7 classes) surest mistakes shown
    mistakes = 21 - round(summary["test/acc"] * 21)
    assert len(imgs["mistakes"]) == len(imgs["cam"]) == min(14, mistakes)
    assert len(imgs["confusion"]) == 1
    # self-contained: every image is a PNG data URI; no links, scripts or stylesheets to fetch
    every = [s for srcs in imgs.values() for s in srcs]
    assert len(every) == page.count("<img ") and all(
        s.startswith("data:image/png;base64,") for s in every
    )
    assert not re.search(r"href=|url\(|<script|<link", page)
    first = Image.open(io.BytesIO(base64.b64decode(every[0].split(",", 1)[1])))
    assert first.size == (96, 96)
    for grid in ("low", "high", "relabels", "mistakes", "cam", "confusion"):
        assert (tmp_path / f"page/{grid}.png").is_file(), grid


def test_inspect_a_baseline_on_a_dataset_from_the_command_line(tmp_path, tiny_synthetic):
    out = tmp_path / "baseline"
    cfg = compose_cfg([*TINY, "backbone=resnet10t", "method=baseline", "trainer.epochs=1",
                       "trainer.checkpoints=last"], out)  # fmt: skip
    train(cfg)
    with pytest.raises(UserError, match="--ckpt last"):
        inspect_run(out)
    args = [str(out), "--ckpt", "last", "--per-class", "1", "--data", str(tiny_synthetic)]
    assert main([*args, "--dataset", "rafdb"]) == 0  # the synthetic set is in RAF-DB's layout
    page = (out / "inspect/inspect.html").read_text()
    imgs = sections(page)
    assert "highest loss" in page and "lowest alpha" not in page
    assert len(imgs["low"]) == len(imgs["high"]) == 7  # 6 train images per class, 1 shown
    assert imgs["relabels"] == [] and "0 relabel events" in page
    # logger.log_images: the same galleries as W&B media, one table row per thumbnail
    media = wandb_galleries(out, "last", per_class=1)
    shown = [k for k in ("low", "high", "relabels", "mistakes", "cam") if imgs[k]]
    assert set(media) == {f"inspect/{k}" for k in shown} | {"inspect/images"}
    assert len(media["inspect/images"].data) == sum(len(imgs[k]) for k in shown)


def test_log_images_logs_the_galleries_once_at_the_end(tmp_path, monkeypatch, caplog):
    """logger.log_images (false in every logger option): the tracker's finish logs the galleries
    of best.pt, else last.pt, at the last epoch; without a checkpoint it says so."""
    from types import SimpleNamespace

    from scn.tracking.wandb_run import WandbTracker

    for option in ("wandb", "none"):
        assert compose_cfg([*TINY, f"logger={option}"]).logger.log_images is False
    drawn = []

    def galleries(run_dir, ckpt):
        drawn.append(ckpt)
        return {"inspect/low": "grid"}

    logged = []
    run = SimpleNamespace(summary={}, log=logged.append, finish=lambda exit_code: None)
    tracker = WandbTracker.__new__(WandbTracker)  # the run itself is faked: no W&B process
    # the caller gives the galleries (app passes scn.inspect.wandb_galleries)
    tracker.run, tracker.output_dir, tracker.log_images, tracker.log_model = (
        run,
        tmp_path,
        True,
        False,
    )
    tracker.galleries = galleries
    monkeypatch.setattr(tracker, "_log_tables", lambda trainer: None)
    trainer = SimpleNamespace(history=[{"epoch": 1}, {"epoch": 2}])
    (tmp_path / "last.pt").write_bytes(b"")
    tracker.finish({"test/acc": 0.5}, trainer)
    assert drawn == ["last"] and logged == [{"epoch": 2, "inspect/low": "grid"}]
    (tmp_path / "best.pt").write_bytes(b"")
    tracker.finish({"test/acc": 0.5}, trainer, exit_code=1)  # a failed run: no galleries
    tracker.finish({"test/acc": 0.5}, trainer)
    assert drawn == ["last", "best"]
    for name in ("best.pt", "last.pt"):
        (tmp_path / name).unlink()
    tracker.finish({"test/acc": 0.5}, trainer)
    assert drawn == ["last", "best"] and "no best.pt or last.pt" in caplog.text
