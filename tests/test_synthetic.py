"""The demo generator: RAF-DB layout, determinism, reuse, and class structure."""

import hashlib

import numpy as np

from scn.data.labels import parse_label_file
from scn.data.synthetic import INTENSITY, NEUTRAL, PROTOTYPES, ensure_synthetic, expression_params


def digest(root):
    h = hashlib.sha256()
    for p in sorted(root.rglob("*")):
        if p.is_file() and p.name != "settings.json":
            h.update(p.name.encode() + p.read_bytes())
    return h.hexdigest()


def test_layout_is_rafdb_balanced_and_deterministic(tmp_path, tiny_synthetic):
    entries = parse_label_file(tiny_synthetic / "EmoLabel/list_patition_label.txt")
    train = [e for e in entries if e.name.startswith("train")]
    test = [e for e in entries if e.name.startswith("test")]
    assert len(train) == 42 and len(test) == 21
    assert np.bincount([e.label for e in train]).tolist() == [6] * 7
    for e in entries:
        assert (tiny_synthetic / "Image/aligned" / e.name.replace(".jpg", "_aligned.jpg")).is_file()
    again = ensure_synthetic(tmp_path, train_per_class=6, test_per_class=3, image_size=40, seed=0)
    assert again != tiny_synthetic and digest(again) == digest(tiny_synthetic)
    other = ensure_synthetic(tmp_path, train_per_class=6, test_per_class=3, image_size=40, seed=1)
    assert digest(other) != digest(again)


def test_existing_set_is_reused_not_rewritten(tiny_synthetic, cache_dir):
    label_file = tiny_synthetic / "EmoLabel/list_patition_label.txt"
    before = label_file.stat().st_mtime_ns
    assert (
        ensure_synthetic(cache_dir, train_per_class=6, test_per_class=3, image_size=40, seed=0)
        == tiny_synthetic
    )
    assert label_file.stat().st_mtime_ns == before
    assert not [
        p for p in tiny_synthetic.parent.iterdir() if p.name.startswith(".")
    ]  # no temp dirs


def test_parameters_move_from_neutral_towards_the_class_prototype():
    rng = np.random.default_rng(0)
    for label in range(7):
        params = np.stack([expression_params(rng, label) for _ in range(2000)])
        mean = params.mean(axis=0)
        # the class mean lies mean(intensity) of the way from neutral to the prototype
        expected = NEUTRAL + sum(INTENSITY) / 2 * (PROTOTYPES[label] - NEUTRAL)
        assert np.allclose(mean[[0, 2, 3, 4]], expected[[0, 2, 3, 4]], atol=0.03), label
