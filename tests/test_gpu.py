"""CUDA-only checks; skipped on machines without a GPU."""

import numpy as np
import pytest
import torch

from scn.app import train
from scn.checkpoints import load_checkpoint
from scn.data.augment import BatchEval, BatchTrain
from scn.data.cache import ImageStore
from scn.engine.accel import resolve_accel
from tests.conftest import finished_run

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device"),
]


def test_tiny_training_on_cuda_writes_cpu_loadable_checkpoints(tiny_cfg, tmp_path):
    summary = train(
        tiny_cfg("trainer.device=cuda", "scn.relabel_epoch=1", "trainer.checkpoints=last")
    )
    assert finished_run(tmp_path / "run")["test/acc"] == summary["test/acc"]  # as returned
    state = load_checkpoint(tmp_path / "run/last.pt")  # map_location=cpu
    assert all(t.device.type == "cpu" for t in state["model"].values())
    assert state["labels"].device.type == "cpu"


def test_auto_settings_on_cuda_compile_with_bf16_and_keep_plain_checkpoints(tiny_cfg, tmp_path):
    """trainer auto on CUDA: bf16, channels_last, compile (+ CUDA graphs at batch 16)."""
    cfg = tiny_cfg("trainer.device=cuda", "scn.relabel_epoch=1", "trainer.checkpoints=last")
    accel = resolve_accel(cfg.trainer, torch.device("cuda"), cfg.trainer.batch_size)
    assert accel.precision in ("bf16", "fp16") and accel.channels_last
    summary = train(cfg)
    assert finished_run(tmp_path / "run")["test/acc"] == summary["test/acc"]  # as returned
    state = load_checkpoint(tmp_path / "run/last.pt")
    assert not any(k.startswith("_orig_mod") for k in state["model"])


def test_fp16_trains_with_a_gradient_scaler(tiny_cfg, tmp_path):
    cfg = tiny_cfg("trainer.device=cuda", "trainer.precision=fp16", "trainer.compile=false",
                   "trainer.checkpoints=last")  # fmt: skip
    summary = train(cfg)
    assert summary["epochs"] == 2
    assert load_checkpoint(tmp_path / "run/last.pt")["scaler"] is not None


def test_cuda_cached_pipeline_matches_cpu_and_the_recipe_rates(tmp_path):
    """Images held on the GPU and streamed through pinned memory give the CPU pipeline's eval
    batches (within one uint8 step: the GPU resizes in float), and the recipe's rates."""
    arr = np.random.default_rng(0).integers(0, 256, (300, 40, 40, 3), dtype=np.uint8)
    cuda = torch.device("cuda")
    mean, std = (0.5, 0.5, 0.5), (0.25, 0.25, 0.25)
    rows = torch.arange(300)
    ref = BatchEval(32, mean, std)(ImageStore(arr, torch.device("cpu")).gather(rows))
    for on_device in (True, False):
        store = ImageStore(arr, cuda, on_device=on_device)
        assert (store.images is not None) == on_device
        out = BatchEval(32, mean, std)(store.gather(rows))
        assert out.is_cuda
        assert (out.cpu() - ref).abs().max().item() <= 1 / (255 * 0.25) + 1e-4
    grey = torch.full((4000, 3, 20, 20), 128, dtype=torch.uint8, device=cuda)
    out = BatchTrain(20, mean, std, flip_or_noise_p=0.0)(
        grey, torch.Generator(device=cuda).manual_seed(0)
    )
    erased = (out == 0).flatten(1).any(1).float().mean().item()
    assert abs(erased - 0.5) < 0.04
