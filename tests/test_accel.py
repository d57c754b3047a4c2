"""Speed settings: what auto means per device, named errors for impossible choices, and that a
lower-precision model step leaves the SCN math in fp32."""

from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf

from scn.app import train
from scn.config import compose_config
from scn.engine.accel import resolve_accel
from scn.errors import UserError
from scn.methods.scn import SCNModel
from scn.models.backbones import create_backbone
from scn.tracking.local import read_metrics
from tests.conftest import compose_cfg, tiny_args

CPU = torch.device("cpu")


TRAINER = compose_config().trainer  # conf/trainer's defaults: auto everywhere


def settings(**kw):
    """The trainer's defaults with `kw` set, as a command line would set them."""
    return OmegaConf.merge(TRAINER, kw)


def test_auto_on_cpu_is_fp32_without_compile_but_channels_last():
    accel = resolve_accel(settings(), CPU, 64)
    assert (accel.precision, accel.compile, accel.cuda_graphs) == ("fp32", False, False)
    assert accel.channels_last and accel.memory_format == torch.channels_last
    assert accel.grad_scaler() is None
    assert accel.compiled(torch.nn.Linear(2, 2)).__class__ is torch.nn.Linear


@pytest.mark.parametrize(
    ("kw", "message"),
    [
        ({"precision": "fp16"}, "fp16 needs CUDA"),
        ({"precision": "half"}, "trainer.precision='half'"),
        ({"cuda_graphs": True}, "cuda_graphs=true needs CUDA"),
        ({"compile": "yes"}, "trainer.compile='yes'"),
    ],
)
def test_impossible_settings_are_named(kw, message):
    with pytest.raises(UserError, match=message):
        resolve_accel(settings(**kw), CPU, 64)


def test_bf16_autocast_keeps_the_head_and_loss_inputs_fp32():
    bcfg = OmegaConf.create({"name": "resnet10t"})
    model = SCNModel(create_backbone(bcfg), 7).to(memory_format=torch.channels_last)
    accel = resolve_accel(settings(precision="bf16"), CPU, 4)
    with accel.autocast():
        out = model(torch.randn(4, 3, 32, 32).contiguous(memory_format=torch.channels_last))
    assert out.features.dtype == torch.bfloat16  # the backbone ran in bf16
    assert out.logits.dtype == torch.float32 and out.alpha.dtype == torch.float32


def test_bf16_training_learns_on_cpu(tiny_cfg):
    """Two epochs in bf16: the training loss falls (a step that learns nothing would not)."""
    cfg = tiny_cfg("trainer.precision=bf16", "scn.relabel_epoch=3", "trainer.checkpoints=none")
    train(cfg)
    rows = read_metrics(Path(cfg.paths.output_dir) / "metrics.jsonl")
    assert rows[1]["train/loss"] < rows[0]["train/loss"] - 0.05, rows


def test_files_pipeline_learns_like_the_cached_one(tmp_path):
    """The per-sample pipeline feeds the same training: its loss falls over two epochs as the
    cached pipeline's does."""
    losses = {}
    for kind in ("files", "cached"):
        cfg = compose_cfg(tiny_args(f"dataset.pipeline={kind}", "scn.relabel_epoch=3",
                                    "trainer.checkpoints=none"), tmp_path / kind)  # fmt: skip
        train(cfg)
        rows = read_metrics(Path(cfg.paths.output_dir) / "metrics.jsonl")
        losses[kind] = [r["train/loss"] for r in rows]
    for kind, (first, second) in losses.items():
        assert second < first - 0.05, (kind, losses)
