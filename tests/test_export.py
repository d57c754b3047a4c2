"""scn.export (ONNX, TorchScript) against PyTorch, and scn.predict on raw photos, folders and
videos (--detect, --annotate) with a checkpoint or an exported file."""

from __future__ import annotations

import csv
import json
import logging
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from scn.errors import UserError
from scn.export import export, load_exported
from scn.faces.align import TEMPLATES, align_face
from scn.inference import load_model
from scn.predict import main as predict_main
from scn.predict import predict

pytest.importorskip("dlib")
av = pytest.importorskip("av")
CLASSES = ["Surprise", "Fear", "Disgust", "Happiness", "Sadness", "Anger", "Neutral"]


def _rows(path: Path) -> list[dict[str, str]]:
    with path.open(newline="") as f:
        return list(csv.DictReader(f))


def _probs(row: dict[str, str]) -> np.ndarray:
    return np.array([float(row[f"p_{c}"]) for c in CLASSES])


@pytest.fixture(scope="module")
def exported(tiny_checkpoint, tmp_path_factory):
    """The tiny checkpoint as ONNX (through the function) and TorchScript (through the command
    line, written beside the checkpoint by default)."""
    pytest.importorskip("onnxruntime")
    from scn.export import main as export_main

    folder = tmp_path_factory.mktemp("exported")
    onnx_file = export(str(tiny_checkpoint), "onnx", str(folder / "model.onnx"))
    shutil.copy(tiny_checkpoint, folder / "best.pt")
    assert export_main([str(folder / "best.pt"), "--format", "torchscript"]) == 0
    return onnx_file, folder / "best.torchscript.pt"


@pytest.fixture(scope="module")
def photos(astronaut, tmp_path_factory) -> Path:
    """The portrait, two copies side by side, a blank image and a corrupt file."""
    image, _ = astronaut
    folder = tmp_path_factory.mktemp("photos")
    Image.fromarray(image).save(folder / "astronaut.png")
    (folder / "group").mkdir()
    Image.fromarray(np.concatenate([image, image[:, ::-1]], axis=1)).save(folder / "group/two.jpg")
    Image.new("RGB", (200, 150), (90, 90, 90)).save(folder / "blank.jpg")
    (folder / "broken.jpg").write_bytes(b"\xff\xd8 not a jpeg")
    return folder


@pytest.mark.filterwarnings("ignore:`torch.jit.load` is deprecated:FutureWarning")
def test_onnx_and_torchscript_match_pytorch_for_any_batch(tiny_checkpoint, exported):
    import onnx
    import onnxruntime as ort

    onnx_file, ts_file = exported
    lm = load_model(tiny_checkpoint, "cpu")
    size = lm.preprocessing.input_size
    images = torch.randint(0, 256, (5, 3, size, size), dtype=torch.uint8)
    mean = torch.tensor(lm.preprocessing.mean).view(1, 3, 1, 1)
    std = torch.tensor(lm.preprocessing.std).view(1, 3, 1, 1)
    expected = torch.softmax(lm((images / 255.0 - mean) / std).logits, 1).numpy()
    session = ort.InferenceSession(str(onnx_file), providers=["CPUExecutionProvider"])
    for n in (1, 5):  # dynamic batch
        got = session.run(None, {"images": images[:n].numpy()})[0]
        assert got.shape == (n, 7) and np.abs(got - expected[:n]).max() <= 1e-4
    scripted = torch.jit.load(str(ts_file))
    with torch.no_grad():
        assert np.abs(scripted(images[:3]).numpy() - expected[:3]).max() <= 1e-4
    assert (
        ts_file.name == "best.torchscript.pt"
    )  # the command line's default: beside the checkpoint
    meta = json.loads({p.key: p.value for p in onnx.load(str(onnx_file)).metadata_props}["scn"])
    assert meta["class_names"] == CLASSES and meta["input_size"] == size
    assert meta["mean"] == pytest.approx(list(lm.preprocessing.mean))
    extra = {"scn.json": ""}
    torch.jit.load(str(ts_file), _extra_files=extra)
    assert json.loads(extra["scn.json"])["class_names"] == CLASSES


def test_predict_reads_exported_files_like_the_checkpoint(tiny_checkpoint, exported, tmp_path):
    crops = tmp_path / "crops"
    crops.mkdir()
    rng = np.random.default_rng(0)
    for i in range(4):  # 40 px crops: resized to the model's 32 px input on the way in
        Image.fromarray(rng.integers(0, 256, (40, 40, 3), dtype=np.uint8)).save(crops / f"{i}.png")
    predict(str(tiny_checkpoint), str(crops), str(tmp_path / "ckpt.csv"))
    reference = {r["path"]: r for r in _rows(tmp_path / "ckpt.csv")}
    for model in exported:
        out = tmp_path / f"{model.name}.csv"
        assert predict(str(model), str(crops), str(out), batch_size=3) == 4
        rows = _rows(out)
        assert "alpha" not in rows[0] and "alpha" in next(iter(reference.values()))
        for r in rows:
            ref = reference[r["path"]]
            assert np.abs(_probs(r) - _probs(ref)).max() <= 2e-6
            assert r["prediction"] == ref["prediction"]


def test_a_checkpoint_is_not_an_exported_file(tiny_checkpoint, tmp_path):
    with pytest.raises(UserError, match="not a model exported by scn.export"):
        load_exported(tiny_checkpoint)
    fake = tmp_path / "model.onnx"
    fake.write_bytes(b"garbage")
    with pytest.raises(UserError, match="not a readable ONNX model"):
        load_exported(fake)


def test_detect_on_a_photo_gives_the_face_and_its_prediction(
    tiny_checkpoint, exported, astronaut, photos, tmp_path
):
    image, faces = astronaut
    out = tmp_path / "one.csv"
    assert predict(str(tiny_checkpoint), str(photos / "astronaut.png"), str(out),
                   detect=_settings()) == 1  # fmt: skip
    [row] = _rows(out)
    assert row["path"] == "astronaut.png" and row["frame"] == "" and row["face"] == "0"
    box = [float(row[k]) for k in ("x0", "y0", "x1", "y1")]
    assert box == pytest.approx(faces[0].box.tolist(), abs=0.05)
    assert float(row["left_eye_x"]) == pytest.approx(faces[0].landmarks[0, 0], abs=0.05)
    assert row["mouth_left_x"] == "" and float(row["score"]) > 0.5 and row["note"] == ""
    # the probabilities are the model's on the face aligned onto the rafdb template at 32 px
    lm = load_model(tiny_checkpoint, "cpu")
    crop, _ = align_face(image, faces[0].landmarks, TEMPLATES["rafdb"], 32)
    expected = torch.softmax(lm(lm.transform(crop)[None]).logits, 1)[0].numpy()
    assert np.abs(_probs(row) - expected).max() <= 2e-6
    assert row["prediction"] == CLASSES[int(expected.argmax())]
    # the exported model gives the same row, without alpha
    predict(str(exported[0]), str(photos / "astronaut.png"), str(tmp_path / "x.csv"),
            detect=_settings())  # fmt: skip
    [onnx_row] = _rows(tmp_path / "x.csv")
    assert np.abs(_probs(onnx_row) - expected).max() <= 1e-5 and "alpha" not in onnx_row


def test_detect_on_a_folder_one_row_per_face_and_annotated_copies(
    tiny_checkpoint, photos, tmp_path, caplog
):
    out = tmp_path / "folder.csv"
    with caplog.at_level(logging.WARNING):
        n = predict(str(tiny_checkpoint), str(photos), str(out),
                    detect=_settings(annotate=str(tmp_path / "drawn")))  # fmt: skip
    rows = _rows(out)
    assert n == len(rows) == 4  # astronaut 1 + two faces + blank's "no face" row
    assert [(r["path"], r["face"]) for r in rows] == [
        ("astronaut.png", "0"), ("blank.jpg", ""), ("group/two.jpg", "0"), ("group/two.jpg", "1")
    ]  # fmt: skip
    blank = rows[1]
    assert blank["note"] == "no face" and blank["x0"] == blank["prediction"] == ""
    assert "broken.jpg" in caplog.text  # the corrupt file is named and skipped
    drawn = sorted(p.relative_to(tmp_path / "drawn").as_posix()
                   for p in (tmp_path / "drawn").rglob("*"))  # fmt: skip
    assert drawn == ["astronaut.png", "blank.jpg", "group", "group/two.jpg"]
    with Image.open(tmp_path / "drawn" / "astronaut.png") as img, \
            Image.open(photos / "astronaut.png") as orig:  # fmt: skip
        diff = np.abs(np.asarray(img, dtype=int) - np.asarray(orig, dtype=int)).sum(2)
    ys, xs = np.nonzero(diff)
    # drawing stays on and around the face: its box, landmarks and label
    assert xs.min() > 150 and xs.max() < 300 and ys.max() < 200


def _settings(**kw):
    from scn.faces.pipeline import DetectSettings

    return DetectSettings(**kw)


def _write_video(path: Path, image: np.ndarray, frames: int = 6) -> None:
    """A short MP4: the portrait's face moving right over a grey background."""
    container = av.open(str(path), mode="w")
    stream = container.add_stream("mpeg4", rate=10)
    stream.width, stream.height, stream.pix_fmt = 320, 240, "yuv420p"
    stream.bit_rate = 4_000_000
    face = image[40:220, 130:310]  # 180 x 180 around the face
    for i in range(frames):
        canvas = np.full((240, 320, 3), 110, np.uint8)
        canvas[30:210, 10 + 20 * i : 190 + 20 * i] = face
        for packet in stream.encode(av.VideoFrame.from_ndarray(canvas, format="rgb24")):
            container.mux(packet)
    for packet in stream.encode():
        container.mux(packet)
    container.close()


def test_detect_on_a_video_every_second_frame_and_an_annotated_mp4(
    tiny_checkpoint, astronaut, tmp_path, caplog
):
    image, _ = astronaut
    videos = tmp_path / "videos"
    videos.mkdir()
    _write_video(videos / "clip.mp4", image)
    (videos / "bad.mp4").write_bytes(b"\x00\x00\x00\x18ftypmp42 truncated")
    out = tmp_path / "video.csv"
    code = predict_main([str(tiny_checkpoint), str(videos), "--detect", "--frame-stride", "2",
                         "--out", str(out), "--annotate", str(tmp_path / "drawn")])  # fmt: skip
    assert code == 0
    rows = _rows(out)
    assert [(r["path"], r["frame"], r["face"]) for r in rows] == [
        ("clip.mp4", "0", "0"), ("clip.mp4", "2", "0"), ("clip.mp4", "4", "0")
    ]  # fmt: skip
    assert [float(r["time"]) for r in rows] == pytest.approx([0.0, 0.2, 0.4])
    x0 = [float(r["x0"]) for r in rows]
    assert x0[1] - x0[0] == pytest.approx(40, abs=4) and x0[2] - x0[1] == pytest.approx(40, abs=4)
    assert "bad.mp4" in caplog.text  # the undecodable video is named and skipped
    with av.open(str(tmp_path / "drawn" / "clip.mp4")) as annotated:
        decoded = [f.to_ndarray(format="rgb24") for f in annotated.decode(video=0)]
    assert len(decoded) == 3 and decoded[0].shape == (240, 320, 3)


def test_detect_refuses_what_it_cannot_read(tiny_checkpoint, tmp_path):
    (tmp_path / "notes.txt").write_text("x")
    with pytest.raises(UserError, match="takes a photo, a video or a folder"):
        predict(str(tiny_checkpoint), str(tmp_path / "notes.txt"), str(tmp_path / "p.csv"),
                detect=_settings())  # fmt: skip
    with pytest.raises(UserError, match="does not combine with --dataset"):
        predict(str(tiny_checkpoint), str(tmp_path), str(tmp_path / "p.csv"), dataset="rafdb",
                detect=_settings())  # fmt: skip


def test_export_cli_refuses_a_missing_checkpoint(tmp_path, caplog):
    from scn.export import main as export_main

    assert export_main([str(tmp_path / "missing.pt"), "--format", "onnx"]) == 2
    assert "missing.pt" in caplog.text
