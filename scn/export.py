"""`python -m scn.export CHECKPOINT --format onnx|torchscript --out FILE`: one file that holds the
network with its preprocessing, for serving without this project.

The exported graph takes `images`, uint8 RGB (N, 3, S, S) in 0..255 at the model's input side S
(resize first; any batch size N), normalises them itself and returns `probabilities` (N, classes),
the softmax over the class names. The metadata (ONNX `metadata_props` key `scn`; TorchScript extra
file `scn.json`) is one JSON object: class_names, input_size, mean, std (already applied inside),
input, output, backbone, and the alignment template the training data used when it is known.
Each export is checked against PyTorch on a random batch before it is written (max abs difference
<= 1e-4; onnxruntime for ONNX). `python -m scn.predict` reads exported files as well as
checkpoints (class probabilities only: alpha and RAN's region weights need the checkpoint).
"""

from __future__ import annotations

import io
import json
import logging
import sys
import tempfile
import warnings
import zipfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn as nn
from omegaconf import OmegaConf
from torchvision.transforms.v2 import functional as F

from scn.cli import add_model_options, run_tool, tool_parser
from scn.errors import UserError
from scn.io import atomic_open
from scn.models.backbones import Preprocessing

log = logging.getLogger(__name__)

FORMATS = ("onnx", "torchscript")
METADATA_KEY = "scn"  # ONNX metadata_props key
EXTRA_FILE = "scn.json"  # TorchScript _extra_files name
TOLERANCE = 1e-4
INSTALL_HINT = 'pip install -e ".[faces]"'


class ProbabilityModel(nn.Module):
    """uint8 RGB images -> class probabilities: the normalisation and the softmax inside, the
    model's other outputs (alpha, features, region weights) left out."""

    def __init__(self, model: nn.Module, mean: tuple[float, ...], std: tuple[float, ...]):
        super().__init__()
        self.model = model
        self.register_buffer("scale", 1.0 / (255.0 * torch.tensor(std).view(1, 3, 1, 1)))
        self.register_buffer("shift", torch.tensor(mean).view(1, 3, 1, 1) * 255.0)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        x = (images.float() - self.shift) * self.scale
        return torch.softmax(self.model(x).logits.float(), dim=1)


class UInt8Transform:
    """PIL image -> uint8 (3, S, S): the same resize as the checkpoint path's EvalTransform, with
    the normalisation left to the exported model."""

    def __init__(self, size: int):
        self.size = int(size)

    def __call__(self, img) -> torch.Tensor:
        x = F.pil_to_tensor(img.convert("RGB"))
        if tuple(x.shape[-2:]) != (self.size, self.size):
            x = F.resize(x, [self.size, self.size], antialias=True)
        return x


@dataclass
class ExportedModel:
    """An exported file loaded for inference: class probabilities only."""

    path: Path
    class_names: list[str]
    preprocessing: Preprocessing
    metadata: dict[str, Any]
    run: Callable[[np.ndarray], np.ndarray] = field(repr=False)
    model: object = None  # no region weights, no alpha (predict asks the model for num_regions)

    @property
    def transform(self) -> UInt8Transform:
        return UInt8Transform(self.preprocessing.input_size)

    def probabilities(self, images: torch.Tensor) -> torch.Tensor:
        return torch.from_numpy(np.asarray(self.run(images.numpy()), dtype=np.float32))


def export(checkpoint: str, fmt: str, out: str | None = None, device: str = "cpu") -> Path:
    """Export the checkpoint's model; returns the file written."""
    from scn.faces.pipeline import recorded_template
    from scn.inference import load_model

    if fmt not in FORMATS:
        raise UserError(f"--format {fmt}: choose one of {', '.join(FORMATS)}")
    lm = load_model(checkpoint, device)
    pre = lm.preprocessing
    wrapper = ProbabilityModel(lm.model, pre.mean, pre.std).to(lm.device).eval()
    meta: dict[str, Any] = {
        "format": "scn-export",
        "version": 1,
        "class_names": list(lm.class_names),
        "input_size": int(pre.input_size),
        "mean": [float(v) for v in pre.mean],
        "std": [float(v) for v in pre.std],
        "input": f"images: uint8 RGB (N, 3, {pre.input_size}, {pre.input_size}), 0-255, an "
        "aligned face resized to the input size; normalised inside",
        "output": "probabilities (N, len(class_names)): softmax over class_names",
        "backbone": OmegaConf.select(lm.config, "backbone.name") if lm.config else None,
        "template": recorded_template(lm),
        "checkpoint": Path(checkpoint).name,
    }
    target = Path(out) if out else _default_out(Path(checkpoint), fmt)
    gen = torch.Generator().manual_seed(0)
    size = pre.input_size
    check = torch.randint(0, 256, (3, 3, size, size), dtype=torch.uint8, generator=gen)
    with torch.no_grad():
        expected = wrapper(check.to(lm.device)).cpu().numpy()
    if fmt == "onnx":
        data = _onnx_bytes(wrapper, check.to(lm.device), meta)
        got = _onnx_runner(data, "cpu")(check.numpy())
    else:
        data = _torchscript_bytes(wrapper, check.to(lm.device), meta)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)
            module = torch.jit.load(io.BytesIO(data), map_location="cpu")
        got = _torchscript_runner(module)(check.numpy())
    diff = float(np.abs(got - expected).max())
    if not diff <= TOLERANCE:
        raise RuntimeError(f"the {fmt} export differs from PyTorch by {diff:.2e} (> {TOLERANCE})")
    with atomic_open(target, "wb") as f:
        f.write(data)
    log.info("%s written to %s (%.1f MB); %d classes, input uint8 (N, 3, %d, %d); "
             "max abs difference to PyTorch %.1e", fmt, target, len(data) / 2**20,
             len(lm.class_names), size, size, diff)  # fmt: skip
    return target


def _default_out(checkpoint: Path, fmt: str) -> Path:
    return checkpoint.with_name(checkpoint.stem + (".onnx" if fmt == "onnx" else ".torchscript.pt"))


def _onnx_bytes(wrapper: nn.Module, example: torch.Tensor, meta: dict[str, Any]) -> bytes:
    try:
        import onnx
        import onnxscript  # noqa: F401  (torch's ONNX exporter needs it)
    except ImportError as e:
        raise UserError(f"ONNX export needs onnx and onnxscript: {INSTALL_HINT} ({e})") from None
    batch = torch.export.Dim("batch", min=1, max=65536)
    with tempfile.TemporaryDirectory(prefix="scn-export-") as tmp:
        path = Path(tmp) / "model.onnx"
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.onnx.export(
                wrapper, (example,), str(path), input_names=["images"],
                output_names=["probabilities"], dynamic_shapes={"images": {0: batch}},
                dynamo=True, external_data=False, verbose=False,
            )  # fmt: skip
        proto = onnx.load(str(path))
    del proto.metadata_props[:]
    entry = proto.metadata_props.add()
    entry.key, entry.value = METADATA_KEY, json.dumps(meta)
    proto.doc_string = "Facial expression classifier exported by scn: " + meta["output"]
    return proto.SerializeToString()


def _torchscript_bytes(wrapper: nn.Module, example: torch.Tensor, meta: dict[str, Any]) -> bytes:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # tracer and deprecation warnings
        traced = torch.jit.trace(wrapper, example, check_trace=False)
        buf = io.BytesIO()
        torch.jit.save(traced, buf, _extra_files={EXTRA_FILE: json.dumps(meta)})
    return buf.getvalue()


def _onnx_runner(model: bytes | str, device: str) -> Callable[[np.ndarray], np.ndarray]:
    try:
        import onnxruntime as ort
    except ImportError as e:
        raise UserError(f"running ONNX models needs onnxruntime: {INSTALL_HINT} ({e})") from None
    providers = ["CPUExecutionProvider"]
    if device.startswith("cuda") and "CUDAExecutionProvider" in ort.get_available_providers():
        providers.insert(0, "CUDAExecutionProvider")
    options = ort.SessionOptions()
    options.log_severity_level = 3
    session = ort.InferenceSession(model, options, providers=providers)
    return lambda x: session.run(None, {"images": np.ascontiguousarray(x, dtype=np.uint8)})[0]


def _torchscript_runner(module: torch.jit.ScriptModule, device: str = "cpu"):
    dev = torch.device(device)

    def run(x: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            return module(torch.from_numpy(np.ascontiguousarray(x)).to(dev)).float().cpu().numpy()

    return run


def exported_format(path: str | Path) -> str | None:
    """ "onnx" or "torchscript" for a file this module wrote (by content), None otherwise
    (e.g. a training checkpoint)."""
    path = Path(path)
    if not path.is_file():
        return None
    with path.open("rb") as f:
        head = f.read(4)
    if head[:2] == b"PK":  # torch's zip formats: TorchScript archives carry extra/scn.json
        try:
            with zipfile.ZipFile(path) as z:
                names = z.namelist()
        except zipfile.BadZipFile:
            return None
        if any(n.endswith("/extra/" + EXTRA_FILE) for n in names):
            return "torchscript"
        return None
    if path.suffix.lower() == ".onnx":
        return "onnx"
    return None


def load_exported(path: str | Path, device: str = "cpu") -> ExportedModel:
    """A file written by `python -m scn.export`, ready for `scn.predict`."""
    path = Path(path)
    fmt = exported_format(path)
    if fmt == "onnx":
        try:
            import onnx
        except ImportError as e:
            raise UserError(f"reading ONNX models needs onnx: {INSTALL_HINT} ({e})") from None
        try:
            proto = onnx.load(str(path), load_external_data=False)
        except Exception as e:  # protobuf's DecodeError and friends
            raise UserError(f"{path} is not a readable ONNX model: {e}") from e
        props = {p.key: p.value for p in proto.metadata_props}
        raw = props.get(METADATA_KEY)
        run = _onnx_runner(proto.SerializeToString(), device)
    elif fmt == "torchscript":
        extra = {EXTRA_FILE: ""}
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)  # torch.jit's deprecation notice
            module = torch.jit.load(str(path), map_location=device, _extra_files=extra)
        raw = extra[EXTRA_FILE]
        run = _torchscript_runner(module, device)
    else:
        raise UserError(f"{path} is not a model exported by scn.export (.onnx or TorchScript)")
    try:
        meta = json.loads(raw) if raw else None
        pre = Preprocessing(int(meta["input_size"]), tuple(meta["mean"]), tuple(meta["std"]))
        names = [str(n) for n in meta["class_names"]]
    except (TypeError, KeyError, ValueError) as e:
        raise UserError(
            f"{path} carries no scn metadata (class names, input size); export it with "
            f"python -m scn.export"
        ) from e
    return ExportedModel(path, names, pre, meta, run)


def main(argv: list[str] | None = None) -> int:
    parser = tool_parser("export", __doc__)
    parser.add_argument("checkpoint", help="best.pt or last.pt written by a training run")
    parser.add_argument("--format", required=True, choices=FORMATS, dest="fmt")
    parser.add_argument(
        "--out",
        help="file to write (default: beside the checkpoint, .onnx or .torchscript.pt)",
    )
    add_model_options(parser, device="cpu", batch_size=False)  # the device it is traced on
    return run_tool(parser, argv, lambda a: export(a.checkpoint, a.fmt, a.out, a.device))


if __name__ == "__main__":
    sys.exit(main())
