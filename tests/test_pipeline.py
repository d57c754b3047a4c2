"""Both pipelines serve the same images in the same places; the cached one is reproducible per seed."""

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf

from scn.data.cache import ImageStore
from scn.data.datasets import dataset_config, load_dataset
from scn.data.pipeline import Pipeline, build_pipeline
from scn.errors import UserError
from scn.models.backbones import Preprocessing as Pre
from tests.conftest import write_rafdb

MEAN, STD = (0.5, 0.5, 0.5), (0.25, 0.25, 0.25)
AUG = {"flip_or_noise_p": 0.5, "noise_var": 30.0, "erasing_p": 0.5,
       "erasing_scale": [0.02, 0.25], "erasing_ratio": [0.3, 3.3]}  # fmt: skip


@pytest.fixture
def data(tmp_path):
    rows = [(f"train_{i:05d}.jpg", i % 7 + 1) for i in range(1, 22)]
    rows += [(f"test_{i:04d}.jpg", i % 7 + 1) for i in range(1, 10)]
    root = write_rafdb(tmp_path / "raf", rows, size=20)
    dcfg = OmegaConf.merge(
        dataset_config("rafdb", root), {"class_names": list("ABCDEFG"), "val_fraction": 0.3}
    )
    return load_dataset(dcfg, tmp_path)


def pipeline(kind, data, tmp_path, size=28):
    return Pipeline(kind, data, size, MEAN, STD, AUG, torch.device("cpu"),
                    torch.channels_last, 0, tmp_path / "cache")  # fmt: skip


@pytest.mark.parametrize("split", ["train", "val", "test"])
def test_eval_batches_are_the_same_in_both_pipelines(data, tmp_path, split):
    """Held-out val rows index the train cache: the right images come back in the right order."""
    sp = getattr(data, split)
    cached = list(pipeline("cached", data, tmp_path).batches(sp, False, 4))
    files = list(pipeline("files", data, tmp_path).batches(sp, False, 4))
    assert len(cached) == len(files) == -(-len(sp) // 4)
    for (xc, ic), (xf, i_f) in zip(cached, files, strict=True):
        assert torch.equal(ic, i_f)
        assert (xc - xf).abs().max().item() < 1e-5


def test_training_batches_repeat_per_seed_and_cover_the_split(data, tmp_path):
    pipe = pipeline("cached", data, tmp_path)

    def epoch(seed):
        return [(x.clone(), i) for x, i in pipe.batches(data.train, True, 4, seed)]

    a, b, c = epoch(3), epoch(3), epoch(4)
    assert all(torch.equal(x, y) and torch.equal(i, j) for (x, i), (y, j) in zip(a, b, strict=True))
    assert not torch.equal(torch.cat([i for _, i in a]), torch.cat([i for _, i in c]))
    positions = torch.cat([i for _, i in a]).sort().values
    assert torch.equal(positions, torch.arange(len(data.train)))  # 14 = 3*4 + 2: nothing dropped


def test_a_trailing_batch_of_one_is_dropped_in_both_pipelines(data, tmp_path):
    assert len(data.train) % 13 == 1
    for kind in ("cached", "files"):
        sizes = [len(i) for _, i in pipeline(kind, data, tmp_path).batches(data.train, True, 13)]
        assert sizes == [13], kind


def test_batches_can_be_kept(data, tmp_path):
    """Each batch is its own tensor: collecting an epoch's batches keeps them all intact."""
    kept = list(pipeline("cached", data, tmp_path).batches(data.test, False, 2))
    again = [x.clone() for x, _ in pipeline("cached", data, tmp_path).batches(data.test, False, 2)]
    assert all(torch.equal(x, y) for (x, _), y in zip(kept, again, strict=True))


def test_unknown_pipeline_is_named(data, tmp_path):
    dcfg = OmegaConf.merge(dataset_config("rafdb", tmp_path), {"pipeline": "fast"})
    with pytest.raises(UserError, match="dataset.pipeline='fast'"):
        build_pipeline(dcfg, data, Pre(28, MEAN, STD), torch.device("cpu"),
                       memory_format=torch.channels_last, cache_dir=tmp_path)  # fmt: skip


def test_val_rows_point_into_the_train_source(data):
    assert data.val.source == "train"
    assert data.val.names == [data.files["train"].names[r] for r in data.val.rows]
    assert np.intersect1d(data.val.rows, data.train.rows).size == 0


def test_device_resident_images_give_the_same_batches_as_memory_mapped(data, tmp_path):
    """The GPU path (images, order and indices on the device) exercised on CPU RAM: same batches."""
    mapped = pipeline("cached", data, tmp_path)
    resident = pipeline("cached", data, tmp_path)
    store = mapped.store("train")
    resident.stores["train"] = ImageStore(store.host, store.device, on_device=True)
    assert mapped.store("train").images is None and resident.store("train").images is not None
    for train in (True, False):
        a = list(mapped.batches(data.train, train, 4, seed=5))
        b = list(resident.batches(data.train, train, 4, seed=5))
        assert len(a) == len(b)
        for (xa, ia), (xb, ib) in zip(a, b, strict=True):
            assert torch.equal(ia, ib) and torch.equal(xa, xb)


@pytest.mark.parametrize("fmt", ["fer2013", "affectnet"])
def test_pixel_tables_and_face_boxes_reach_both_pipelines_alike(fmt, tmp_path):
    """Images from CSV pixels (FER2013) and face-box crops (AffectNet) decode the same way into
    the cache as per sample."""
    from scn.data.datasets import dataset_config
    from tests.formats_affectnet import write_affectnet_csv
    from tests.formats_fer import write_fer2013_csv

    write = {"fer2013": lambda r: write_fer2013_csv(r, 1, 1, 1),
             "affectnet": lambda r: write_affectnet_csv(r, 1, 1, size=30)}[fmt]  # fmt: skip
    dcfg = dataset_config(fmt, write(tmp_path / fmt))
    dcfg.cache_size = 24  # AffectNet's crops differ in size
    data = load_dataset(dcfg, tmp_path)
    batches = {}
    for kind in ("cached", "files"):
        dcfg.pipeline = kind
        pipe = build_pipeline(dcfg, data, Pre(24, MEAN, STD), torch.device("cpu"),
                              cache_dir=tmp_path / "cache")  # fmt: skip
        batches[kind] = list(pipe.batches(data.test, False, 4))
    cached, files = batches["cached"], batches["files"]
    assert sum(len(i) for _, i in cached) == len(data.test) > 0
    for (xc, _), (xf, _) in zip(cached, files, strict=True):
        # the cache resizes each crop once to 24 px in uint8, the per-sample path resizes the crop
        # straight to 24 px: equal for FER2013's stored size, close for AffectNet's crops
        limit = 1e-5 if fmt == "fer2013" else 0.1
        assert (xc - xf).abs().mean().item() < limit
