"""The epoch order: a permutation (uniform) or class-balanced draws, the same in both pipelines."""

import numpy as np
import pytest
import torch

from scn.data.datasets import dataset_config, load_dataset
from scn.data.pipeline import build_pipeline
from scn.data.sampler import class_balanced_weights, epoch_order
from scn.errors import UserError
from scn.models.backbones import Preprocessing
from tests.conftest import write_rafdb

LABELS = np.array([0] * 100 + [1] * 20 + [2] * 5)


def test_uniform_visits_every_image_once_per_seed():
    a, b = epoch_order(LABELS, 3), epoch_order(LABELS, 3)
    assert torch.equal(a, b) and torch.equal(a.sort().values, torch.arange(len(LABELS)))
    assert not torch.equal(a, epoch_order(LABELS, 4))


def test_balanced_weights_are_inverse_class_counts():
    w = class_balanced_weights(LABELS)
    assert w[0].item() == pytest.approx(1 / 100) and w[-1].item() == pytest.approx(1 / 5)
    # each class carries the same total weight
    assert [w[c == LABELS].sum().item() for c in range(3)] == pytest.approx([1.0, 1.0, 1.0])


def test_balanced_draws_classes_equally_often():
    """40 epochs of 125 draws: each class ~1/3 of 5,000 (binomial sd 33; allow 5 sd)."""
    draws = np.concatenate([LABELS[epoch_order(LABELS, s, "balanced").numpy()] for s in range(40)])
    assert len(draws) == 40 * len(LABELS)  # same epoch length as uniform
    counts = np.bincount(draws, minlength=3)
    sd = np.sqrt(len(draws) * (1 / 3) * (2 / 3))
    assert np.all(np.abs(counts - len(draws) / 3) < 5 * sd), counts
    # uniform keeps the imbalance: class 2 is 4% of every epoch
    uniform = LABELS[epoch_order(LABELS, 0).numpy()]
    assert np.bincount(uniform).tolist() == [100, 20, 5]
    assert torch.equal(epoch_order(LABELS, 7, "balanced"), epoch_order(LABELS, 7, "balanced"))


def test_unknown_sampler_is_named():
    with pytest.raises(UserError, match="dataset.sampler='weighted'"):
        epoch_order(LABELS, 0, "weighted")


def test_both_pipelines_visit_the_balanced_order(tmp_path):
    rows = [(f"train_{i:05d}.jpg", 1 if i <= 12 else 2) for i in range(1, 16)]
    rows += [("test_0001.jpg", 1), ("test_0002.jpg", 2)]
    root = write_rafdb(tmp_path / "raf", rows, size=12)
    dcfg = dataset_config("rafdb", root)
    dcfg.sampler = "balanced"
    data = load_dataset(dcfg, tmp_path)
    seen = {}
    for kind in ("cached", "files"):
        dcfg.pipeline = kind
        pre = Preprocessing(16, (0.5,) * 3, (0.5,) * 3)
        pipe = build_pipeline(dcfg, data, pre, torch.device("cpu"), cache_dir=tmp_path / "cache")
        seen[kind] = torch.cat([i for _, i in pipe.batches(data.train, True, 4, seed=11)])
    expected = epoch_order(data.train.labels, 11, "balanced")
    assert torch.equal(seen["cached"], expected) and torch.equal(seen["files"], expected)
