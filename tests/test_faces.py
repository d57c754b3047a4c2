"""scn.faces: dlib detection and landmarks on a real portrait, the similarity fit and the warp."""

from __future__ import annotations

import json
import sys

import numpy as np
import pytest
from PIL import Image

from scn.errors import UserError
from scn.faces.align import (
    TEMPLATES,
    align_face,
    apply_transform,
    similarity_transform,
    warp_affine,
)

pytest.importorskip("dlib")


def test_one_face_in_the_astronaut_portrait_with_eye_and_nose_landmarks(astronaut):
    _, faces = astronaut
    assert len(faces) == 1  # the weak false face on her suit (score 0.12) is below min_score 0.5
    f = faces[0]
    # MTCNN puts this face at [181, 62, 268, 172]; dlib's HOG boxes are squarer and lower
    assert np.allclose(f.box, [175, 76, 266, 167], atol=6), f.box
    assert f.score > 1.0
    (lx, ly), (rx, ry), (nx, ny) = f.landmarks[:3]
    # eye centres between the two eye corners dlib marks, left eye on the image's left
    assert 195 < lx < 212 and 238 < rx < 256 and 95 < ly < 110 and 95 < ry < 110
    assert lx < nx < rx and ny > max(ly, ry) + 20  # nose base below the eyes, between them
    assert np.isnan(f.landmarks[3:]).all()  # the 5-point model marks no mouth corners


def test_two_pasted_copies_give_two_faces_largest_first_and_a_blank_image_none(
    astronaut, face_detector
):
    image, faces = astronaut
    small = np.asarray(Image.fromarray(image).resize((384, 384)))
    side_by_side = np.concatenate([image, np.pad(small, ((0, 128), (0, 0), (0, 0)))], axis=1)
    two = face_detector(side_by_side)
    assert len(two) == 2
    assert np.allclose(two[0].box, faces[0].box, atol=3)  # the full-size copy comes first
    assert two[1].box[0] > 512 and two[1].side < two[0].side
    assert face_detector(np.full((200, 240, 3), 128, np.uint8)) == []


def test_large_photos_are_searched_downscaled_but_landmarked_at_full_size(astronaut):
    from scn.faces.detect import FaceDetector

    image, faces = astronaut
    detector = FaceDetector(max_side=256)  # the 512 px photo is searched at 256 px
    [face] = detector(image)
    assert np.allclose(face.box, faces[0].box, atol=8)
    assert np.abs(face.landmarks[:3] - faces[0].landmarks[:3]).max() <= 3


@pytest.mark.parametrize("name,size", [("rafdb", 100), ("rafdb", 224), ("arcface", 224)])
def test_alignment_puts_the_landmarks_on_the_template(astronaut, face_detector, name, size):
    image, faces = astronaut
    template = TEMPLATES[name]
    crop, m = align_face(image, faces[0].landmarks, template, size)
    target = template.fit_points(size)[:3]
    assert crop.size == (size, size)
    assert np.abs(apply_transform(m, faces[0].landmarks[:3]) - target).max() < 2
    if size >= 200:  # the warp itself: detect the face again in the crop
        [again] = face_detector(crop)
        assert np.abs(again.landmarks[:3] - target).max() < 2


def test_templates_scale_by_pixel_centres():
    arc = TEMPLATES["arcface"]
    assert arc.scaled(112) == pytest.approx(np.asarray(arc.points))
    # 112 -> 224: (38.2946 + 0.5) * 2 - 0.5
    assert arc.scaled(224)[0] == pytest.approx([77.0892, 103.8926])
    raf = TEMPLATES["rafdb"].scaled(100)
    assert raf[:2].tolist() == [[32.5, 38.0], [66.5, 38.0]]  # eyes 34 px apart, centred
    # the nose base sits 0.17 eye distances below the tip
    assert TEMPLATES["rafdb"].fit_points(100)[2] == pytest.approx([49.5, 57.4 + 0.17 * 34])


def test_similarity_transform_recovers_rotation_scale_shift_and_refuses_reflections():
    src = np.array([[0.0, 0.0], [10.0, 0.0], [0.0, 10.0], [10.0, 10.0]])
    # rotate 90 degrees (x, y) -> (-y, x), scale 2, shift (5, 7)
    dst = np.array([[5.0, 7.0], [5.0, 27.0], [-15.0, 7.0], [-15.0, 27.0]])
    m = similarity_transform(src, dst)
    assert m == pytest.approx(np.array([[0.0, -2.0, 5.0], [2.0, 0.0, 7.0]]), abs=1e-9)
    elongated = np.array([[0.0, 0.0], [20.0, 0.0], [0.0, 5.0]])
    r = similarity_transform(elongated, elongated * [-1, 1])[:, :2]  # a mirror image
    assert np.linalg.det(r) > 0  # fitted by a rotation, never a flip


def test_warp_samples_at_pixel_centres_and_fills_outside_with_black():
    img = np.zeros((30, 30, 3), np.uint8)
    img[20, 10] = 200  # row 20, column 10
    out = warp_affine(img, np.array([[2.0, 0.0, 0.0], [0.0, 2.0, 0.0]]), 60)
    assert out[40, 20].tolist() == [200, 200, 200]  # pixel (10, 20) lands on (20, 40) exactly
    assert out[40, 21, 0] == 100 and out[41, 20, 0] == 100  # half-way samples
    shifted = warp_affine(
        np.full((10, 10, 3), 255, np.uint8), np.array([[1, 0, 5], [0, 1, 0.0]]), 10
    )
    assert (shifted[:, :5] == 0).all() and (shifted[:, 6:] == 255).all()


def test_a_strong_downscale_averages_instead_of_skipping_pixels():
    stripes = np.zeros((400, 400, 3), np.uint8)
    stripes[:, ::2] = 255  # one-pixel stripes: point sampling at 0.1x would see only one colour
    out = warp_affine(stripes, np.array([[0.1, 0.0, 0.0], [0.0, 0.1, 0.0]]), 40)
    assert np.abs(out[5:35, 5:35].astype(int) - 128).max() <= 2


def test_without_dlib_the_tools_say_how_to_install_it(monkeypatch, tmp_path, caplog):
    from scn.align import main as align_main
    from scn.faces.detect import import_dlib

    monkeypatch.setitem(sys.modules, "dlib", None)  # import dlib now raises ImportError
    with pytest.raises(UserError, match=r'pip install -e "\.\[faces\]"'):
        import_dlib()
    with pytest.raises(SystemExit) as exit_help:  # --help needs nothing of the extra
        align_main(["--help"])
    assert exit_help.value.code == 0
    raw = tmp_path / "raw"
    raw.mkdir()
    Image.new("RGB", (20, 20)).save(raw / "a.jpg")
    assert align_main([str(raw), str(tmp_path / "out"), "--workers", "1"]) == 2
    assert 'pip install -e ".[faces]"' in caplog.text


def test_the_template_recorded_with_the_model_is_found(tmp_path):
    from types import SimpleNamespace

    from omegaconf import OmegaConf

    from scn.faces.pipeline import recorded_template

    (tmp_path / "align.json").write_text(json.dumps({"template": "arcface", "size": 112}))
    trained_here = SimpleNamespace(config=OmegaConf.create({"dataset": {"root": str(tmp_path)}}))
    assert recorded_template(trained_here) == "arcface"  # scn.align's record at dataset.root
    elsewhere = SimpleNamespace(config=OmegaConf.create({"dataset": {"root": "/no/such/dir"}}))
    assert recorded_template(elsewhere) is None  # predict then uses rafdb
    assert recorded_template(SimpleNamespace(metadata={"template": "arcface"})) == "arcface"
