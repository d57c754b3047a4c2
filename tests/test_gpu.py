"""CUDA-only checks; skipped on machines without a GPU."""

import pytest
import torch

from scn.app import train
from scn.engine.checkpoint import load_checkpoint

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device"),
]


def test_tiny_training_on_cuda_writes_cpu_loadable_checkpoints(tiny_cfg, tmp_path):
    summary = train(
        tiny_cfg("trainer.device=cuda", "scn.relabel_epoch=1", "trainer.checkpoints=last")
    )
    assert 0.0 <= summary["test/acc"] <= 1.0
    state = load_checkpoint(tmp_path / "run/last.pt")  # map_location=cpu
    assert all(t.device.type == "cpu" for t in state["model"].values())
    assert state["labels"].device.type == "cpu"
