"""The AffectNet reader on both releases: class names and counts, the 8-10 and Contempt rules, the
7/8-class switch, face-box crops, and a message naming file and line for every bad input."""

from __future__ import annotations

import csv
import functools
import json
import re
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from scn.data.readers import affectnet, get_reader
from scn.errors import UserError
from tests.conftest import compose_cfg, read_dataset
from tests.formats_affectnet import (
    AFFECTNET_CSV_HEADER,
    affectnet_csv_row,
    write_affectnet_csv,
    write_affectnet_lists,
    write_affectnet_npy,
)

EIGHT = ["Neutral", "Happy", "Sad", "Surprise", "Fear", "Disgust", "Anger", "Contempt"]


@pytest.fixture(scope="module")
def composed():
    """dataset=affectnet composed once (composing costs ~0.3 s); each read works on a copy."""
    return compose_cfg(["dataset=affectnet"])


@pytest.fixture
def read(composed):
    return functools.partial(read_dataset, composed)


def csv_rows(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


# ---------------------------------------------------------------- the csv release


def test_config_composes_with_affectnet_defaults(composed):
    dcfg = composed.dataset
    assert dcfg.format == "affectnet"
    assert dcfg.name == "affectnet"
    assert dcfg.num_classes == 8 and dcfg.class_names is None and dcfg.release == "auto"
    assert dcfg.cache_size == 224
    assert dcfg.sampler == "uniform"
    assert str(dcfg.root).endswith("no-data-here/AffectNet")  # ${paths.data_dir}/AffectNet
    assert dcfg.noise.rate == 0.0 and dcfg.val_fraction == 0.0  # shared keys come from rafdb.yaml


def test_generated_csv_release_reads_as_written(tmp_path, read):
    root = write_affectnet_csv(tmp_path, train_per_class=3, test_per_class=2, dropped=1)
    ds = read(root)
    assert ds.class_names == EIGHT
    assert set(ds.splits) == {"train", "test"}
    for split, fname, per_class in (("train", "training.csv", 3), ("test", "validation.csv", 2)):
        s = ds.splits[split]
        assert np.bincount(s.labels, minlength=8).tolist() == [per_class] * 8
        rows = csv_rows(root / "Manually_Annotated_file_lists" / fname)
        kept = [r for r in rows if int(r["expression"]) < 8]
        assert len(rows) == len(kept) + 3  # one each of 8, 9, 10 dropped
        assert s.images.names == [r["subDirectory_filePath"] for r in kept]
        assert s.labels.tolist() == [int(r["expression"]) for r in kept]
        assert s.images.paths == [
            root / "Manually_Annotated_Images" / r["subDirectory_filePath"] for r in kept
        ]
        boxes = [
            [int(r[c]) for c in ("face_x", "face_y", "face_width", "face_height")] for r in kept
        ]
        assert s.images.boxes.tolist() == boxes
        assert s.images.missing() == []  # the generator wrote every image the lists name
        assert re.fullmatch(r"\d+/[0-9a-f]{56}\.jpg", s.images.names[0])
    assert ds.notes == [
        "affectnet train (training.csv): 24 kept, 3 dropped as None/Uncertain/No-Face (ids 8-10), "
        "Contempt kept (num_classes=8)",
        "affectnet test (validation.csv): 16 kept, 3 dropped as None/Uncertain/No-Face (ids 8-10), "
        "Contempt kept (num_classes=8)",
    ]


def crafted(root: Path, line_end: str = "\n") -> Path:
    train = [
        affectnet_csv_row("1/a.jpg", (10, 20, 30, 40), 0),
        affectnet_csv_row("1/b.jpg", ("5.0", "6", "7.0", "8"), 7),
        affectnet_csv_row("2/c.jpg", (1, 1, 9, 9), 8),
        affectnet_csv_row("2/d.jpg", (1, 1, 9, 9), 9),
        affectnet_csv_row("2/e.jpg", ("", "", "", ""), 10),  # a No-Face row's box is never read
        affectnet_csv_row("3/f.JPG", (0, 0, 12, 12), 6),
    ]
    test = [
        affectnet_csv_row("4/g.png", (2, 3, 4, 5), 1),
        affectnet_csv_row("4/h.jpg", (1, 1, 3, 3), 7),
    ]
    write_affectnet_lists(root, train, test)
    if line_end != "\n":
        for f in (root / "Manually_Annotated_file_lists").iterdir():
            f.write_bytes(f.read_bytes().replace(b"\n", line_end.encode()).rstrip(b"\r\n"))
    return root


@pytest.mark.parametrize("line_end", ["\n", "\r\n"])
def test_crafted_rows_eight_classes(tmp_path, line_end, read):
    ds = read(crafted(tmp_path, line_end))
    train, test = ds.splits["train"], ds.splits["test"]
    assert train.images.names == ["1/a.jpg", "1/b.jpg", "3/f.JPG"]
    assert train.labels.tolist() == [0, 7, 6]
    assert train.images.boxes.tolist() == [[10, 20, 30, 40], [5, 6, 7, 8], [0, 0, 12, 12]]
    assert test.images.names == ["4/g.png", "4/h.jpg"] and test.labels.tolist() == [1, 7]
    assert "3 dropped as None/Uncertain/No-Face" in ds.notes[0]
    assert "0 dropped as None/Uncertain/No-Face" in ds.notes[1]


def test_seven_classes_drop_contempt(tmp_path, read):
    ds = read(crafted(tmp_path), "num_classes=7")
    assert ds.class_names == EIGHT[:7]
    assert ds.splits["train"].images.names == ["1/a.jpg", "3/f.JPG"]
    assert ds.splits["train"].labels.tolist() == [0, 6]
    assert ds.splits["test"].images.names == ["4/g.png"]
    assert ds.notes == [
        "affectnet train (training.csv): 2 kept, 3 dropped as None/Uncertain/No-Face (ids 8-10), "
        "1 Contempt (num_classes=7)",
        "affectnet test (validation.csv): 1 kept, 0 dropped as None/Uncertain/No-Face (ids 8-10), "
        "1 Contempt (num_classes=7)",
    ]


def test_seven_classes_on_generated_release(tmp_path):
    root = write_affectnet_csv(tmp_path, train_per_class=2, test_per_class=1, dropped=2)
    dcfg = compose_cfg(["dataset=affectnet", f"dataset.root={root}", "dataset.num_classes=7"])
    ds = affectnet.read(dcfg.dataset, root)  # the switch as given on the command line
    assert ds.class_names == EIGHT[:7]
    assert np.bincount(ds.splits["train"].labels).tolist() == [2] * 7
    assert np.bincount(ds.splits["test"].labels).tolist() == [1] * 7
    assert "6 dropped as None/Uncertain/No-Face" in ds.notes[0] and "2 Contempt" in ds.notes[0]


def test_class_names_rename_and_bad_class_settings(tmp_path, read):
    root = crafted(tmp_path)
    names = "[neu,hap,sad,sur,fea,dis,ang]"
    ds = read(root, "num_classes=7", f"class_names={names}")
    assert ds.class_names == ["neu", "hap", "sad", "sur", "fea", "dis", "ang"]
    with pytest.raises(
        UserError, match=r"dataset.class_names has 7 names but dataset.num_classes=8"
    ):
        read(root, f"class_names={names}")
    with pytest.raises(UserError, match=r"dataset.num_classes=6; AffectNet has 8 expressions"):
        read(root, "num_classes=6")


def test_face_box_crop_returns_exact_pixels(tmp_path, read):
    # 20x16 PNG, four quadrants of distinct colours; boxes pick one quadrant / clip at the border
    arr = np.zeros((16, 20, 3), np.uint8)
    arr[:8, :10] = (255, 0, 0)
    arr[:8, 10:] = (0, 255, 0)
    arr[8:, :10] = (0, 0, 255)
    arr[8:, 10:] = (255, 255, 0)
    arr[11, 13] = (7, 8, 9)  # one odd pixel so a shifted crop cannot pass
    img_dir = tmp_path / "Manually_Annotated_Images" / "5"
    img_dir.mkdir(parents=True)
    Image.fromarray(arr).save(img_dir / "q.png")
    Image.fromarray(arr).save(img_dir / "r.png")
    write_affectnet_lists(
        tmp_path,
        [affectnet_csv_row("5/q.png", (10, 8, 10, 8), 3)],
        [affectnet_csv_row("5/r.png", (-2, 4, 14, 30), 3)],
    )
    ds = read(tmp_path)
    got = np.asarray(ds.splits["train"].images.load(0))
    assert got.shape == (8, 10, 3)
    np.testing.assert_array_equal(got, arr[8:16, 10:20])
    clipped = np.asarray(ds.splits["test"].images.load(0))  # x<0 and y+h>16 clip to the image
    np.testing.assert_array_equal(clipped, arr[4:16, 0:12])


def write_lists(root: Path, train_text: str, test_text: str | None = None) -> Path:
    lists = root / "Manually_Annotated_file_lists"
    lists.mkdir(parents=True, exist_ok=True)
    (lists / "training.csv").write_text(train_text)
    if test_text is not None:
        (lists / "validation.csv").write_text(test_text)
    return root


OK = "1/ok.jpg,1,2,30,30,1.0;2.0,1,0.5,0.5"
OK_TEST = AFFECTNET_CSV_HEADER + "\n9/t.jpg,1,2,30,30,1.0;2.0,2,0.5,0.5\n"


@pytest.mark.parametrize(
    "body,fragment",
    [
        (f"{OK}\n1/x.jpg,1,2,30,30,1.0;2.0,11,0.5,0.5", "training.csv:3: expression '11'"),
        (f"{OK}\n1/x.jpg,1,2,30,30,1.0;2.0,happy,0.5,0.5", "training.csv:3: expression 'happy'"),
        ("1/x.jpg,1,2,30,30,1.0;2.0,-1,0.5,0.5", "training.csv:2: expression '-1'"),
        ("1/x.jpg,1,2,30,30,1.0;2.0,,0.5,0.5", "training.csv:2: expression ''"),
        ("1/x.jpg,134.5,2,30,30,1.0;2.0,1,0.5,0.5", "training.csv:2: face_x '134.5'"),
        ("1/x.jpg,1,2,30,n/a,1.0;2.0,1,0.5,0.5", "training.csv:2: face_height 'n/a'"),
        ("1/x.jpg,1,2,0,30,1.0;2.0,1,0.5,0.5", "training.csv:2: face box 1,2,0,30 has no area"),
        (f"{OK}\n\n1/x.jpg,1,2", "training.csv:4: 3 fields, expected 9"),
        (",1,2,30,30,1.0;2.0,1,0.5,0.5", "training.csv:2: empty subDirectory_filePath"),
        (f"{OK}\n{OK}", r"training.csv:3: 1/ok.jpg is already listed at .*training.csv:2"),
        ("1/x.jpg,1,2,30,30,1.0;2.0,9,0.5,0.5", "training.csv: the train split has no images"),
    ],
)
def test_bad_training_rows_name_file_and_line(tmp_path, body, fragment, read):
    root = write_lists(tmp_path, f"{AFFECTNET_CSV_HEADER}\n{body}\n", OK_TEST)
    with pytest.raises(UserError, match=fragment):
        read(root)


def test_bad_headers_and_missing_files(tmp_path, read):
    # no header row: the first data row is read as one, and lacks every needed column
    root = write_lists(tmp_path / "a", f"{OK}\n", OK_TEST)
    with pytest.raises(UserError, match=r"training.csv:1: the header lacks column\(s\) subDir"):
        read(root)
    header = AFFECTNET_CSV_HEADER.replace(",expression", ",expr")
    root = write_lists(tmp_path / "b", f"{header}\n{OK}\n", OK_TEST)
    with pytest.raises(
        UserError, match=r"training.csv:1: the header lacks column\(s\) expression;"
    ):
        read(root)
    root = write_lists(tmp_path / "c", "", OK_TEST)
    with pytest.raises(UserError, match=r"training.csv: empty file; expected a header row"):
        read(root)
    root = write_lists(tmp_path / "d", f"{AFFECTNET_CSV_HEADER}\n{OK}\n")
    with pytest.raises(UserError, match=r"file list not found: .*validation.csv"):
        read(root)
    # a name listed in both files: names must be unique within the dataset
    dup = AFFECTNET_CSV_HEADER + "\n" + OK + "\n"
    root = write_lists(tmp_path / "e", dup, dup)
    with pytest.raises(
        UserError, match=r"validation.csv:2: 1/ok.jpg is already listed at .*training"
    ):
        read(root)


def test_columns_are_found_by_header_name(tmp_path, read):
    header = "expression,face_height,face_width,face_y,face_x,subDirectory_filePath"
    root = write_lists(
        tmp_path, f"{header}\n3,40,30,20,10,7/z.jpg\n", f"{header}\n1,5,5,0,0,8/y.jpg\n"
    )
    ds = read(root)
    assert ds.splits["train"].images.names == ["7/z.jpg"]
    assert ds.splits["train"].images.boxes.tolist() == [[10, 20, 30, 40]]
    assert ds.splits["train"].labels.tolist() == [3]


def test_quoted_file_is_read_with_the_csv_module(tmp_path, read):
    # the release quotes nothing (the fast path splits on commas); a quoted file still parses
    row = '"1/a,b.jpg",1,2,30,30,"1.0;2.0",3,0.5,0.5'
    root = write_lists(tmp_path / "a", f"{AFFECTNET_CSV_HEADER}\r\n{row}\r\n", OK_TEST)
    ds = read(root)
    assert ds.splits["train"].images.names == ["1/a,b.jpg"]
    assert ds.splits["train"].images.boxes.tolist() == [[1, 2, 30, 30]]
    multi = '"1/x.jpg",1,2,30,30,"1.0;\n2.0",3,0.5,0.5\n"1/y.jpg",1,2,30,30,1.0,12,0.5,0.5'
    root = write_lists(tmp_path / "b", f"{AFFECTNET_CSV_HEADER}\n{multi}\n", OK_TEST)
    with pytest.raises(UserError, match="training.csv:4: expression '12'"):
        read(root)  # line numbers count the physical lines of a quoted multi-line field


# ---------------------------------------------------------------- release detection


def test_detection_says_what_it_looked_for_and_when_both_exist(tmp_path, read):
    with pytest.raises(UserError) as e:
        read(tmp_path)
    for part in (
        "Manually_Annotated_file_lists/",
        "training.csv",
        "validation.csv",
        "train_set",
        "val_set",
        "_exp.npy",
        str(tmp_path),
    ):
        assert part in str(e.value)
    write_affectnet_csv(tmp_path, train_per_class=1, test_per_class=1, dropped=0)
    write_affectnet_npy(tmp_path, train_per_class=2, test_per_class=1)
    with pytest.raises(UserError, match="holds both AffectNet releases.*dataset.release=csv"):
        read(tmp_path)
    assert len(read(tmp_path, "release=csv").splits["train"].images) == 8
    npy = read(tmp_path, "release=npy").splits["train"]
    assert len(npy.images) == 16 and npy.images.boxes is None
    with pytest.raises(UserError, match="dataset.release='zip'"):
        read(tmp_path, "release=zip")


# ---------------------------------------------------------------- the npy release


@pytest.mark.parametrize("id_type", ["str", "int"])
def test_generated_npy_release(tmp_path, id_type, read):
    root = write_affectnet_npy(tmp_path, train_per_class=3, test_per_class=2, id_type=id_type)
    ds = read(root)
    assert ds.class_names == EIGHT
    for split, set_dir, per_class in (("train", "train_set", 3), ("test", "val_set", 2)):
        s = ds.splits[split]
        assert np.bincount(s.labels, minlength=8).tolist() == [per_class] * 8
        ids = [int(re.fullmatch(rf"{set_dir}/images/(\d+)\.jpg", n)[1]) for n in s.images.names]
        assert ids == sorted(ids)  # numeric order, not string order
        expected = [
            int(np.load(root / set_dir / "annotations" / f"{i}_exp.npy").item()) for i in ids
        ]
        assert s.labels.tolist() == expected
        assert s.images.paths == [root / n for n in s.images.names]
        assert s.images.boxes is None and s.images.missing() == []
    assert "0 dropped as None/Uncertain/No-Face" in ds.notes[0]


def test_npy_release_drops_8_to_10_and_contempt(tmp_path, read):
    root = write_affectnet_npy(tmp_path, train_per_class=2, test_per_class=1, dropped=2)
    ds8 = read(root)
    assert len(ds8.splits["train"].images) == 16 and len(ds8.splits["test"].images) == 8
    assert "6 dropped as None/Uncertain/No-Face" in ds8.notes[0]
    ds7 = read(root, "num_classes=7")
    assert np.bincount(ds7.splits["train"].labels).tolist() == [2] * 7
    assert ds7.notes[1] == (
        "affectnet test (val_set): 7 kept, 6 dropped as None/Uncertain/No-Face (ids 8-10), "
        "1 Contempt (num_classes=7)"
    )


def npy_set(root: Path, values: dict[str, object]) -> Path:
    for set_dir in ("train_set", "val_set"):
        (root / set_dir / "images").mkdir(parents=True, exist_ok=True)
        (root / set_dir / "annotations").mkdir(parents=True, exist_ok=True)
        for image_id, value in values.items():
            (root / set_dir / "images" / f"{image_id}.jpg").write_bytes(b"")
            if value is not None:
                np.save(root / set_dir / "annotations" / f"{image_id}_exp.npy", value)
    return root


def test_npy_value_kinds_and_fast_header_path(tmp_path, read):
    # many files share one header (the fast path), then other dtypes and byte orders follow
    values: dict[str, object] = {str(i): np.array(str(i % 8)) for i in range(20)}
    values.update(
        {
            "20": np.array("10"),
            "21": np.array(6),
            "22": np.array(5, dtype=">i4"),
            "23": np.array(b"4"),
            "24": np.array([3]),
            "25": np.array(" 2 "),
            "26": np.array(np.int16(1)),
        }
    )
    ds = read(npy_set(tmp_path, values))
    labels = ds.splits["train"].labels.tolist()
    assert labels == [i % 8 for i in range(20)] + [6, 5, 4, 3, 2, 1]
    assert "1 dropped as None/Uncertain/No-Face" in ds.notes[0]


@pytest.mark.parametrize(
    "value,fragment",
    [
        (np.array("12"), r"3_exp.npy: holds 12, not an AffectNet expression id"),
        (np.array("happy"), r"3_exp.npy: holds 'happy', not an AffectNet expression id"),
        (np.array(3.0), r"3_exp.npy: holds 3.0, not an AffectNet"),
        (np.array(True), r"3_exp.npy: holds True, not an AffectNet"),
        (np.array([1, 2]), r"3_exp.npy: holds an array of shape \(2,\)"),
        (np.array({"exp": 1}, dtype=object), r"3_exp.npy: not a readable .npy expression file"),
    ],
)
def test_bad_npy_values_name_the_file(tmp_path, value, fragment, read):
    root = npy_set(tmp_path, {"1": np.array("1"), "2": np.array("2"), "3": value})
    with pytest.raises(UserError, match=fragment):
        read(root)


def test_npy_missing_annotation_or_folder(tmp_path, read):
    root = npy_set(tmp_path / "a", {"1": np.array("1"), "2": None})
    with pytest.raises(UserError, match=r"annotations/2_exp.npy not found: every image in"):
        read(root)
    root = npy_set(tmp_path / "b", {"1": np.array("1")})
    (root / "val_set" / "annotations" / "1_exp.npy").unlink()
    (root / "val_set" / "annotations").rmdir()
    with pytest.raises(UserError, match=r"folder not found: .*val_set/annotations"):
        read(root)
    root = write_affectnet_npy(tmp_path / "c", train_per_class=1, test_per_class=1)
    (root / "val_set" / "annotations").rename(root / "val_set" / "annotations_old")
    (root / "val_set" / "annotations").mkdir()
    with pytest.raises(UserError, match=r"val_set/annotations/\d+_exp.npy not found"):
        read(root)


def test_other_annotation_files_are_ignored_and_extra_files_too(tmp_path, read):
    root = write_affectnet_npy(tmp_path, train_per_class=1, test_per_class=1)
    (root / "train_set" / "images" / "notes.txt").write_text("x")
    (root / "train_set" / "images" / ".hidden.jpg").write_bytes(b"")
    np.save(root / "train_set" / "annotations" / "999999_exp.npy", np.array("1"))  # no image
    ds = read(root)
    assert len(ds.splits["train"].images) == 8
    assert all(n.endswith(".jpg") for n in ds.splits["train"].images.names)


def test_reader_module_is_registered():
    assert get_reader("affectnet") is affectnet.read


# ---------------------------------------------------------------- cache-build benchmark


def test_cachebench_small_run(tmp_path, read):
    from scn import cachebench

    work, out = tmp_path / "work", tmp_path / "cb.json"
    argv = ["--images", "40", "--cache-size", "32", "--min-side", "40", "--max-side", "72",
            "--in-process", "--workers", "1", "--keep", str(work), "--out", str(out)]  # fmt: skip
    result = cachebench.bench(cachebench.parse_args(argv))
    assert json.loads(out.read_text()) == result
    build, stream = result["build"], result["stream"]
    assert build["images"] == 40 and build["cache_shape"] == [40, 32, 32, 3]
    assert build["cache_file_bytes"] >= 40 * 32 * 32 * 3
    assert stream["batches"] == 1 and result["settings"]["test_images"] == 8
    # the generated tree is the csv release, and the stream read every cached image
    ds = read(work / "affectnet")
    assert len(ds.splits["train"].images) == 40 and len(ds.splits["test"].images) == 8
    (cache_file,) = (work / "cache" / "decoded").glob("train-*.npy")
    cached = np.load(cache_file)
    assert stream["checksum"] == int(cached[:, ::32, ::32].sum())
    first = ds.splits["train"].images.load(0)  # cropped to its face box, then resized to 32
    assert first.size == tuple(ds.splits["train"].images.boxes[0][2:])
    assert "build cache" in cachebench.table(result)
    args = cachebench.parse_args(argv)
    assert cachebench.generate(work / "affectnet", 40, 8, args) == 0.0  # --keep reuses the tree
