"""RAF-DB layout loading, label files, noise and splits, and the errors for bad input."""

import numpy as np
import pytest
from omegaconf import OmegaConf

from scn.data.datasets import dataset_config, load_dataset
from scn.data.labels import RAFDB_LABEL_FILE
from scn.data.noise import symmetric_noise
from scn.data.sources import load_rgb
from scn.errors import UserError
from tests.conftest import write_rafdb

ROWS = [(f"train_{i:05d}.jpg", i % 7 + 1) for i in range(1, 15)] + [
    (f"test_{i:04d}.jpg", i % 7 + 1) for i in range(1, 8)
]


def dcfg(root, **kw):
    return OmegaConf.merge(dataset_config("rafdb", root), kw)


def test_loads_rafdb_layout_split_by_prefix(tmp_path):
    root = write_rafdb(tmp_path / "raf", ROWS)
    data = load_dataset(dcfg(root), tmp_path)
    assert len(data.train) == 14 and len(data.test) == 7 and data.val is None
    assert data.train.labels.tolist() == [i % 7 for i in range(1, 15)]
    assert data.train.images.paths[0] == root / "Image/aligned/train_00001_aligned.jpg"
    assert not data.train.noisy.any()


@pytest.mark.parametrize("mode", ["L", "RGBA", "P", "CMYK"])
def test_any_image_mode_becomes_rgb(tmp_path, mode):
    root = write_rafdb(tmp_path / "raf", ROWS[:2] + ROWS[-1:], mode=mode)
    data = load_dataset(dcfg(root), tmp_path)
    img = data.train.images.load(0)
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
        UserError, match=r"1 train images are missing, e\.g\. .*train_00003_aligned\.jpg"
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


def test_label_csv_names_images_as_the_dataset_does(tmp_path):
    root = write_rafdb(tmp_path / "raf", ROWS)
    names = ["Surprise", "Fear", "Disgust", "Happiness", "Sadness", "Anger", "Neutral"]
    lines = ["path,label"]
    for k, (n, lab) in enumerate(r for r in ROWS if r[0].startswith("train")):
        new = lab % 7  # the next class, 0-based
        lines.append(f"{n},{names[new]}" if k % 2 else f"{n},{new}")  # by name or by index
    labels = tmp_path / "noisy.csv"
    labels.write_text("\n".join(lines))
    data = load_dataset(dcfg(root, label_file=str(labels)), tmp_path)
    clean = np.array([i % 7 for i in range(1, 15)])
    assert data.train.labels.tolist() == ((clean + 1) % 7).tolist()
    labels.write_text("path,label\ntrain_00001.jpg,Joy\n")
    with pytest.raises(UserError, match=r"noisy\.csv:2: label 'Joy' is neither a class name"):
        load_dataset(dcfg(root, label_file=str(labels)), tmp_path)
    labels.write_text("train_00001.jpg,1,extra\n")
    with pytest.raises(UserError, match=r"noisy\.csv:1: expected 2 columns"):
        load_dataset(dcfg(root, label_file=str(labels)), tmp_path)


def test_skip_unreadable_logs_counts_and_skips(tmp_path, caplog):
    root = write_rafdb(tmp_path / "raf", ROWS)
    (root / "Image/aligned/train_00003_aligned.jpg").unlink()
    (root / "Image/aligned/train_00005_aligned.jpg").write_bytes(b"not a jpeg")
    (root / "Image/aligned/test_0002_aligned.jpg").write_bytes(b"\xff\xd8 truncated")
    data = load_dataset(dcfg(root, skip_unreadable=True), tmp_path / "cache")
    assert len(data.train) == 12 and len(data.test) == 6
    assert "train_00003.jpg" not in data.train.names and "train_00005.jpg" not in data.train.names
    assert data.train.labels.tolist() == [i % 7 for i in range(1, 15) if i not in (3, 5)]
    assert "train: 2 missing or unreadable images skipped" in "\n".join(data.notes)
    assert "train_00003_aligned.jpg: missing" in caplog.text
    assert "train_00005_aligned.jpg" in caplog.text and "test_0002_aligned.jpg" in caplog.text
    # the verdict is kept: a second load decodes nothing
    assert len(list((tmp_path / "cache/checked").glob("*.json"))) == 2  # train and test
    import scn.data.check as check

    def fail(*_):
        raise AssertionError("decoded again")

    check._Try.__getitem__, saved = fail, check._Try.__getitem__
    try:
        again = load_dataset(dcfg(root, skip_unreadable=True), tmp_path / "cache")
    finally:
        check._Try.__getitem__ = saved
    assert again.train.names == data.train.names
    with pytest.raises(UserError, match="set dataset.skip_unreadable=true"):
        load_dataset(dcfg(root), tmp_path / "cache")


@pytest.mark.parametrize("name", ["rafdb", "synthetic", "affectnet", "identities"])
def test_tools_read_a_dataset_option_as_run_py_composes_it(name, tmp_path):
    from scn.data.datasets import dataset_config
    from tests.conftest import compose_cfg

    composed = compose_cfg([f"dataset={name}", f"dataset.root={tmp_path}"]).dataset
    tool = dataset_config(name, tmp_path)
    assert OmegaConf.to_container(tool, resolve=True) == OmegaConf.to_container(
        composed, resolve=True
    )
    assert tool.root == str(tmp_path) and tool.name == name and tool.noise.rate == 0.0
    with pytest.raises(UserError, match="unknown dataset 'raf' .*known: .*rafdb"):
        dataset_config("raf", tmp_path)
