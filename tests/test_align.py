"""scn.align: raw photos in class folders -> an aligned train/test dataset that dataset=folder
trains on; skipped images listed; a second run skips what is done."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image, ImageEnhance

from scn.align import AlignSettings, _test_images, align_folder, plan
from scn.errors import UserError
from tests.conftest import ROOT, TINY, finished_run

pytest.importorskip("dlib")

SETTINGS = AlignSettings(test_fraction=0.5)  # 3 faces + junk per class: each split gets faces


def _rows(path: Path) -> list[dict[str, str]]:
    with path.open(newline="") as f:
        return list(csv.DictReader(f))


@pytest.fixture(scope="module")
def raw(tmp_path_factory, astronaut) -> Path:
    """happy/ and sad/ with three slightly varied portraits each, a blank image (happy), a corrupt
    file and a photo of two equally large faces (sad)."""
    image, _ = astronaut
    root = tmp_path_factory.mktemp("raw")
    face = Image.fromarray(image)
    for cls in ("happy", "sad"):
        (root / cls).mkdir()
        for i, (side, angle, light) in enumerate([(448, -4, 0.9), (480, 0, 1.0), (512, 4, 1.1)]):
            photo = ImageEnhance.Brightness(face.rotate(angle, Image.Resampling.BILINEAR))
            photo.enhance(light).resize((side, side)).save(root / cls / f"{cls}{i}.jpg")
    Image.new("RGB", (320, 240), (128, 128, 128)).save(root / "happy" / "blank.png")
    (root / "sad" / "broken.jpg").write_bytes(b"\xff\xd8 not a jpeg")
    Image.fromarray(np.concatenate([image, image[:, ::-1]], axis=1)).save(root / "sad" / "two.jpg")
    return root


@pytest.fixture(scope="module")
def aligned(raw, tmp_path_factory):
    out = tmp_path_factory.mktemp("aligned")
    summary = align_folder(raw, out, SETTINGS, workers=2, progress=False)
    return out, summary


def test_class_folders_become_aligned_train_and_test_folders(raw, aligned, caplog):
    out, summary = aligned
    assert summary["aligned"] == 6 and summary["faces"] == 6 and summary["already_done"] == 0
    assert summary["skipped"] == {"no face": 1, "several faces": 1, "unreadable": 1}
    # half of each class's raw images go to test (2 of 4, 2 of 5), chosen per image name
    layout, tasks = plan(raw, SETTINGS)
    assert layout == "classes" and len(tasks) == 9
    split_of = {t.source: t.out.split("/")[0] for t in tasks}
    assert sum(split_of[s] == "test" for s in split_of if s.startswith("happy/")) == 2
    assert sum(split_of[s] == "test" for s in split_of if s.startswith("sad/")) == 2
    happy = sorted(s for s in split_of if s.startswith("happy/"))
    assert _test_images(happy, 0.5, 0) == _test_images(happy[::-1], 0.5, 0)  # order-free
    names = [f"c/{i}.jpg" for i in range(20)]
    assert len(_test_images(names, 0.2, 0)) == 4
    assert _test_images(names, 0.2, 0) != _test_images(names, 0.2, 1)  # the seed picks others
    rows = _rows(out / "faces.csv")
    assert sorted(r["source"] for r in rows) == [f"{c}/{c}{i}.jpg" for c in ("happy", "sad")
                                                 for i in range(3)]  # fmt: skip
    for r in rows:
        stem = r["source"].rsplit(".", 1)[0]
        assert r["path"] == f"{split_of[r['source']]}/{stem}.jpg"
        with Image.open(out / r["path"]) as img:
            assert img.size == (100, 100) and img.format == "JPEG"
        assert float(r["score"]) > 0.5 and r["mouth_left_x"] == ""
        assert float(r["left_eye_x"]) < float(r["nose_x"]) < float(r["right_eye_x"])
    on_disk = sorted(p.relative_to(out).as_posix() for p in out.rglob("*.jpg"))
    assert on_disk == sorted(r["path"] for r in rows)
    skipped = {r["source"]: r for r in _rows(out / "skipped.csv")}
    assert {s: r["reason"] for s, r in skipped.items()} == {
        "happy/blank.png": "no face",
        "sad/broken.jpg": "unreadable",
        "sad/two.jpg": "several faces",
    }
    assert skipped["sad/two.jpg"]["faces"] == "2"
    record = json.loads((out / "align.json").read_text())
    assert record["template"] == "rafdb" and record["size"] == 100
    assert record["points"][0] == [32.5, 38.0]


def test_a_second_run_skips_what_is_done_and_refuses_other_settings(raw, aligned, caplog):
    out, _ = aligned
    before = {p: p.stat().st_mtime_ns for p in out.rglob("*.jpg")}
    faces_csv = (out / "faces.csv").read_text()
    again = align_folder(raw, out, SETTINGS, workers=1, progress=False)
    # aligned images and images skipped for their faces are done; the unreadable one is retried
    assert again["already_done"] == 8 and again["aligned"] == 0
    assert again["skipped"] == {"no face": 0, "several faces": 0, "unreadable": 1}
    assert {p: p.stat().st_mtime_ns for p in out.rglob("*.jpg")} == before
    assert (out / "faces.csv").read_text() == faces_csv
    assert "sad/broken.jpg: unreadable" in caplog.text  # named in the log
    other = AlignSettings(template="arcface", size=112, test_fraction=0.5)
    with pytest.raises(UserError, match="template 'rafdb' -> 'arcface'"):
        align_folder(raw, out, other, workers=1, progress=False)


def test_all_faces_of_a_flat_folder(raw, tmp_path):
    flat = tmp_path / "photos"
    flat.mkdir()
    (flat / "two.jpg").write_bytes((raw / "sad" / "two.jpg").read_bytes())
    summary = align_folder(flat, tmp_path / "out", AlignSettings(all_faces=True), progress=False)
    assert summary["layout"] == "flat" and summary["faces"] == 2
    assert sorted(p.name for p in (tmp_path / "out").glob("*.jpg")) == ["two_0.jpg", "two_1.jpg"]
    xs = [float(r["x0"]) for r in _rows(tmp_path / "out" / "faces.csv")]
    assert min(xs) < 512 < max(xs)  # one face from each half


def test_bad_layouts_are_refused(tmp_path):
    (tmp_path / "raw" / "train" / "a").mkdir(parents=True)
    (tmp_path / "raw" / "happy").mkdir()
    with pytest.raises(UserError, match="split folders .*train.* and other folders .*happy"):
        plan(tmp_path / "raw", SETTINGS)
    with pytest.raises(UserError, match="not a folder"):
        plan(tmp_path / "missing", SETTINGS)


@pytest.mark.e2e
def test_the_aligned_folder_trains_with_dataset_folder(aligned, tmp_path, cache_dir):
    out, _ = aligned
    args = [a for a in TINY if not a.startswith(("dataset=", "dataset.synthetic"))]
    args += ["dataset=folder", f"dataset.root={out}", "trainer.epochs=1", "hydra.run.dir=run"]
    env = {**os.environ, "SCN_CACHE_DIR": str(cache_dir), "HYDRA_FULL_ERROR": "1"}
    proc = subprocess.run([sys.executable, str(ROOT / "run.py"), *args], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=600)  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert len(finished_run(tmp_path / "run")["test/class_acc"]) == 2  # happy and sad
    log = (tmp_path / "run" / "run.log").read_text()
    assert "in 2 class folders" in log  # happy and sad, read from the aligned tree


def test_the_faces_benchmark_reports_rates_and_the_time_split(raw, tmp_path, tiny_checkpoint):
    from scn.facebench import faces_bench, faces_table

    photos = tmp_path / "photos"
    photos.mkdir()
    for name in ("happy0.jpg", "happy1.jpg"):
        (photos / name).write_bytes((raw / "happy" / name).read_bytes())
    r = faces_bench(str(photos), torch.device("cpu"), model=str(tiny_checkpoint),
                    workdir=str(tmp_path))  # fmt: skip
    assert r["photos"] == 2 and r["faces"] == 2
    p = r["predict_detect"]
    assert p["faces_per_s"] > 0 and p["detect_s_per_photo"] > 0 and p["classify_ms_per_face"] > 0
    assert set(r["align"]) == {"1", "2"} and all(a["faces_per_s"] > 0 for a in r["align"].values())
    text = faces_table({"device": "cpu", "torch": torch.__version__, "faces": r})
    assert "predict --detect" in text and "scn.align, 2 worker(s)" in text
