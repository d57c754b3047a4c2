"""task=pretrain: margin heads against hand values, verification accuracy on crafted embeddings,
identity folders, the RecordIO layout, and pretrain -> backbone.pth -> strict load into training."""

import json
import math
import struct
from io import BytesIO
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from omegaconf import OmegaConf
from PIL import Image

from scn.data.identities import held_out_count, keep_identities, scan_folders, split_identities
from scn.data.recordio import MAGIC, RecordImages, pack, scan_recordio, write_record
from scn.data.synthetic import write_identities
from scn.engine.trainer import Trainer
from scn.engine.verify import best_threshold, verification_accuracy
from scn.errors import UserError
from scn.models.backbones import create_backbone
from scn.models.margin import MarginHead, logits_cross_entropy
from tests.conftest import compose_cfg, run_py, tiny_args, untimed_rows


def head_with_axes(loss: str, scale: float, margin: float) -> MarginHead:
    """Centres along +x, +y, -x: an embedding (1, 0) has cosines 1, 0, -1 (angles 0, pi/2, pi)."""
    head = MarginHead(2, 3, loss, scale, margin)
    head.weight.data = torch.tensor([[1.0, 0.0], [0.0, 1.0], [-1.0, 0.0]])
    return head


@pytest.mark.parametrize(
    "loss,margin,label,expected",
    [
        ("arcface", 0.5, 0, [2 * math.cos(0.5), 0.0, -2.0]),  # s * cos(0 + m)
        ("arcface", 0.5, 1, [2.0, -2 * math.sin(0.5), -2.0]),  # s * cos(pi/2 + m)
        # theta = pi: cos(pi + m) = -0.878 would wrap (an easier target than -1); the fallback
        # cos(theta) - m * sin(m) = -1.2397 keeps the margin a penalty
        ("arcface", 0.5, 2, [2.0, 0.0, 2 * (-1 - 0.5 * math.sin(0.5))]),
        ("cosface", 0.35, 2, [2.0, 0.0, 2 * (-1 - 0.35)]),
        ("cosface", 0.35, 0, [2 * 0.65, 0.0, -2.0]),
        ("softmax", 0.0, 1, [2.0, 0.0, -2.0]),
    ],
)
def test_margin_logits_match_hand_values(loss, margin, label, expected):
    head = head_with_axes(loss, 2.0, margin)
    emb = torch.tensor([[3.0, 0.0]], requires_grad=True)  # normalised to (1, 0)
    y = torch.tensor([label])
    logits, plain = head.logits_and_target(emb, y)
    assert torch.allclose(logits, torch.tensor([expected]), atol=1e-5)
    assert logits.dtype == torch.float32
    loss_value = logits_cross_entropy(logits, y)
    assert torch.isclose(loss_value, F.cross_entropy(torch.tensor([expected]), y), atol=1e-5)
    loss_value.backward()  # then the margin comes out again, in place: train/id_acc's argmax
    shown = head.without_margin(logits.detach(), y, plain)
    assert torch.allclose(shown, torch.tensor([[2.0, 0.0, -2.0]]), atol=1e-5)


def test_arcface_fallback_jumps_down_at_pi_minus_m_and_stays_below_the_plain_cosine():
    m = 0.5
    head = head_with_axes("arcface", 1.0, m)

    def target(theta: float) -> float:
        emb = torch.tensor([[math.cos(theta), math.sin(theta)]])
        return float(head(emb, torch.tensor([0]))[0, 0].detach())

    for theta in (math.pi - m - 1e-3, math.pi - m + 1e-3, math.pi):
        got = target(theta)
        assert got < math.cos(theta)  # always a penalty, never a wrap
        assert abs(got - (math.cos(theta + m) if theta < math.pi - m else
                          math.cos(theta) - m * math.sin(m))) < 1e-4  # fmt: skip
    # at theta = pi - m the margin side reaches cos(pi) = -1 and the fallback starts at
    # -cos(m) - m sin(m) = -0.8775826 - 0.2397128: a drop of cos(m) + m sin(m) - 1 = 0.1172953
    # (1e-5 either side of the boundary: the head's fp32 cosines resolve about 1e-7 rad there)
    before, after = target(math.pi - m - 1e-5), target(math.pi - m + 1e-5)
    assert before == pytest.approx(-1.0, abs=1e-5)
    assert after == pytest.approx(-1.1172953, abs=1e-5)
    assert before - after == pytest.approx(0.1172953, abs=1e-5)


@pytest.mark.parametrize("loss", ["arcface", "cosface", "softmax"])
def test_loss_gradients_match_a_one_hot_reference(loss):
    torch.manual_seed(0)
    head = MarginHead(8, 10, loss, 16.0, {"arcface": 0.5, "cosface": 0.35, "softmax": 0.0}[loss])
    emb = torch.randn(6, 8, requires_grad=True)
    y = torch.tensor([1, 2, 3, 4, 0, 9])
    logits_cross_entropy(head(emb, y), y).backward()
    grads = emb.grad.clone(), head.weight.grad.clone()
    emb.grad = head.weight.grad = None
    cos = F.linear(F.normalize(emb), F.normalize(head.weight))
    onehot = F.one_hot(y, 10).bool()
    m = head.margin
    if loss == "arcface":
        plain = torch.cos(torch.acos(cos.clamp(-1, 1)) + m)
        target = torch.where(cos > -math.cos(m), plain, cos - m * math.sin(m))
    else:
        target = cos - m
    F.cross_entropy(torch.where(onehot, target, cos) * 16, y).backward()
    assert torch.allclose(grads[0], emb.grad, rtol=1e-4, atol=1e-5)
    assert torch.allclose(grads[1], head.weight.grad, rtol=1e-4, atol=1e-5)


def test_verification_accuracy_on_crafted_embeddings():
    # pairs' cosine similarities 0.9, 0.8, 0.7 | 0.3, 0.2, 0.75 (fold 0 | fold 1)
    sims = np.array([0.9, 0.8, 0.7, 0.3, 0.2, 0.75])
    same = np.array([1, 1, 0, 0, 0, 1], dtype=bool)
    assert best_threshold(sims, same) == (pytest.approx(0.725), 1.0)
    # fold 0's threshold from fold 1 is (0.75 + 0.3) / 2: it calls 0.7 "same" -> 2/3;
    # fold 1's from fold 0 is (0.8 + 0.7) / 2 = 0.75: 0.75 is not above it -> 2/3
    out = verification_accuracy(sims, same, np.array([0, 0, 0, 1, 1, 1]))
    assert out["verify/acc"] == pytest.approx(2 / 3) and out["verify/acc_std"] == 0
    assert out["verify/threshold"] == pytest.approx((0.525 + 0.75) / 2)
    # the same figures from embeddings: unit vectors at the angles that give these cosines
    from scn.engine.verify import pair_similarities

    angles = np.arccos(sims)
    emb = np.zeros((12, 2))
    emb[0::2, 0] = 5.0  # first of each pair along +x (any length: embeddings are normalised)
    emb[1::2] = np.stack([np.cos(angles), np.sin(angles)], 1)
    pairs = np.arange(12).reshape(6, 2)
    assert np.allclose(pair_similarities(torch.tensor(emb), pairs), sims)


def test_held_out_identity_counts():
    assert held_out_count(0.1, 12) == 2  # a share, at least 2
    assert held_out_count(0.1, 100) == 10
    assert held_out_count(3, 12) == 3  # an int is a count
    with pytest.raises(UserError, match="at least 2"):
        held_out_count(12, 12)


def test_negative_pairs_stop_at_what_exists():
    from scn.data.identities import make_pairs

    pairs, same = make_pairs(np.array([0] * 10 + [1] * 2), seed=0)  # 45 + 1 positives
    assert int(same.sum()) == 46 and int((~same).sum()) == 20  # only 10 x 2 negatives exist
    assert len({tuple(p) for p in pairs[~same].tolist()}) == 20


def _dcfg(**extra):
    return OmegaConf.create({"verify_identities": 2, "verify_seed": 0, "verify_pairs": None,
                             "verify_root": None, "root": None, **extra})  # fmt: skip


def test_identity_folders_drop_small_identities_and_hold_out_pairs(tmp_path):
    for ident, n in (("ann", 3), ("bob", 3), ("cyd", 3), ("dan", 1), ("eve", 4)):
        (tmp_path / ident).mkdir()
        for k in range(n):
            Image.new("RGB", (8, 8), (k, 0, 0)).save(tmp_path / ident / f"{k}.png")
    (tmp_path / "ann" / "notes.txt").write_text("not an image")
    found = keep_identities(scan_folders(tmp_path), 2)
    assert found.names == ["ann", "bob", "cyd", "eve"]
    assert any("1 identities with fewer than 2 images dropped" in n for n in found.notes)
    files, pairs, same, folds = split_identities(_dcfg(), found)
    train, test = files.splits["train"], files.splits["test"]
    held = sorted({files.class_names[i] for i in test.labels})
    assert len(held) == 2 and len(train.images) + len(test.images) == 13
    assert not set(held) & {files.class_names[i] for i in train.labels}
    assert sorted(set(train.labels.tolist())) == list(range(2))  # train identities first: 0..C-1
    positives = sum(math.comb(len(list((tmp_path / h).glob("*.png"))), 2) for h in held)
    assert int(same.sum()) == positives and len(pairs) == 2 * positives  # all positives + as many
    assert (test.labels[pairs[same, 0]] == test.labels[pairs[same, 1]]).all()
    assert (test.labels[pairs[~same, 0]] != test.labels[pairs[~same, 1]]).all()
    assert len(np.unique(folds)) == max(2, min(10, len(pairs) // 2))


def test_lfw_pairs_file_gives_the_pairs_and_folds(tmp_path):
    for person, n in (("Ann_A", 2), ("Bob_B", 1)):
        (tmp_path / "lfw" / person).mkdir(parents=True)
        for k in range(1, n + 1):
            Image.new("RGB", (8, 8)).save(tmp_path / "lfw" / person / f"{person}_{k:04d}.jpg")
    lines = ["2\t2", "Ann_A 1 2", "Ann_A 1 Bob_B 1", "Ann_A 2 2", "Bob_B 1 Ann_A 2"]
    (tmp_path / "pairs.txt").write_text("\n".join(lines) + "\n")
    (tmp_path / "train" / "x").mkdir(parents=True)
    for k in range(2):
        Image.new("RGB", (8, 8)).save(tmp_path / "train" / "x" / f"{k}.png")
    found = scan_folders(tmp_path / "train")
    dcfg = _dcfg(verify_pairs=str(tmp_path / "pairs.txt"), verify_root=str(tmp_path / "lfw"))
    files, pairs, same, folds = split_identities(dcfg, found)
    names = files.splits["test"].images.names
    assert names == ["Ann_A/Ann_A_0001.jpg", "Ann_A/Ann_A_0002.jpg", "Bob_B/Bob_B_0001.jpg"]
    assert pairs.tolist() == [[0, 1], [0, 2], [1, 1], [2, 1]]
    assert same.tolist() == [True, False, True, False] and folds.tolist() == [0, 0, 1, 1]
    (tmp_path / "pairs.txt").write_text("2\t2\nAnn_A 1 9\n")
    with pytest.raises(UserError, match=r"pairs.txt:2: image .*Ann_A_0009.jpg not found"):
        split_identities(dcfg, found)


def _png(color) -> bytes:
    buf = BytesIO()
    Image.new("RGB", (6, 4), color).save(buf, format="PNG")
    return buf.getvalue()


def write_release(root: Path, images: list[tuple[int, bytes, bool]]) -> None:
    """insightface layout: header record 0, image records 1..N (scalar label, or a label array when
    the flag says so), one record per identity, train.idx and property."""
    root.mkdir(parents=True, exist_ok=True)
    ids = sorted({i for i, _, _ in images})
    n = len(images)
    offsets = {}
    with open(root / "train.rec", "wb") as f:
        offsets[0] = write_record(f, pack(2, [n + 1, n + 1 + len(ids)], b""))
        for k, (ident, data, as_array) in enumerate(images, start=1):
            payload = pack(2, [ident, 0.0], data) if as_array else pack(0, ident, data)
            offsets[k] = write_record(f, payload)
        for j, ident in enumerate(ids):
            rows = [k for k, im in enumerate(images, start=1) if im[0] == ident]
            offsets[n + 1 + j] = write_record(f, pack(2, [rows[0], rows[-1] + 1], b""))
    (root / "train.idx").write_text("".join(f"{k}\t{o}\n" for k, o in offsets.items()))
    (root / "property").write_text(f"{len(ids)},4,6\n")


def test_recordio_release_reads_back_exactly(tmp_path):
    images = [(7, _png((10, 20, 30)), False), (7, _png((40, 50, 60)), True),
              (3, _png((70, 80, 90)), False)]  # fmt: skip
    write_release(tmp_path / "rel", images)
    rec, offsets, labels, notes = scan_recordio(tmp_path / "rel")
    assert labels.tolist() == [7, 7, 3]  # scalar label and first of a label array; no id records
    assert any("image records 1..3" in n for n in notes)
    listing = RecordImages(rec, offsets)
    for i, (_, data, _) in enumerate(images):
        assert np.array_equal(np.asarray(listing.load(i)), np.asarray(Image.open(BytesIO(data))))
    assert listing.subset([2]).load(0).getpixel((0, 0)) == (70, 80, 90)
    from scn.data.cache import decoded_images  # the decoded cache reads records like files

    cached = decoded_images(tmp_path / "cache", "train", listing)
    assert cached.shape == (3, 4, 6, 3) and tuple(cached[1, 0, 0]) == (40, 50, 60)


def test_recordio_refuses_other_layouts(tmp_path):
    write_release(tmp_path / "rel", [(1, _png((1, 2, 3)), False)])
    rec = tmp_path / "rel" / "train.rec"
    raw = bytearray(rec.read_bytes())
    first_image = int((tmp_path / "rel" / "train.idx").read_text().splitlines()[1].split()[1])
    bad = bytearray(raw)
    bad[first_image : first_image + 4] = struct.pack("<I", 0x12345678)
    rec.write_bytes(bytes(bad))
    with pytest.raises(UserError, match=f"train.rec: no RecordIO record at offset {first_image}"):
        scan_recordio(tmp_path / "rel")
    multi = bytearray(raw)
    length = struct.unpack_from("<I", raw, first_image + 4)[0]
    struct.pack_into("<II", multi, first_image, MAGIC, length | (1 << 29))
    rec.write_bytes(bytes(multi))
    with pytest.raises(UserError, match=f"offset {first_image} is a multi-part record"):
        scan_recordio(tmp_path / "rel")


def test_pretrain_writes_a_backbone_a_training_run_loads_strictly(tmp_path, cache_dir):
    ids = tmp_path / "ids"
    write_identities(ids, identities=12, images_per_identity=6, image_size=40, seed=0)
    args = tiny_args("task=pretrain", "dataset=identities", f"dataset.root={ids}",
                     "trainer.epochs=1", "trainer.batch_size=32", f"hydra.run.dir={tmp_path / 'pt'}")  # fmt: skip
    args = [a for a in args if not a.startswith("dataset.synthetic")]
    r = run_py(args, tmp_path, cache_dir)
    assert r.returncode == 0, r.stderr[-3000:]
    summary = json.loads((tmp_path / "pt" / "summary.json").read_text())
    rows = untimed_rows(tmp_path / "pt" / "metrics.jsonl")
    assert [r["epoch"] for r in rows] == [1] and summary["selected_epoch"] == 1
    assert summary["verify/acc"] == rows[0]["verify/acc"] and "train/id_acc" in summary
    assert all(0 < r["train/loss"] < float("inf") for r in rows)  # a margin loss is positive
    assert summary["identities"] == 10 and summary["selected_on"] == "verify"  # 2 held out
    saved = torch.load(tmp_path / "pt" / "backbone.pth", weights_only=True)
    assert set(saved) == {"state_dict", "preprocessing"}
    cfg = compose_cfg(tiny_args("trainer.epochs=1"), tmp_path / "run")
    own = create_backbone(cfg.backbone).state_dict()
    assert saved["state_dict"].keys() == own.keys()  # backbone only: no embedding, no margin head
    assert saved["preprocessing"]["input_size"] == 32
    cfg = compose_cfg(
        tiny_args(
            "dataset.image_size=null", f"backbone.weights={tmp_path / 'pt' / 'backbone.pth'}"
        ),
        tmp_path / "run",
    )
    trainer = Trainer(cfg, tmp_path / "run")  # strict: every backbone tensor from the file
    assert trainer.preprocessing.input_size == 32  # the file's preprocessing, implied
    loaded = trainer.model.backbone.state_dict()
    assert all(torch.equal(loaded[k].cpu(), v) for k, v in saved["state_dict"].items())


def test_demo_faces_stay_byte_identical_and_identities_are_disjoint(tmp_path):
    """The expression demo's files hash as the generator wrote them before identities existed."""
    import hashlib

    from scn.data.synthetic import write_synthetic

    write_synthetic(tmp_path / "demo", 2, 1, 32, 0)
    h = hashlib.sha256()
    for p in sorted((tmp_path / "demo").rglob("*")):
        if p.is_file():
            h.update(p.relative_to(tmp_path / "demo").as_posix().encode())
            h.update(p.read_bytes())
    assert h.hexdigest() == "1743ff978a45f7a2e34a655510cc5676df686871b931c21307501486bb18d660"
    write_identities(tmp_path / "ids", identities=2, images_per_identity=2, image_size=32, seed=0)
    faces = {p.read_bytes() for p in (tmp_path / "demo").rglob("*.jpg")}
    assert not faces & {p.read_bytes() for p in (tmp_path / "ids").rglob("*.jpg")}
