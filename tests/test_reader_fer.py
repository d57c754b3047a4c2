"""The fer2013 and ferplus readers on every source they accept: class names and counts, FERPlus's
majority rule on crafted vote rows, the 7/8-class switch, train_splits and test_usage, and a message
naming the file and line for every bad input."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from scn.data.readers import fer2013, ferplus
from scn.data.sources import FileImages, PixelImages
from scn.errors import UserError
from tests.conftest import compose_cfg, read_dataset
from tests.formats_fer import (
    FER2013_CLASSES,
    FER2013_FOLDERS,
    FER2013_HEADER,
    FERPLUS_CLASSES,
    FERPLUS_NEW_HEADER,
    fer2013_row,
    fer2013new_row,
    ferplus_label_row,
    ferplus_plan,
    pixel_text,
    write_fer2013_csv,
    write_fer2013_folders,
    write_ferplus_csv,
    write_ferplus_folders,
    write_lines,
)

ZEROS = np.zeros((48, 48), np.uint8)
DATA_ROW = re.compile(r"(?P<usage>\w+)/(?P<index>\d+)\.png")


@pytest.fixture(scope="module")
def composed():
    """Both datasets composed once (composing costs ~0.3 s); each read works on a copy."""
    return {name: compose_cfg([f"dataset={name}"]) for name in ("fer2013", "ferplus")}


@pytest.fixture
def read(composed):
    """Read `root` as dataset `name` with `key=value` overrides of the dataset node."""

    def _read(name: str, root: Path, *overrides: str):
        return read_dataset(composed[name], root, *overrides)

    return _read


@pytest.fixture(scope="module")
def generated(tmp_path_factory) -> dict[str, Path]:
    """Each generated layout once per module (drawing faces costs ~1 s in all); tests only read."""
    base = tmp_path_factory.mktemp("fer")
    return {
        "fer2013_csv": write_fer2013_csv(base / "fer2013_csv"),
        "fer2013_folders": write_fer2013_folders(base / "fer2013_folders"),
        "ferplus_data": write_ferplus_folders(base / "ferplus_data"),
        "ferplus_clone": write_ferplus_folders(base / "ferplus_clone", clone=True),
        "ferplus_csv": write_ferplus_csv(base / "ferplus_csv"),
    }


def raises(match: str, *parts: object):
    """pytest.raises(UserError) whose message must also contain every one of `parts`."""
    return _Raises(match, [str(p) for p in parts])


class _Raises:
    def __init__(self, match: str, parts: list[str]) -> None:
        self.ctx = pytest.raises(UserError, match=match)
        self.parts = parts

    def __enter__(self):
        self.info = self.ctx.__enter__()
        return self.info

    def __exit__(self, *exc) -> bool:
        handled = self.ctx.__exit__(*exc)
        for part in self.parts:
            assert part in str(self.info.value), (part, str(self.info.value))
        return handled


def fer2013_table(root: Path, rows: list[str], header: str = FER2013_HEADER) -> Path:
    write_lines(root / "fer2013.csv", [header, *rows])
    return root / "fer2013.csv"


def valid_rows(per_usage: int = 1) -> list[str]:
    return [
        fer2013_row(k % 7, ZEROS + k, usage)
        for usage in ("Training", "PublicTest", "PrivateTest")
        for k in range(per_usage)
    ]


# ---------------------------------------------------------------- configs


def test_configs_compose_with_their_keys(tmp_path, composed):
    d = composed["fer2013"].dataset
    assert (d.name, d.format, d.class_names, d.test_usage, d.cache_size) == (
        "fer2013",
        "fer2013",
        None,
        "both",
        None,
    )
    assert str(d.root).endswith("no-data-here/fer2013")  # ${paths.data_dir}/fer2013
    assert d.noise.rate == 0.0 and d.label_file is None  # shared keys come from rafdb.yaml
    d = composed["ferplus"].dataset
    assert (d.name, d.format, d.class_names, d.num_classes, d.cache_size) == (
        "ferplus",
        "ferplus",
        None,
        8,
        None,
    )
    assert list(d.train_splits) == ["train", "valid"]
    assert str(d.root).endswith("no-data-here/FERPlus")  # ${paths.data_dir}/FERPlus
    # the keys take command-line overrides (a whole list, as Hydra 1.3 requires)
    d = compose_cfg(
        ["dataset=ferplus", "dataset.train_splits=[train]", f"dataset.root={tmp_path}"]
    ).dataset
    assert list(d.train_splits) == ["train"] and d.root == str(tmp_path)


# ---------------------------------------------------------------- fer2013: csv


def test_fer2013_csv_reads_as_written(generated, read):
    root = generated["fer2013_csv"]
    ds = read("fer2013", root)
    assert ds.class_names == list(FER2013_CLASSES) and ds.notes == []
    assert set(ds.splits) == {"train", "test"}
    lines = (root / "fer2013.csv").read_text().splitlines()
    assert lines[0] == "emotion,pixels,Usage"
    train, test = ds.splits["train"], ds.splits["test"]
    assert np.bincount(train.labels, minlength=7).tolist() == [8] * 7
    assert np.bincount(test.labels, minlength=7).tolist() == [4] * 7
    assert train.images.names[:2] == ["Training/0.png", "Training/1.png"]
    assert (
        test.images.names[0] == "PublicTest/56.png"
        and test.images.names[-1] == "PrivateTest/83.png"
    )
    for split in (train, test):
        images = split.images
        assert isinstance(images, PixelImages) and images.source == root / "fer2013.csv"
        assert images.pixels.shape[1:] == (48, 48) and images.pixels.dtype == np.uint8
        for i in (0, len(images) - 1):
            m = DATA_ROW.fullmatch(images.names[i])
            line = int(m["index"]) + 2  # data row index -> 1-based line (header is line 1)
            assert images.rows[i] == line
            emotion, pixels, usage = lines[line - 1].split(",")
            assert (usage, int(emotion)) == (m["usage"], split.labels[i])
            assert images.pixels[i].ravel().tolist() == [int(v) for v in pixels.split()]
            assert images.describe(i) == f"{root / 'fer2013.csv'}:{line}"
    img = train.images.load(3)
    assert img.mode == "RGB" and img.size == (48, 48)


def test_fer2013_test_usage_picks_the_test_split(generated, read):
    root = generated["fer2013_csv"]
    public = read("fer2013", root, "test_usage=PublicTest")
    assert set(public.splits) == {"train", "test"}
    assert len(public.splits["test"].images) == 14
    assert all(n.startswith("PublicTest/") for n in public.splits["test"].images.names)
    assert public.notes == [
        "fer2013: 14 PrivateTest images not used (dataset.test_usage=PublicTest)"
    ]
    private = read("fer2013", root, "test_usage=PrivateTest")
    assert set(private.splits) == {"train", "test", "val"}
    assert all(n.startswith("PrivateTest/") for n in private.splits["test"].images.names)
    assert private.splits["val"].images.names == public.splits["test"].images.names
    assert len(private.splits["train"].images) == 56
    with raises("test_usage='Validation'", "both, PublicTest, PrivateTest"):
        read("fer2013", root, "test_usage=Validation")


def test_fer2013_class_names_rename_only_with_seven(generated, read):
    names = ["a", "b", "c", "d", "e", "f", "g"]
    ds = read("fer2013", generated["fer2013_csv"], f"class_names=[{','.join(names)}]")
    assert ds.class_names == names
    with raises("class_names has 6 names", "Angry"):
        read("fer2013", generated["fer2013_csv"], "class_names=[a,b,c,d,e,f]")


def test_fer2013_csv_variants_quotes_crlf_and_column_order(tmp_path, read):
    """Kaggle's icml_face_data.csv names its columns `emotion, Usage, pixels`; other copies quote
    the pixels cell or end lines with CRLF. All read the same."""
    usages = ["Training"] * 3 + ["PrivateTest"] * 2
    rows = [(k % 7, u, ZEROS + 3 * k) for k, u in enumerate(usages)]
    lines = ["emotion, Usage, pixels"] + [f'{e},{u},"{pixel_text(p)}"' for e, u, p in rows]
    write_lines(tmp_path / "fer2013.csv", lines, newline="\r\n")
    ds = read("fer2013", tmp_path)
    assert ds.splits["train"].labels.tolist() == [0, 1, 2]
    assert ds.splits["test"].images.names == ["PrivateTest/3.png", "PrivateTest/4.png"]
    assert ds.splits["test"].images.pixels[1].max() == 12
    assert ds.splits["test"].images.rows.tolist() == [5, 6]


@pytest.mark.parametrize(
    ("row", "message"),
    [
        (fer2013_row(0, "1 " * 2303, "Training"), "2303 pixel values, expected 2304"),
        (fer2013_row(0, "7 " * 2305, "Training"), "2305 pixel values, expected 2304"),
        (fer2013_row(0, "", "Training"), "0 pixel values"),
        (fer2013_row(0, "0 " * 5 + "256 " + "0 " * 2298, "Training"), "pixel 6 is '256'"),
        (fer2013_row(0, "-1 " + "0 " * 2303, "Training"), "pixel 1 is '-1'"),
        (fer2013_row(0, "0 " * 9 + "1.5 " + "0 " * 2294, "Training"), "pixel 10 is '1.5'"),
        (fer2013_row(0, "0 " * 2303 + "x", "Training"), "pixel 2304 is 'x'"),
        (fer2013_row(7, ZEROS, "Training"), "emotion '7' is not an expression id"),
        (fer2013_row("happy", ZEROS, "Training"), "emotion 'happy' is not an expression id"),
        (fer2013_row(3, ZEROS, "Validation"), "Usage 'Validation', expected one of"),
        (fer2013_row(3, ZEROS, "Training") + ",extra", "4 fields, expected 3"),
    ],
)
def test_fer2013_bad_row_names_file_and_line(tmp_path, read, row, message):
    path = fer2013_table(tmp_path, [*valid_rows(), row, *valid_rows()])
    with raises(re.escape(message), f"{path}:5:"):  # header, three good rows, then this one
        read("fer2013", tmp_path)


def test_fer2013_missing_column_lists_the_columns_found(tmp_path, read):
    # Kaggle's test.csv has no emotion column
    path = fer2013_table(tmp_path, [pixel_text(ZEROS)], header="pixels")
    with raises("no column emotion, Usage", path, "columns found: 'pixels'"):
        read("fer2013", tmp_path)
    # a file without a header row: its first data row is taken for one
    write_lines(tmp_path / "fer2013.csv", valid_rows())
    with raises("no column emotion, Usage, pixels", "columns found: '0', '0 0 0 0"):
        read("fer2013", tmp_path)


def test_fer2013_empty_split_and_empty_file(tmp_path, read):
    path = fer2013_table(tmp_path, [fer2013_row(1, ZEROS, "PublicTest")])
    with raises("no row with Usage Training", path):
        read("fer2013", tmp_path)
    fer2013_table(tmp_path, [fer2013_row(1, ZEROS, "Training")])
    with raises("no row with Usage PublicTest or PrivateTest", path):
        read("fer2013", tmp_path)
    (tmp_path / "fer2013.csv").write_text("")
    with raises("the file is empty", path):
        read("fer2013", tmp_path)


def test_parse_pixels_is_exact():
    values = np.arange(2304) % 256
    texts = [" ".join(map(str, values)), " ".join(map(str, values[::-1]))]
    out = fer2013.parse_pixels(texts, Path("t.csv"), [8, 9])
    assert out.dtype == np.uint8 and out.shape == (2, 48, 48)
    assert out[0].ravel().tolist() == values.tolist()
    assert out[1].ravel().tolist() == values[::-1].tolist()
    assert out[0, 1, 0] == 48  # row-major: the second row starts at pixel 48
    assert fer2013.parse_pixels([], Path("t.csv"), []).shape == (0, 48, 48)
    with raises("pixel 3 is '1e2'", "t.csv:9"):
        fer2013.parse_pixels([texts[0], "1 2 1e2 " + "0 " * 2301], Path("t.csv"), [8, 9])
    with raises("pixel 4 is '300'", "t.csv:9"):  # the range is checked over all rows at once
        fer2013.parse_pixels([texts[0], "1 2 3 300 " + "0 " * 2300], Path("t.csv"), [8, 9])


# ---------------------------------------------------------------- fer2013: image folders


def test_fer2013_folders_map_lowercase_classes(generated, read):
    root = generated["fer2013_folders"]
    ds = read("fer2013", root)
    assert ds.class_names == list(FER2013_CLASSES) and ds.notes == []
    for split, per_class in (("train", 8), ("test", 4)):
        s = ds.splits[split]
        assert isinstance(s.images, FileImages) and s.images.boxes is None
        assert np.bincount(s.labels, minlength=7).tolist() == [per_class] * 7
        for name, path, label in zip(s.images.names, s.images.paths, s.labels, strict=True):
            assert path == root / name and path.is_file()
            folder = name.split("/")[1]
            assert name.startswith(f"{split}/") and FER2013_FOLDERS.index(folder) == label
    # 'neutral' is id 6 although it sorts before 'sad' and 'surprise'
    assert {
        n.split("/")[1]
        for n, y in zip(ds.splits["test"].images.names, ds.splits["test"].labels, strict=True)
        if y == 6
    } == {"neutral"}


def test_fer2013_folders_rules(tmp_path, read):
    for split in ("train", "test"):
        for k, cls in enumerate(("Angry", "happy")):  # class folders match regardless of case
            (tmp_path / split / cls).mkdir(parents=True)
            Image.fromarray(ZEROS).save(tmp_path / split / cls / f"x{k}.jpg")
    (tmp_path / "train" / "happy" / "Thumbs.db").write_bytes(b"x")
    ds = read("fer2013", tmp_path)
    assert ds.splits["train"].labels.tolist() == [0, 3]
    assert ds.splits["train"].images.names == ["train/Angry/x0.jpg", "train/happy/x1.jpg"]
    assert ds.notes == [
        "fer2013: 1 non-image entries in the split folders ignored (train/happy/Thumbs.db)"
    ]
    with raises("both", "PublicTest and PrivateTest together"):
        read("fer2013", tmp_path, "test_usage=PrivateTest")
    (tmp_path / "test" / "contempt").mkdir()
    with raises("class folder 'contempt' is not one of", tmp_path / "test" / "contempt"):
        read("fer2013", tmp_path)
    (tmp_path / "test" / "contempt").rmdir()
    for f in (tmp_path / "test").rglob("*.jpg"):
        f.unlink()
    with raises("the test split is empty", tmp_path / "test"):
        read("fer2013", tmp_path)


def test_fer2013_root_without_either_release(tmp_path, read):
    (tmp_path / "train").mkdir()
    with raises("holds neither fer2013.csv", tmp_path, "train/ and test/"):
        read("fer2013", tmp_path)


# ---------------------------------------------------------------- ferplus: the majority rule


# (votes, label with 8 classes, label with 7 classes); -1 no majority, -2 unknown/NF, -3 contempt
MAJORITY_CASES = [
    ((10, 0, 0, 0, 0, 0, 0, 0, 0, 0), 0, 0),
    ((6, 0, 1, 1, 0, 0, 0, 0, 2, 0), 0, 0),  # 6 of 8 once the single votes are gone
    ((5, 4, 0, 0, 0, 0, 0, 0, 1, 0), 0, 0),  # 5 of 10 is no majority; 5 of 9 after removal is
    ((2, 1, 1, 1, 1, 1, 1, 1, 1, 0), 0, 0),  # only the 2 votes remain: a majority of 2
    ((0, 0, 2, 0, 7, 0, 0, 0, 1, 0), 4, 4),
    ((4, 0, 0, 1, 3, 2, 0, 0, 0, 0), -1, -1),  # 4 of 9: not more than half
    ((5, 5, 0, 0, 0, 0, 0, 0, 0, 0), -1, -1),  # tie
    ((4, 0, 0, 4, 2, 0, 0, 0, 0, 0), -1, -1),  # tie at the top
    ((1, 1, 1, 1, 1, 1, 1, 1, 1, 1), -1, -1),  # nothing left
    ((0, 0, 0, 0, 0, 0, 0, 0, 1, 0), -1, -1),  # a single vote is removed too
    ((2, 0, 0, 0, 0, 0, 0, 0, 8, 0), -2, -2),  # unknown
    ((0, 0, 0, 0, 0, 0, 0, 0, 0, 10), -2, -2),  # not a face
    ((0, 0, 0, 0, 0, 2, 0, 7, 1, 0), 7, -3),  # contempt
    ((0, 0, 3, 0, 0, 0, 2, 4, 1, 0), -1, -1),  # contempt without a majority
]


def test_majority_labels_match_ferplus():
    votes = np.array([c[0] for c in MAJORITY_CASES])
    assert ferplus.majority_labels(votes, 8).tolist() == [c[1] for c in MAJORITY_CASES]
    assert ferplus.majority_labels(votes, 7).tolist() == [c[2] for c in MAJORITY_CASES]


def write_ferplus_rows(data: Path, rows_by_folder: dict[str, list[str]]) -> Path:
    """A data folder whose split folders hold these label.csv rows and one PNG each."""
    for folder in ("FER2013Train", "FER2013Valid", "FER2013Test"):
        rows = rows_by_folder.get(folder, [ferplus_label_row(f"{folder}.png", (10,) + (0,) * 9)])
        write_lines(data / folder / "label.csv", rows)
        Image.fromarray(ZEROS).save(data / folder / "any.png")
    return data


@pytest.mark.parametrize("num_classes", [8, 7])
def test_ferplus_rule_on_crafted_label_rows(tmp_path, read, num_classes):
    rows = [ferplus_label_row(f"fer{k:07d}.png", v) for k, (v, _, _) in enumerate(MAJORITY_CASES)]
    write_ferplus_rows(tmp_path, {"FER2013Train": rows})
    ds = read("ferplus", tmp_path, f"num_classes={num_classes}", "train_splits=[train]")
    expected = [c[1] if num_classes == 8 else c[2] for c in MAJORITY_CASES]
    kept = [k for k, y in enumerate(expected) if y >= 0]
    train = ds.splits["train"]
    assert train.images.names == [f"FER2013Train/fer{k:07d}.png" for k in kept]
    assert train.images.paths == [tmp_path / "FER2013Train" / f"fer{k:07d}.png" for k in kept]
    assert train.labels.tolist() == [expected[k] for k in kept]
    assert ds.class_names == list(FERPLUS_CLASSES[:num_classes])
    contempt = 1 if num_classes == 7 else 0
    assert ds.notes[0] == (
        "ferplus train (FER2013Train): 6 dropped (no majority), 2 unknown/NF, "
        f"{contempt} contempt; "
        f"{len(kept)} kept"
    )


# ---------------------------------------------------------------- ferplus: the data folder


def test_ferplus_data_folder_reads_as_written(generated, read):
    root = generated["ferplus_data"]
    ds = read("ferplus", root)
    assert ds.class_names == list(FERPLUS_CLASSES)
    assert set(ds.splits) == {"train", "test"}  # Train + Valid are trained on
    train, test = ds.splits["train"], ds.splits["test"]
    assert np.bincount(train.labels, minlength=8).tolist() == [6 + 2] * 8
    assert np.bincount(test.labels, minlength=8).tolist() == [4] * 8
    assert isinstance(train.images, FileImages) and train.images.boxes is None  # box ignored
    assert [n.split("/")[0] for n in train.images.names] == ["FER2013Train"] * 48 + [
        "FER2013Valid"
    ] * 16
    for name, path in zip(
        train.images.names + test.images.names, train.images.paths + test.images.paths, strict=True
    ):
        assert path == root / name and path.is_file()
    # labels agree with the plan the generator wrote (its votes' majority class)
    plan = {r.name: r.label for r in ferplus_plan() if r.name}
    assert [plan[n.split("/")[1]] for n in train.images.names] == train.labels.tolist()
    assert ds.notes == [
        f"ferplus {s} ({f}): 1 dropped (no majority), 2 unknown/NF, 0 contempt; {n} kept"
        for s, f, n in (
            ("train", "FER2013Train", 48),
            ("valid", "FER2013Valid", 16),
            ("test", "FER2013Test", 32),
        )
    ]
    first = (root / "FER2013Train" / "label.csv").read_text().splitlines()[0]
    assert re.fullmatch(r'fer\d{7}\.png,"\(0, 0, 48, 48\)",(\d+,){9}\d+', first)


def test_ferplus_clone_uses_its_data_folder(generated, read):
    clone = generated["ferplus_clone"]
    assert (clone / "fer2013new.csv").is_file() and not (clone / "fer2013.csv").exists()
    ds = read("ferplus", clone)
    ref = read("ferplus", generated["ferplus_data"])
    assert ds.splits["train"].images.names == ref.splits["train"].images.names
    assert ds.splits["train"].images.paths[0] == clone / "data" / ds.splits["train"].images.names[0]
    assert ds.splits["test"].labels.tolist() == ref.splits["test"].labels.tolist()


def test_ferplus_train_splits_and_seven_classes(generated, read):
    root = generated["ferplus_data"]
    ds = read("ferplus", root, "train_splits=[train]")
    assert set(ds.splits) == {"train", "val", "test"}
    assert all(n.startswith("FER2013Train/") for n in ds.splits["train"].images.names)
    assert all(n.startswith("FER2013Valid/") for n in ds.splits["val"].images.names)
    assert np.bincount(ds.splits["val"].labels).tolist() == [2] * 8
    only_valid = read("ferplus", root, "train_splits=[valid]")
    assert set(only_valid.splits) == {"train", "test"}
    assert all(n.startswith("FER2013Valid/") for n in only_valid.splits["train"].images.names)
    assert only_valid.notes[-1] == "ferplus: FER2013Train not used (dataset.train_splits=[valid])"
    seven = read("ferplus", root, "num_classes=7")
    assert seven.class_names == list(FERPLUS_CLASSES[:7])
    assert np.bincount(seven.splits["train"].labels).tolist() == [8] * 7  # Contempt dropped
    assert seven.notes[0].endswith("6 contempt; 42 kept")
    for bad in ("[test]", "[]", "[train,train]", "[train,valid,test]"):
        with raises("dataset.train_splits=", "subset of [train, valid]"):
            read("ferplus", root, f"train_splits={bad}")
    with raises("num_classes=6", "8 (with Contempt) or 7"):
        read("ferplus", root, "num_classes=6")
    with raises("class_names has 8 names", "7 classes"):
        read("ferplus", root, "num_classes=7", f"class_names=[{','.join('abcdefgh')}]")
    renamed = read("ferplus", root, f"class_names=[{','.join('abcdefgh')}]")
    assert renamed.class_names == list("abcdefgh")


@pytest.mark.parametrize(
    ("votes", "message"),
    [
        ((0,) * 10, "has no votes (all 10 counts are 0)"),
        ((1,) * 9, "11 fields, expected 12"),
        ((1,) * 11, "13 fields, expected 12"),
        ((1, 2, "x", 0, 0, 0, 0, 0, 0, 0), "surprise vote 'x'"),
        ((1, 2, 3, 0, 0, 0, 0, 0, -1, 0), "unknown vote '-1'"),
        ((1, 2, 3, 0, 0, 0, 0, 0, 2.0, 0), "unknown vote '2.0'"),
    ],
)
def test_ferplus_bad_label_row_names_file_and_line(tmp_path, read, votes, message):
    good = ferplus_label_row("fer0000001.png", (0, 10) + (0,) * 8)
    write_ferplus_rows(
        tmp_path,
        {
            "FER2013Valid": [
                good,
                good.replace("01.", "02."),
                ferplus_label_row("fer0000003.png", votes),
            ]
        },
    )
    with raises(re.escape(message), f"{tmp_path / 'FER2013Valid' / 'label.csv'}:3:"):
        read("ferplus", tmp_path)


def test_ferplus_data_folder_problems(tmp_path, read):
    row = ferplus_label_row("fer0000001.png", (0, 10) + (0,) * 8)
    write_ferplus_rows(tmp_path, {"FER2013Test": [row, row]})
    label = tmp_path / "FER2013Test" / "label.csv"
    with raises("fer0000001.png already listed on line 1", f"{label}:2:"):
        read("ferplus", tmp_path)
    write_lines(label, [])
    with raises("no rows, so the test split is empty", label):
        read("ferplus", tmp_path)
    write_lines(label, [ferplus_label_row("a.png", (5, 5) + (0,) * 8)])
    with raises("none of the 1 FER2013Test images keeps a label", label):
        read("ferplus", tmp_path)
    label.unlink()
    with raises("label.csv not found", label):
        read("ferplus", tmp_path)


def test_ferplus_without_pngs_or_anything(tmp_path, read):
    (tmp_path / "data" / "FER2013Train").mkdir(parents=True)
    (tmp_path / "data" / "FER2013Train" / "label.csv").write_text("")
    write_lines(tmp_path / "fer2013new.csv", [FERPLUS_NEW_HEADER])
    with raises("hold no PNG images", "generate_training_data.py", "fer2013.csv"):
        read("ferplus", tmp_path)
    empty = tmp_path / "empty"
    empty.mkdir()
    with raises(
        "holds no FERPlus data",
        empty / "FER2013Train",
        empty / "data" / "FER2013Train",
        empty / "fer2013new.csv",
    ):
        read("ferplus", empty)
    write_lines(empty / "fer2013new.csv", [FERPLUS_NEW_HEADER])
    with raises("fer2013new.csv is there, but Kaggle's fer2013.csv is not"):
        read("ferplus", empty)


# ---------------------------------------------------------------- ferplus: the csv pair


def test_ferplus_csv_pair_reads_as_written(generated, read):
    root = generated["ferplus_csv"]
    ds = read("ferplus", root)
    ref = read("ferplus", generated["ferplus_data"])
    assert set(ds.splits) == {"train", "test"}
    for split in ("train", "test"):
        s, r = ds.splits[split], ref.splits[split]
        assert isinstance(s.images, PixelImages) and s.images.source == root / "fer2013.csv"
        # same images and labels as the data folder; names are fer2013new.csv's Image names
        assert s.images.names == [n.split("/")[1] for n in r.images.names]
        assert s.labels.tolist() == r.labels.tolist()
        for i in (0, len(s.images) - 1):
            png = np.asarray(Image.open(r.images.paths[i]))
            assert np.array_equal(s.images.pixels[i], png)
    fer_lines = (root / "fer2013.csv").read_text().splitlines()
    new_lines = (root / "fer2013new.csv").read_text().splitlines()
    assert new_lines[0] == FERPLUS_NEW_HEADER
    train = ds.splits["train"].images
    for i in (0, 5, len(train) - 1):  # rows = the line in fer2013.csv, paired by position
        line = int(train.rows[i])
        assert new_lines[line - 1].split(",")[1] == train.names[i]
        assert train.pixels[i].ravel().tolist() == [
            int(v) for v in fer_lines[line - 1].split(",")[1].split()
        ]
    assert ds.notes[0] == (
        "ferplus train (FER2013Train): 1 without an Image name, 1 dropped (no majority), "
        "2 unknown/NF, 0 contempt; 48 kept"
    )
    val = read("ferplus", root, "train_splits=[train]").splits["val"]
    assert val.images.names == [n.split("/")[1] for n in ref.splits["train"].images.names[48:]]


def write_pair(root: Path, new_rows: list[str], fer_rows: list[str]) -> tuple[Path, Path]:
    new = write_lines(root / "fer2013new.csv", [FERPLUS_NEW_HEADER, *new_rows])
    fer = write_lines(root / "fer2013.csv", [FER2013_HEADER, *fer_rows])
    return new, fer


def pair_rows() -> tuple[list[str], list[str]]:
    usages = ["Training", "Training", "PublicTest", "PrivateTest"]
    new = [fer2013new_row(u, f"fer{k:07d}.png", (0, 10) + (0,) * 8) for k, u in enumerate(usages)]
    fer = [fer2013_row(3, ZEROS + k, u) for k, u in enumerate(usages)]
    return new, fer


def test_ferplus_csv_pair_problems(tmp_path, read):
    new_rows, fer_rows = pair_rows()
    new, fer = write_pair(tmp_path, new_rows, fer_rows[:-1])
    with raises("has 4 data rows", new, f"{fer} has 3"):
        read("ferplus", tmp_path)
    swapped = fer_rows[:2] + [fer_rows[3], fer_rows[2]]
    write_pair(tmp_path, new_rows, swapped)
    with raises(
        "says Usage PublicTest", f"{new}:4", f"{fer}:4", "'PrivateTest'", "not row-aligned"
    ):
        read("ferplus", tmp_path)
    write_pair(tmp_path, new_rows, fer_rows[:3] + [fer2013_row(3, "1 2 3", "PrivateTest")])
    with raises("3 pixel values, expected 2304", f"{fer}:5:"):
        read("ferplus", tmp_path)
    bad_usage = [*new_rows[:2], new_rows[2].replace("PublicTest", "Valid"), new_rows[3]]
    write_pair(tmp_path, bad_usage, fer_rows)
    with raises("Usage 'Valid', expected one of Training, PublicTest, PrivateTest", f"{new}:4:"):
        read("ferplus", tmp_path)
    write_pair(
        tmp_path, [*new_rows[:3], fer2013new_row("PrivateTest", "x.png", (0,) * 10)], fer_rows
    )
    with raises("x.png has no votes", f"{new}:5:"):
        read("ferplus", tmp_path)
    write_pair(tmp_path, [*new_rows[:3], new_rows[0].replace("Training", "PrivateTest")], fer_rows)
    with raises("fer0000000.png already listed on line 2", f"{new}:5:"):
        read("ferplus", tmp_path)
    unnamed = [*new_rows[:3], fer2013new_row("PrivateTest", "", (0,) * 10)]  # votes not checked
    write_pair(tmp_path, unnamed, fer_rows)
    with raises("no named row with Usage PrivateTest, so the test split is empty", new):
        read("ferplus", tmp_path)
    write_lines(new, ["Usage,Image name,neutral,happiness", *new_rows])
    with raises("no column surprise, sadness", new, "columns found: Usage, Image name, neutral"):
        read("ferplus", tmp_path)
    write_pair(tmp_path, new_rows, [])
    write_lines(fer, ["emotion,pixels", *[r.rsplit(",", 1)[0] for r in fer_rows]])
    with raises("no column Usage", fer, "columns found: 'emotion', 'pixels'"):
        read("ferplus", tmp_path)
