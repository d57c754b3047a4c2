"""Shared fixtures: isolated W&B and caches, tiny generated datasets, composed configs."""

from __future__ import annotations

import copy
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf, open_dict
from PIL import Image

import scn.config  # noqa: F401  (registers the scn schema)
from scn.data.synthetic import ensure_synthetic

ROOT = Path(__file__).resolve().parents[1]
CONF = ROOT / "conf"

# tiny settings shared by in-process and subprocess runs: 32 px, a few images, few steps
TINY = [
    "dataset=synthetic",
    "dataset.synthetic.train_per_class=6",
    "dataset.synthetic.test_per_class=3",
    "dataset.synthetic.image_size=40",
    "dataset.image_size=32",
    "trainer.epochs=2",
    "trainer.batch_size=16",
    "trainer.progress=false",
    "dataset.num_workers=0",
    "logger=none",
    "backbone=resnet10t",  # several times faster than resnet18 at 32 px on a CPU, same interface
]


def untimed_rows(path: Path) -> list[dict]:
    """metrics.jsonl rows without their `time/*` keys: wall-clock timings differ between runs."""
    rows = [json.loads(line) for line in Path(path).read_text().splitlines() if line.strip()]
    return [{k: v for k, v in r.items() if not k.startswith("time/")} for r in rows]


def finished_run(run_dir: Path) -> dict:
    """summary.json of a finished run, checked against its metrics.jsonl: the reported test/acc is
    the selected epoch's, and that is the accuracy recomputed by hand from the epoch's confusion
    matrix (trace over sum), so a run that mis-scores or skips evaluation fails here; every
    training loss is finite."""
    summary = json.loads((Path(run_dir) / "summary.json").read_text())
    rows = untimed_rows(Path(run_dir) / "metrics.jsonl")
    row = [r for r in rows if r["epoch"] == summary["selected_epoch"]][-1]
    confusion = np.asarray(row["test/confusion"])
    assert confusion.sum() > 0, run_dir
    assert summary["test/acc"] == row["test/acc"]
    assert row["test/acc"] == pytest.approx(np.trace(confusion) / confusion.sum(), abs=1e-6)
    assert all(np.isfinite(r["train/loss"]) for r in rows), rows
    return summary


def run_py(
    args, cwd, cache_dir, script=None, full_error=False, **env
) -> subprocess.CompletedProcess:
    """`python run.py ARGS` in a fresh process as a user runs it, with the test's caches. `script`:
    a `python -c` program that runs run.py itself (given as its first argument); `full_error`:
    HYDRA_FULL_ERROR=1 (tracebacks of config errors); `env`: more environment variables."""
    environ = {k: v for k, v in os.environ.items() if k != "HYDRA_FULL_ERROR"}
    environ.update(SCN_CACHE_DIR=str(cache_dir), **env)
    if full_error:
        environ["HYDRA_FULL_ERROR"] = "1"
    command = ["-c", script, str(ROOT / "run.py")] if script else [str(ROOT / "run.py")]
    return subprocess.run([sys.executable, *command, *args], cwd=cwd, env=environ,
                          capture_output=True, text=True, timeout=600)  # fmt: skip


def tiny_args(*extra: str) -> list[str]:
    """TINY with `extra` overrides replacing TINY's entries for the same key (Hydra refuses a key
    given twice), e.g. tiny_args("backbone=iresnet18", "trainer.epochs=1")."""
    keys = {e.split("=", 1)[0] for e in extra}
    return [t for t in TINY if t.split("=", 1)[0] not in keys] + list(extra)


@pytest.fixture(scope="session")
def cache_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("scn_cache")


@pytest.fixture(autouse=True)
def isolated_env(monkeypatch, tmp_path, cache_dir):
    """No W&B network or prompts, no writes outside temp folders, few threads."""
    monkeypatch.setenv("WANDB_MODE", "disabled")
    monkeypatch.setenv("WANDB_DIR", str(tmp_path / "wandb"))
    monkeypatch.setenv("WANDB_SILENT", "true")
    monkeypatch.setenv("SCN_CACHE_DIR", str(cache_dir))
    monkeypatch.setenv("SCN_DATA_DIR", str(tmp_path / "no-data-here"))
    torch.set_num_threads(2)


def compose_cfg(overrides: list[str], output_dir: Path | None = None) -> DictConfig:
    """Compose like run.py does, with HydraConfig set so ${hydra:...} resolves."""
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose("config", overrides=overrides, return_hydra_config=True)
    if output_dir is not None:
        with open_dict(cfg):
            cfg.hydra.runtime.output_dir = str(output_dir)
    HydraConfig.instance().set_config(cfg)
    return cfg


def read_dataset(composed: DictConfig, root: Path, *overrides: str):
    """Read `root` with a composed dataset option's reader and `key=value` overrides of its node
    (YAML values, struct-checked); the composed config is left as it was."""
    from scn.data.readers import get_reader

    dcfg = copy.deepcopy(composed).dataset
    dcfg.merge_with(OmegaConf.from_dotlist([f"root={root}", *overrides]))
    return get_reader(dcfg.format)(dcfg, root)


@pytest.fixture
def tiny_cfg(tmp_path):
    def make(*extra: str) -> DictConfig:
        return compose_cfg(tiny_args(*extra), tmp_path / "run")

    return make


@pytest.fixture(scope="session")
def tiny_synthetic(cache_dir) -> Path:
    return ensure_synthetic(cache_dir, train_per_class=6, test_per_class=3, image_size=40, seed=0)


def write_rafdb(root: Path, rows: list[tuple[str, int]], size: int = 24, mode: str = "RGB") -> Path:
    """A RAF-DB-layout folder with random images; rows are (name, 1-based label)."""
    img_dir = root / "Image" / "aligned"
    img_dir.mkdir(parents=True, exist_ok=True)
    (root / "EmoLabel").mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    # every file is named .jpg as in RAF-DB; Pillow reads by content
    fmt = "JPEG" if mode in ("RGB", "L", "CMYK") else "PNG"
    for name, _ in rows:
        arr = rng.integers(0, 255, (size, size, 3), dtype=np.uint8)
        Image.fromarray(arr).convert(mode).save(
            img_dir / f"{Path(name).stem}_aligned.jpg", format=fmt
        )
    text = "\n".join(f"{n} {lab}" for n, lab in rows)
    (root / "EmoLabel" / "list_patition_label.txt").write_text(text)
    return root


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory, cache_dir) -> Path:
    """best.pt of one tiny 1-epoch SCN run (32 px, 7 classes), trained once per session."""
    from scn.app import train

    out = tmp_path_factory.mktemp("tiny_checkpoint")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("SCN_CACHE_DIR", str(cache_dir))
        mp.setenv("WANDB_MODE", "disabled")
        train(compose_cfg([*TINY, "trainer.epochs=1"], out))
    return out / "best.pt"


@pytest.fixture(scope="session")
def face_detector():
    """dlib's detector, loaded once per session (skips without the faces extra)."""
    pytest.importorskip("dlib")
    from scn.faces.detect import FaceDetector

    return FaceDetector()


@pytest.fixture(scope="session")
def astronaut(face_detector):
    """scikit-image's astronaut portrait (512 x 512 RGB, one real face) and its faces, detected
    once per session: detection is the slow part of every face test."""
    skimage_data = pytest.importorskip("skimage.data")
    image = skimage_data.astronaut()
    return image, face_detector(image)
