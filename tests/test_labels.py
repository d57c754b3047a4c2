"""Label-file parsing: RAF-DB's list, the original SCN noisy lists, and every malformed case."""

import pytest

from scn.data.labels import image_path, parse_label_file
from scn.errors import UserError


def write(tmp_path, text: bytes, name="labels.txt"):
    p = tmp_path / name
    p.write_bytes(text)
    return p


def test_rafdb_lines_with_crlf_trailing_spaces_blank_lines_and_no_final_newline(tmp_path):
    p = write(tmp_path, b"train_00001.jpg 5\r\ntrain_00002.jpg  1  \r\n\r\ntest_0001.jpg 7")
    entries = parse_label_file(p)
    assert [(e.name, e.label, e.line) for e in entries] == [
        ("train_00001.jpg", 4, 1),
        ("train_00002.jpg", 0, 2),
        ("test_0001.jpg", 6, 4),
    ]


def test_scn_list_format_is_detected_and_zero_based(tmp_path):
    p = write(
        tmp_path,
        b"/data/raf/aligned/train_00001_aligned.jpg 0\r\nC:\\x\\train_00002_aligned.jpg 6\r\n",
    )
    entries = parse_label_file(p)
    assert [(e.name, e.label) for e in entries] == [("train_00001.jpg", 0), ("train_00002.jpg", 6)]


@pytest.mark.parametrize(
    "text,fragment",
    [
        (b"train_00001.jpg 5\ntrain_00002.jpg\n", "labels.txt:2: expected '<image name> <label>'"),
        (b"train_00001.jpg five\n", "labels.txt:1: label 'five' is not an integer"),
        (b"train_00001.jpg 1\ntrain_00002.jpg 8\n", "labels.txt:2: label 8 outside 1..7"),
        (b"train_00001.jpg 0\n", "dataset.label_format=scn_list"),
        (b"x/train_00001_aligned.jpg 7\n", "labels.txt:1: label 7 outside 0..6"),
        (
            b"train_00001.jpg 1\ntrain_00001.jpg 2\n",
            "labels.txt:2: train_00001.jpg already labelled on line 1",
        ),
        (b"\n\n", "no labelled lines"),
    ],
)
def test_malformed_files_name_file_and_line(tmp_path, text, fragment):
    with pytest.raises(UserError, match=fragment.replace(".", r"\.").replace("(", r"\(")):
        parse_label_file(write(tmp_path, text))


def test_declared_format_mismatch_and_missing_file(tmp_path):
    p = write(tmp_path, b"train_00001.jpg 0\n")
    with pytest.raises(UserError, match="does not end in '_aligned.jpg'"):
        parse_label_file(p, "scn_list")
    with pytest.raises(UserError, match="label file not found"):
        parse_label_file(tmp_path / "nope.txt")


def test_image_path_follows_rafdb_layout(tmp_path):
    assert (
        image_path(tmp_path, "train_00001.jpg")
        == tmp_path / "Image/aligned/train_00001_aligned.jpg"
    )
