"""RAF-DB layout loading, label files, noise and splits, and the errors for bad input."""

import numpy as np
import pytest
from omegaconf import OmegaConf

from scn.data.datasets import load_dataset, load_rgb
from scn.data.labels import RAFDB_LABEL_FILE
from scn.data.noise import symmetric_noise
from scn.errors import UserError
from tests.conftest import write_rafdb

ROWS = [(f"train_{i:05d}.jpg", i % 7 + 1) for i in range(1, 15)] + [
    (f"test_{i:04d}.jpg", i % 7 + 1) for i in range(1, 8)
]


def dcfg(root, **kw):
    base = OmegaConf.load("conf/dataset/rafdb.yaml")
    base.root = str(root)
    return OmegaConf.merge(base, kw)


def test_loads_rafdb_layout_split_by_prefix(tmp_path):
    root = write_rafdb(tmp_path / "raf", ROWS)
    data = load_dataset(dcfg(root), tmp_path)
    assert len(data.train) == 14 and len(data.test) == 7 and data.val is None
    assert data.train.labels.tolist() == [i % 7 for i in range(1, 15)]
    assert data.train.paths[0] == root / "Image/aligned/train_00001_aligned.jpg"
    assert not data.train.noisy.any()


@pytest.mark.parametrize("mode", ["L", "RGBA", "P", "CMYK"])
def test_any_image_mode_becomes_rgb(tmp_path, mode):
    root = write_rafdb(tmp_path / "raf", ROWS[:2] + ROWS[-1:], mode=mode)
    data = load_dataset(dcfg(root), tmp_path)
    img = load_rgb(data.train.paths[0])
    assert img.mode == "RGB" and img.size == (24, 24)


def test_label_file_in_scn_list_format_replaces_train_labels_only(tmp_path):
    root = write_rafdb(tmp_path / "raf", ROWS)
    lines = [
        f"/old/abs/path/{n[:-4]}_aligned.jpg {(lab % 7)}"
        for n, lab in ROWS
        if n.startswith("train")
    ]
    noisy_file = tmp_path / "noise10.txt"
    noisy_file.write_text("\r\n".join(lines))
    data = load_dataset(dcfg(root, label_file=str(noisy_file)), tmp_path)
    clean = np.array([i % 7 for i in range(1, 15)])
    assert data.train.clean_labels.tolist() == clean.tolist()
    assert data.train.labels.tolist() == ((clean + 1) % 7).tolist()
    assert data.train.noisy.all()
    assert data.test.labels.tolist() == data.test.clean_labels.tolist()


def test_label_file_must_cover_every_train_image(tmp_path):
    root = write_rafdb(tmp_path / "raf", ROWS)
    partial = tmp_path / "partial.txt"
    partial.write_text("train_00001.jpg 3\n")
    with pytest.raises(UserError, match="no label for 13 of 14 train images"):
        load_dataset(dcfg(root, label_file=str(partial)), tmp_path)
    extra = tmp_path / "extra.txt"
    extra.write_text("\n".join(f"{n} 1" for n, _ in ROWS))
    with pytest.raises(UserError, match=r"extra\.txt:15: test_0001\.jpg is not a train image"):
        load_dataset(dcfg(root, label_file=str(extra)), tmp_path)


def test_noise_and_val_split_compose(tmp_path):
    rows = [(f"train_{i:05d}.jpg", i % 7 + 1) for i in range(1, 141)] + ROWS[-7:]
    root = write_rafdb(tmp_path / "raf", rows, size=8)
    data = load_dataset(dcfg(root, noise={"rate": 0.25}, val_fraction=0.2), tmp_path)
    assert len(data.train) + len(data.val) == 140
    assert data.train.noisy.sum() + data.val.noisy.sum() == 35  # exact count over all of train
    noisy, _ = symmetric_noise(np.array([i % 7 for i in range(1, 141)]), 0.25, 0, 7)
    assert len(data.val) == sum(
        round(0.2 * c) for c in np.bincount(noisy)
    )  # stratified, noisy labels
    assert any("symmetric noise: 35 of 140" in n for n in data.notes)


def test_missing_root_names_path_and_suggests_demo(tmp_path):
    with pytest.raises(UserError) as e:
        load_dataset(dcfg(tmp_path / "raf-basic"), tmp_path)
    assert str(tmp_path / "raf-basic") in str(e.value) and "experiment=demo" in str(e.value)


def test_missing_label_file_missing_image_and_empty_split(tmp_path):
    root = write_rafdb(tmp_path / "raf", ROWS)
    (root / "Image/aligned/train_00003_aligned.jpg").unlink()
    with pytest.raises(
        UserError, match=r"1 train images listed .* are missing, e\.g\. .*train_00003_aligned\.jpg"
    ):
        load_dataset(dcfg(root), tmp_path)
    (root / RAFDB_LABEL_FILE).unlink()
    with pytest.raises(UserError, match="label file not found"):
        load_dataset(dcfg(root), tmp_path)
    only_train = write_rafdb(tmp_path / "raf2", ROWS[:3])
    with pytest.raises(UserError, match="the test split is empty"):
        load_dataset(dcfg(only_train), tmp_path)


def test_unknown_prefix_and_corrupt_image(tmp_path):
    root = write_rafdb(tmp_path / "raf", ROWS + [("val_0001.jpg", 1)])
    with pytest.raises(
        UserError, match=r"list_patition_label\.txt:22: val_0001\.jpg starts with neither"
    ):
        load_dataset(dcfg(root), tmp_path)
    bad = tmp_path / "bad_aligned.jpg"
    bad.write_bytes(b"\xff\xd8 not really a jpeg")
    with pytest.raises(UserError, match="cannot read image .*bad_aligned.jpg"):
        load_rgb(bad)
