"""The ImageFolder reader: class order (sorted, numeric, or dataset.class_names), configurable split
folders, what counts as an image, and a message naming the folder or file for every bad layout."""

from __future__ import annotations

import functools
from pathlib import Path

import numpy as np
import pytest
from omegaconf.errors import ConfigKeyError

from scn.data.readers import folder, get_reader
from scn.errors import UserError
from tests.conftest import compose_cfg, read_dataset
from tests.formats_affectnet import FER_CLASSES, write_folder_tree


@pytest.fixture(scope="module")
def composed():
    """dataset=folder composed once (composing costs ~0.3 s); each read works on a copy."""
    return compose_cfg(["dataset=folder"])


@pytest.fixture
def read(composed):
    return functools.partial(read_dataset, composed)


def touch(root: Path, *names: str) -> Path:
    for n in names:
        (root / n).parent.mkdir(parents=True, exist_ok=True)
        (root / n).write_bytes(b"")
    return root


def test_config_composes_with_folder_defaults(composed):
    dcfg = composed.dataset
    assert dcfg.format == "folder" and dcfg.name == "folder"
    assert dcfg.root is None and dcfg.class_names is None and dcfg.cache_size is None
    assert dict(dcfg.split_dirs) == {"train": "train", "test": "test", "val": None}
    assert dcfg.noise.rate == 0.0  # shared keys come from rafdb.yaml


def test_generated_tree_sorted_classes_names_and_counts(tmp_path, read):
    root = write_folder_tree(tmp_path, train_per_class=3, test_per_class=2, val_per_class=1)
    ds = read(root)  # split_dirs.val is null: the val folder is not read
    assert ds.class_names == list(FER_CLASSES)
    assert set(ds.splits) == {"train", "test"}
    train = ds.splits["train"]
    assert np.bincount(train.labels).tolist() == [3] * 7
    assert train.images.names[:4] == [
        "train/angry/angry_0000.jpg",
        "train/angry/angry_0001.jpg",
        "train/angry/angry_0002.jpg",
        "train/disgust/disgust_0000.jpg",
    ]
    assert train.labels[:4].tolist() == [0, 0, 0, 1]
    assert train.images.paths == [root / n for n in train.images.names]
    assert train.images.boxes is None and train.images.missing() == []
    assert np.bincount(ds.splits["test"].labels).tolist() == [2] * 7
    assert ds.notes == [
        "folder train (train/): 21 images in 7 class folders, 0 non-image or hidden files ignored",
        "folder test (test/): 14 images in 7 class folders, 0 non-image or hidden files ignored",
    ]
    with_val = read(root, "split_dirs.val=val")
    assert with_val.splits["val"].images.names[0] == "val/angry/angry_0000.jpg"
    assert with_val.splits["val"].labels.tolist() == list(range(7))


def test_numeric_folders_sort_numerically(tmp_path, read):
    classes = [str(i) for i in (10, 2, 1, 9)]
    root = write_folder_tree(tmp_path, classes=classes, train_per_class=1, test_per_class=1, size=8)
    ds = read(root)
    assert ds.class_names == ["1", "2", "9", "10"]
    names = ds.splits["train"].images.names
    assert [n.split("/")[1] for n in names] == ["1", "2", "9", "10"]
    assert ds.splits["train"].labels.tolist() == [0, 1, 2, 3]
    # mixed names fall back to alphabetical order
    touch(root, "train/x/a.jpg")
    assert read(root).class_names == ["1", "10", "2", "9", "x"]


def test_class_names_give_the_order_and_must_cover_folders(tmp_path, read):
    root = write_folder_tree(
        tmp_path, classes=("happy", "sad", "angry"), train_per_class=2, test_per_class=1, size=8
    )
    ds = read(root, "class_names=[sad,angry,happy]")
    assert ds.class_names == ["sad", "angry", "happy"]
    assert ds.splits["train"].images.names[0] == "train/sad/sad_0000.jpg"
    assert ds.splits["train"].labels.tolist() == [0, 0, 1, 1, 2, 2]
    assert ds.splits["test"].images.names == [
        "test/sad/sad_0000.jpg",
        "test/angry/angry_0000.jpg",
        "test/happy/happy_0000.jpg",
    ]
    assert ds.splits["test"].labels.tolist() == [0, 1, 2]
    with pytest.raises(UserError) as e:
        read(root, "class_names=[sad,happy]")
    assert "class folder" in str(e.value) and str(root / "train" / "angry") in str(e.value)
    assert "[sad, happy]" in str(e.value)
    with pytest.raises(UserError, match=r"class 'fear' has no train images: .*train/fear"):
        read(root, "class_names=[sad,angry,happy,fear]")
    with pytest.raises(UserError, match=r"dataset.class_names lists sad more than once"):
        read(root, "class_names=[sad,angry,happy,sad]")


def test_integer_class_names_match_numeric_folders(tmp_path):
    root = write_folder_tree(
        tmp_path, classes=("1", "2", "3"), train_per_class=1, test_per_class=1, size=8
    )
    dcfg = compose_cfg(["dataset=folder", f"dataset.root={root}", "dataset.class_names=[3,1,2]"])
    ds = folder.read(dcfg.dataset, root)  # Hydra parses 3,1,2 as ints
    assert ds.class_names == ["3", "1", "2"]
    assert ds.splits["train"].images.names == [
        "train/3/3_0000.jpg",
        "train/1/1_0000.jpg",
        "train/2/2_0000.jpg",
    ]


def test_class_without_train_images(tmp_path, read):
    root = write_folder_tree(
        tmp_path, classes=("a", "b"), train_per_class=1, test_per_class=1, size=8
    )
    touch(root, "test/c/x.jpg")  # only in test
    with pytest.raises(UserError, match=r"class 'c' has no train images: .*train/c"):
        read(root)
    (root / "test" / "c" / "x.jpg").unlink()
    (root / "train" / "b" / "b_0000.jpg").unlink()  # folder present, empty
    with pytest.raises(UserError, match=r"class 'b' has no train images"):
        read(root)


def test_custom_split_dirs_and_missing_split_folders(tmp_path, read):
    root = write_folder_tree(
        tmp_path,
        classes=("0", "1"),
        train_per_class=2,
        test_per_class=1,
        val_per_class=1,
        size=8,
        split_dirs=("Training", "PublicTest", "PrivateTest"),
    )
    ds = read(root, "split_dirs={train: Training, test: PublicTest, val: PrivateTest}")
    assert set(ds.splits) == {"train", "test", "val"}
    assert ds.splits["val"].images.names == ["PrivateTest/0/0_0000.jpg", "PrivateTest/1/1_0000.jpg"]
    assert ds.notes[2].startswith("folder val (PrivateTest/): 2 images in 2 class folders")
    with pytest.raises(UserError, match=r"train folder not found: .*/train; .*split_dirs.train"):
        read(root)
    with pytest.raises(UserError, match=r"test folder not found: .*/nope"):
        read(root, "split_dirs={train: Training, test: nope}")
    with pytest.raises(UserError, match=r"val folder not found: .*/val;"):
        read(root, "split_dirs={train: Training, test: PublicTest, val: val}")
    with pytest.raises(UserError, match=r"dataset.split_dirs.test is not set"):
        read(root, "split_dirs={train: Training, test: null}")
    # a typo'd split is refused by the YAML's keys, and by the reader when forced with `+`
    dirs = "split_dirs={train: Training, test: PublicTest, holdout: x}"
    with pytest.raises(ConfigKeyError):
        read(root, dirs)
    forced = ["dataset=folder", f"dataset.root={root}", "+dataset.split_dirs.holdout=x"]
    with pytest.raises(UserError, match=r"unknown split\(s\) holdout; use train, test, val"):
        folder.read(compose_cfg(forced).dataset, root)


def test_what_counts_as_an_image(tmp_path, read):
    root = touch(
        tmp_path,
        "train/happy/b.JpEg",
        "train/happy/sub/deeper/a.PNG",
        "train/happy/c.webp",
        "train/happy/d.tif",
        "train/happy/notes.txt",
        "train/happy/._b.jpg",  # macOS AppleDouble file: not an image despite its suffix
        "train/happy/.cache/e.jpg",
        "train/.DS_Store",
        "train/README.md",
        "train/.ipynb_checkpoints/f.jpg",
        "test/happy/z.bmp",
        "test/happy/y.TIFF",
    )
    ds = read(root)
    assert ds.class_names == ["happy"]
    assert ds.splits["train"].images.names == [
        "train/happy/b.JpEg",
        "train/happy/c.webp",
        "train/happy/d.tif",
        "train/happy/sub/deeper/a.PNG",
    ]
    assert ds.splits["test"].images.names == ["test/happy/y.TIFF", "test/happy/z.bmp"]
    # notes.txt, ._b.jpg, .cache/, .DS_Store, README.md, .ipynb_checkpoints/
    assert ds.notes[0].endswith("1 class folders, 6 non-image or hidden files ignored")


def test_image_outside_a_class_folder_and_empty_split(tmp_path, read):
    root = touch(tmp_path / "a", "train/happy/a.jpg", "train/stray.jpg", "test/happy/b.jpg")
    with pytest.raises(
        UserError, match=r"train/stray.jpg is an image directly in the train folder"
    ):
        read(root)
    root = touch(tmp_path / "b", "train/happy/a.jpg", "test/happy/notes.txt")
    with pytest.raises(UserError, match=r"/test: the test split has no images"):
        read(root)


def test_reader_module_is_registered():
    assert get_reader("folder") is folder.read
