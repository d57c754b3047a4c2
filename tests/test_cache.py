"""The decoded-image cache: right pixels, one build shared by jobs, never stale, named errors."""

import os
import threading
import time

import numpy as np
import pytest
import torch
from PIL import Image

import scn.data.cache as cache
from scn.data.cache import ImageStore, decoded_images
from scn.data.sources import FileImages, PixelImages, load_rgb
from scn.errors import UserError
from tests.conftest import write_rafdb

ROWS = [(f"train_{i:05d}.jpg", i % 7 + 1) for i in range(1, 9)] + [("test_0001.jpg", 1)]


@pytest.fixture
def dataset(tmp_path):
    root = write_rafdb(tmp_path / "raf", ROWS, size=24)
    label = root / "EmoLabel/list_patition_label.txt"
    paths = sorted((root / "Image/aligned").glob("train_*"))
    return root, label, paths


def build(dataset, cache_dir, **kw):
    root, label, paths = dataset
    return decoded_images(cache_dir, "train", FileImages(paths), **kw)


def count_builds(monkeypatch) -> list[int]:
    calls = []
    real = cache._build

    def spy(*args, **kwargs):
        calls.append(1)
        return real(*args, **kwargs)

    monkeypatch.setattr(cache, "_build", spy)
    return calls


def test_cache_holds_the_decoded_pixels_memory_mapped(dataset, tmp_path):
    arr = build(dataset, tmp_path / "c")
    assert isinstance(arr, np.memmap) and arr.shape == (8, 24, 24, 3) and arr.dtype == np.uint8
    for k, p in enumerate(dataset[2]):
        assert np.array_equal(arr[k], np.asarray(load_rgb(p)))
    assert list((tmp_path / "c/decoded").glob(".*")) == []  # no temp files left behind


def test_second_use_reads_the_cache_without_decoding(dataset, tmp_path, monkeypatch):
    build(dataset, tmp_path / "c")
    calls = count_builds(monkeypatch)
    build(dataset, tmp_path / "c")
    assert calls == []


def test_changed_image_or_face_box_is_never_served_stale(dataset, tmp_path):
    root, label, paths = dataset
    first = np.array(build(dataset, tmp_path / "c"))
    Image.new("RGB", (24, 24), (9, 99, 199)).save(paths[3], format="JPEG", quality=100)
    os.utime(paths[3], ns=(time.time_ns(), time.time_ns() + 10**9))  # a later mtime
    second = np.array(build(dataset, tmp_path / "c"))
    assert np.array_equal(second[3], np.asarray(load_rgb(paths[3])))
    assert not np.array_equal(first[3], second[3])
    label.write_text(label.read_text() + "\n")  # labels do not decide pixels: same cache
    build(dataset, tmp_path / "c")
    assert len(list((tmp_path / "c/decoded").glob("*.npy"))) == 2
    boxes = np.tile([2, 3, 12, 12], (len(paths), 1))
    cropped = decoded_images(tmp_path / "c", "train", FileImages(paths, boxes=boxes), 12)
    assert len(list((tmp_path / "c/decoded").glob("*.npy"))) == 3
    assert np.array_equal(cropped[3], np.asarray(load_rgb(paths[3]))[3:15, 2:14])


def test_pixel_tables_are_cached_and_keyed_by_their_pixels(tmp_path):
    table = tmp_path / "fer.csv"
    table.write_text("emotion,pixels,Usage\n")
    pixels = np.random.default_rng(0).integers(0, 256, (5, 6, 6), dtype=np.uint8)
    images = PixelImages(pixels, [f"Training/{i}.png" for i in range(5)], table, np.arange(2, 7))
    arr = decoded_images(tmp_path / "c", "train", images)
    assert arr.shape == (5, 6, 6, 3) and np.array_equal(arr[2, :, :, 1], pixels[2])
    pixels[2, 0, 0] ^= 1  # other pixels, other cache
    decoded_images(tmp_path / "c", "train", images)
    assert len(list((tmp_path / "c/decoded").glob("*.npy"))) == 2


def test_two_jobs_starting_together_build_once(dataset, tmp_path, monkeypatch):
    calls = count_builds(monkeypatch)
    results, errors = [], []

    def job():
        try:
            results.append(np.array(build(dataset, tmp_path / "c")))
        except Exception as e:  # pragma: no cover - reported below
            errors.append(e)

    threads = [threading.Thread(target=job) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == [] and len(calls) == 1
    assert all(np.array_equal(r, results[0]) for r in results)


def test_mixed_sizes_need_a_declared_cache_size(tmp_path):
    root = write_rafdb(tmp_path / "raf", ROWS, size=24)
    paths = sorted((root / "Image/aligned").glob("train_*"))
    Image.new("RGB", (30, 20), (1, 2, 3)).save(paths[5], format="JPEG")
    with pytest.raises(UserError, match=r"train_00006_aligned.jpg is 30x20.*dataset.cache_size"):
        decoded_images(tmp_path / "c", "train", FileImages(paths))
    assert list((tmp_path / "c/decoded").glob("*.npy")) == []
    assert list((tmp_path / "c/decoded").glob(".*.npy")) == []
    arr = decoded_images(tmp_path / "c", "train", FileImages(paths), cache_size=16)
    assert arr.shape == (8, 16, 16, 3)


def test_unreadable_image_is_named_and_leaves_no_cache(dataset, tmp_path):
    paths = dataset[2]
    paths[2].write_bytes(b"not a jpeg")
    with pytest.raises(UserError, match="train_00003_aligned.jpg"):
        build(dataset, tmp_path / "c")
    assert list((tmp_path / "c/decoded").glob("*.npy")) == []


def test_damaged_cache_file_says_how_to_rebuild(dataset, tmp_path):
    build(dataset, tmp_path / "c")
    (npy,) = (tmp_path / "c/decoded").glob("*.npy")
    npy.write_bytes(npy.read_bytes()[:200])
    with pytest.raises(UserError, match="delete it to rebuild"):
        build(dataset, tmp_path / "c")


def test_store_gathers_rows_as_channels_last_uint8(dataset, tmp_path):
    arr = build(dataset, tmp_path / "c")
    store = ImageStore(arr, torch.device("cpu"))
    batch = store.gather(torch.tensor([5, 0, 5]))
    assert batch.shape == (3, 3, 24, 24) and batch.dtype == torch.uint8
    assert batch.is_contiguous(memory_format=torch.channels_last)
    assert torch.equal(batch[0], torch.from_numpy(np.array(arr[5])).permute(2, 0, 1))
    batch[1].zero_()  # a gathered batch is a copy: augmenting it in place leaves the cache alone
    assert np.array(arr[0]).any()
