"""Benchmark: the per-sample file pipeline against the cached pipeline, on this machine, in one run.

    python -m scn.bench                    # writes bench.json in the current directory
    python -m scn.bench --out /tmp/b.json --device cuda

Generates RAF-DB-like data (100x100 JPEG faces) in a temp folder, then measures images/s of each
pipeline alone (training batches: decode or gather, augment, normalise, on the device) at several
output sizes, and of full SCN training steps (ResNet-18, batch 64, 224 px) fed by each pipeline, timed
over a fixed number of batches and extrapolated to a RAF-DB-sized epoch. Both training runs use the
same model settings (trainer auto: precision, channels_last, compile), so the ratio is the pipeline's.
Then SCN+RAN (the whole face and the 5 default crops as one batch) on the cached pipeline, same
settings, as images/s and as a step cost relative to SCN's.

    python -m scn.bench --e2e              # only the whole-run measurement

`--e2e` times what a user waits for instead: `python run.py` on generated data (RAF-DB-sized with
ResNet-18 at 224 px on CUDA; 1,024 images with ResNet-10-T at 48 px on a CPU), `--e2e-epochs` epochs,
twice with one cache folder: cold (empty decoded-image and compile caches, as a sweep's first job) and
warm (as its later jobs and resumed runs), with the runs' `time/*` phase split.

    python -m scn.bench --faces demo       # only the raw-photo measurement (or --faces DIR)

`--faces` times faces in photos instead: detect + align + classify (`scn.predict --detect`) in
faces/s with its split, and `scn.align` with 1 and 2 workers (see scn/facebench.py).

    python -m scn.bench --backbones inception_resnet_v1:160 resnet18:224   # step rate per backbone

`--backbones` times only SCN training steps (cached pipeline, the same batch) of each backbone at its
own input side, e.g. FaceNet's InceptionResnetV1 at its native 160 px next to ResNet-18 at 224.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf

from scn.cli import run_cli, tool_parser
from scn.config import CONF_DIR, compose_config
from scn.data.datasets import DataBundle, dataset_config, load_dataset
from scn.data.pipeline import Pipeline
from scn.data.synthetic import ensure_synthetic
from scn.engine.accel import resolve_accel
from scn.engine.state import step_seed
from scn.engine.step import train_step
from scn.errors import UserError
from scn.methods import build_method
from scn.methods.base import StepContext
from scn.models.backbones import create_backbone
from scn.runtime import resolve_device
from scn.runtime.distributed import SINGLE
from scn.tracking.local import read_metrics

log = logging.getLogger(__name__)

RAFDB_TRAIN_IMAGES = 12271
RAFDB_TEST_IMAGES = 3068
RUN_PY = Path(__file__).resolve().parents[1] / "run.py"
CONF_BACKBONES = CONF_DIR / "backbone"
MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
RECIPE_AUG = {"flip_or_noise_p": 0.5, "noise_var": 30.0, "erasing_p": 0.5,
              "erasing_scale": (0.02, 0.25), "erasing_ratio": (0.3, 3.3)}  # fmt: skip


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    model = platform.processor() or platform.machine()
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.is_file():
        names = [ln.split(":", 1)[1].strip() for ln in cpuinfo.read_text().splitlines()
                 if ln.startswith("model name")]  # fmt: skip
        model = names[0] if names else model
    return f"cpu: {model}, {os.cpu_count()} cores"


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def auto_speed() -> DictConfig:
    """conf/trainer's speed settings (all `auto`), as a run without overrides resolves them."""
    return compose_config().trainer


def make_data(folder: Path, images: int, test_images: int = 14) -> DataBundle:
    """Synthetic faces stored as RAF-DB stores its aligned images: 100x100 JPEGs."""
    per_class = -(-images // 7)
    root = ensure_synthetic(folder, per_class, -(-test_images // 7), image_size=100, seed=0)
    dcfg = OmegaConf.merge(
        dataset_config("rafdb", root), {"name": "bench", "class_names": ["c"] * 7}
    )
    return load_dataset(dcfg, folder)


def pipeline(
    kind: str, data: DataBundle, size: int, device, memory_format, workers, cache
) -> Pipeline:
    return Pipeline(kind, data, size, MEAN, STD, RECIPE_AUG, device, memory_format, workers, cache)


def pipeline_rate(pipe: Pipeline, data: DataBundle, batch: int, max_batches: int) -> float:
    """Images/s over up to `max_batches` training batches after the first (start-up excluded)."""
    it = iter(pipe.batches(data.train, True, batch, seed=0))
    next(it)
    sync(pipe.device)
    n, start = 0, time.perf_counter()
    for k, (x, _) in enumerate(it):
        n += len(x)
        if k + 1 >= max_batches:
            break
    sync(pipe.device)
    del it
    return n / (time.perf_counter() - start)


def train_rate(
    pipe: Pipeline,
    data: DataBundle,
    args: argparse.Namespace,
    device: torch.device,
    method: str = "scn",
) -> tuple[float, dict[str, Any]]:
    """Images/s of full training steps of `method` (SCN by default; scn_ran with the released
    crops) fed by `pipe` over one epoch: `args.warmup` steps (worker start-up, compilation,
    CUDA-graph capture), then `args.train_batches` timed full batches."""
    torch.manual_seed(0)
    cfg = compose_config([f"method={method}", *backbone_overrides(args.backbone)])
    steps = build_method(cfg)
    model = steps.build_model(create_backbone(cfg.backbone), 7)
    accel = resolve_accel(cfg.trainer, device, args.batch)
    model.to(device, memory_format=accel.memory_format).train()
    forward = accel.compiled(model)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3, weight_decay=1e-4)
    scaler = accel.grad_scaler()
    labels = torch.as_tensor(data.train.labels, device=device)
    full = (b for b in pipe.batches(data.train, True, args.batch) if len(b[1]) == args.batch)
    start, timed = 0.0, 0
    for k, (x, idx) in enumerate(full):
        if k == args.warmup:
            sync(device)
            start = time.perf_counter()
        ctx = StepContext(SINGLE, len(x), 1, step_seed(0, k), device)
        train_step(forward, optimizer, accel, scaler, steps, x, labels[idx.to(device)], ctx)
        if k >= args.warmup:
            timed += 1
            if timed == args.train_batches:
                sync(device)
                settings = {"precision": accel.precision, "channels_last": accel.channels_last,
                            "compile": accel.compile, "cuda_graphs": accel.cuda_graphs}  # fmt: skip
                return timed * args.batch / (time.perf_counter() - start), settings
    raise RuntimeError(f"{len(data.train)} images hold fewer than warmup + timed batches")


def run(args: argparse.Namespace) -> dict[str, Any]:
    device = resolve_device(args.device)
    cores = os.cpu_count() or 1
    workers = args.workers if args.workers is not None else cores
    train_workers = args.train_workers if args.train_workers is not None else min(4, cores)
    accel = resolve_accel(auto_speed(), device, args.batch)
    mf = accel.memory_format
    result: dict[str, Any] = {
        "device": device_name(device),
        "torch": torch.__version__,
        "images": None,
        "batch_size": args.batch,
        "pipeline": {},
    }
    with tempfile.TemporaryDirectory(prefix="scn-bench-", dir=args.workdir) as tmp:
        folder = Path(tmp)
        t0 = time.perf_counter()
        # training is timed within one epoch (no second worker start-up inside the timing)
        need = (args.warmup + args.train_batches + 1) * args.batch
        data = make_data(folder, max(args.images, need))
        log.info("generated %d 100x100 JPEGs in %.1fs", len(data.train), time.perf_counter() - t0)
        result["images"] = len(data.train)
        cache = folder / "cache"
        t0 = time.perf_counter()
        pipeline("cached", data, 48, device, mf, 0, cache).store("train")
        result["cache_build_s"] = round(time.perf_counter() - t0, 2)
        for size in args.sizes:
            per_sample = pipeline_rate(
                pipeline("files", data, size, device, mf, workers, cache), data, args.batch,
                args.batches,
            )  # fmt: skip
            cached = pipeline_rate(
                pipeline("cached", data, size, device, mf, 0, cache), data, args.batch, args.batches
            )
            result["pipeline"][str(size)] = {
                "per_sample": round(per_sample, 1),
                "cached": round(cached, 1),
                "pipeline_ratio": round(cached / per_sample, 2),
            }
            log.info("pipeline %d px: per-sample %.0f img/s, cached %.0f img/s (%.2fx)",
                     size, per_sample, cached, cached / per_sample)  # fmt: skip
        result["pipeline_workers"] = workers
        if args.train_batches > 0:
            size = args.train_size
            files = pipeline("files", data, size, device, mf, train_workers, cache)
            per_sample, settings = train_rate(files, data, args, device)
            cached, _ = train_rate(pipeline("cached", data, size, device, mf, 0, cache), data, args,
                                   device)  # fmt: skip
            result["train"] = {
                "per_sample": round(per_sample, 1),
                "cached": round(cached, 1),
                "train_ratio": round(cached / per_sample, 2),
                "epoch_s_per_sample": round(RAFDB_TRAIN_IMAGES / per_sample, 2),
                "epoch_s_cached": round(RAFDB_TRAIN_IMAGES / cached, 2),
                "model": f"{args.backbone} SCN, {size} px, batch {args.batch}",
                "per_sample_workers": train_workers,
                "timed_batches": args.train_batches,
                **settings,
            }
            # the other methods on the cached pipeline, each step's cost relative to SCN's; SCN+RAN:
            # the whole face and the 7 released crops batched through one backbone call
            for other in ("scn_ran", "eac", "rul"):
                rate, _ = train_rate(pipeline("cached", data, size, device, mf, 0, cache), data,
                                     args, device, method=other)  # fmt: skip
                result["train"][f"{other}_cached"] = round(rate, 1)
                result["train"][f"{other}_step_cost"] = round(cached / rate, 2)  # x SCN's step
                log.info("%s %.1f img/s, SCN %.1f img/s: a step costs %.2fx SCN's",
                         other, rate, cached, cached / rate)  # fmt: skip
    return result


def backbone_spec(text: str) -> tuple[str, int]:
    """`NAME:SIZE` of --backbones, e.g. inception_resnet_v1:160."""
    name, _, size = text.rpartition(":")
    if not name or not size.isdigit():
        raise argparse.ArgumentTypeError(f"{text!r}: expected NAME:SIZE, e.g. resnet18:224")
    return name, int(size)


def backbone_rates(args: argparse.Namespace) -> dict[str, Any]:
    """SCN training-step images/s of each --backbones NAME:SIZE on the cached pipeline, same batch
    and timing as the default measurement's training figures."""
    device = resolve_device(args.device)
    mf = resolve_accel(auto_speed(), device, args.batch).memory_format
    result: dict[str, Any] = {"device": device_name(device), "torch": torch.__version__,
                              "batch_size": args.batch, "backbones": {}}  # fmt: skip
    with tempfile.TemporaryDirectory(prefix="scn-bench-", dir=args.workdir) as tmp:
        folder = Path(tmp)
        data = make_data(folder, (args.warmup + args.train_batches + 1) * args.batch)
        cache = folder / "cache"
        pipeline("cached", data, 48, device, mf, 0, cache).store("train")
        for name, size in args.backbones:
            one = argparse.Namespace(**{**vars(args), "backbone": name})
            rate, settings = train_rate(pipeline("cached", data, size, device, mf, 0, cache), data,
                                        one, device)  # fmt: skip
            result["backbones"][f"{name}:{size}"] = {
                "images_per_s": round(rate, 1), "timed_batches": args.train_batches, **settings
            }  # fmt: skip
            log.info("%s at %d px: %.1f img/s (SCN training step, batch %d)", name, size, rate,
                     args.batch)  # fmt: skip
    return result


def backbones_table(result: dict[str, Any]) -> str:
    lines = [f"device: {result['device']} (torch {result['torch']})",
             f"SCN train step, batch {result['batch_size']}, cached pipeline",
             f"{'backbone:size':<28}{'img/s':>10}"]  # fmt: skip
    lines += [f"{k:<28}{r['images_per_s']:>10.1f}" for k, r in result["backbones"].items()]
    return "\n".join(lines)


# ----------------------------------------------------------------------------- whole runs
def backbone_overrides(name: str) -> list[str]:
    """A backbone option of conf/backbone/ when there is one, else any timm model by name."""
    if (CONF_BACKBONES / f"{name}.yaml").is_file():
        return [f"backbone={name}"]
    return ["backbone=timm", f"backbone.name={name}"]


def e2e_run(args: argparse.Namespace, folder: Path, root: Path, name: str) -> dict[str, Any]:
    """One `python run.py` training run in a fresh process: wall clock and its time/* split."""
    out = folder / name
    overrides = ["dataset=rafdb", f"dataset.root={root}", *backbone_overrides(args.backbone),
                 f"dataset.image_size={args.train_size}", f"trainer.epochs={args.e2e_epochs}",
                 f"trainer.batch_size={args.batch}", f"trainer.device={args.device}",
                 "trainer.progress=false", "logger=none", f"hydra.run.dir={out}"]  # fmt: skip
    # one cache folder for both runs: decoded images and compiled code
    env = {**os.environ, "SCN_CACHE_DIR": str(folder / "cache")}
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, str(RUN_PY), *overrides], cwd=folder, env=env,
                          capture_output=True, text=True)  # fmt: skip
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        raise RuntimeError(
            f"the {name} run failed (exit {proc.returncode}):\n{proc.stderr[-3000:]}"
        )
    summary = json.loads((out / "summary.json").read_text())
    rows = read_metrics(out / "metrics.jsonl")
    r: dict[str, Any] = {"wall_s": round(wall, 2)}
    r.update({k.removeprefix("time/"): v for k, v in summary.items() if k.startswith("time/")})
    r["per_epoch_s"] = [row["time/epoch_s"] for row in rows]
    busy = r["train_s"] + r["eval_s"]
    # how far an epoch's time is above its training and evaluation: the loop's own overhead
    r["epoch_over_train_eval"] = round(r["epoch_s"] / busy, 3) if busy else None
    r["test_acc"] = summary["test/acc"]
    log.info("%s run: %.1fs wall clock, start-up %.1fs, epochs %s s", name, wall,
             r["startup_s"], ", ".join(f"{s:.1f}" for s in r["per_epoch_s"]))  # fmt: skip
    return r


def e2e(args: argparse.Namespace) -> dict[str, Any]:
    """The whole-run measurement: the same short training run cold, then warm."""
    if not RUN_PY.is_file():
        raise UserError(f"--e2e runs {RUN_PY}, which is missing: run it from a source checkout "
                        "(pip install -e .)")  # fmt: skip
    device = resolve_device(args.device)
    result: dict[str, Any] = {"device": device_name(device), "torch": torch.__version__}
    with tempfile.TemporaryDirectory(prefix="scn-bench-", dir=args.workdir) as tmp:
        folder = Path(tmp)
        t0 = time.perf_counter()
        test_images = max(14, round(args.images * RAFDB_TEST_IMAGES / RAFDB_TRAIN_IMAGES))
        data = make_data(folder, args.images, test_images)
        log.info("generated %d + %d 100x100 JPEGs in %.1fs", len(data.train), len(data.test),
                 time.perf_counter() - t0)  # fmt: skip
        result["e2e"] = {
            "images": len(data.train),
            "test_images": len(data.test),
            "epochs": args.e2e_epochs,
            "model": f"{args.backbone} SCN, {args.train_size} px, batch {args.batch}",
            "cold": e2e_run(args, folder, data.root, "cold"),
            "warm": e2e_run(args, folder, data.root, "warm"),
        }
    return result


def e2e_table(result: dict[str, Any]) -> str:
    e = result["e2e"]
    keys = ("wall_s", "startup_s", "startup_data_s", "startup_model_s", "startup_compile_s",
            "train_s", "eval_s", "checkpoint_s", "checkpoint_write_s", "epoch_s")  # fmt: skip
    lines = [f"device: {result['device']} (torch {result['torch']})",
             f"whole run: {e['images']} train / {e['test_images']} test images, {e['model']}, "
             f"{e['epochs']} epochs", f"{'seconds':<22}{'cold':>10}{'warm':>10}"]  # fmt: skip
    lines += [f"{k:<22}{e['cold'][k]:>10.2f}{e['warm'][k]:>10.2f}" for k in keys]
    return "\n".join(lines)


def table(result: dict[str, Any]) -> str:
    if "backbones" in result:
        return backbones_table(result)
    if "e2e" in result:
        return e2e_table(result)
    if "faces" in result:
        from scn.facebench import faces_table

        return faces_table(result)
    lines = [f"device: {result['device']} (torch {result['torch']})",
             f"{'what':<28}{'per-sample':>12}{'cached':>12}{'ratio':>8}"]  # fmt: skip
    for size, r in result["pipeline"].items():
        lines.append(f"{'pipeline ' + size + ' px (img/s)':<28}{r['per_sample']:>12.0f}"
                     f"{r['cached']:>12.0f}{r['pipeline_ratio']:>7.2f}x")  # fmt: skip
    if "train" in result:
        t = result["train"]
        lines.append(f"{'train step (img/s)':<28}{t['per_sample']:>12.1f}{t['cached']:>12.1f}"
                     f"{t['train_ratio']:>7.2f}x")  # fmt: skip
        lines.append(f"{'12,271-image epoch (s)':<28}{t['epoch_s_per_sample']:>12.1f}"
                     f"{t['epoch_s_cached']:>12.1f}")  # fmt: skip
        for key, name in (("scn_ran", "SCN+RAN"), ("eac", "EAC"), ("rul", "RUL")):
            lines.append(f"{name + ' train step (img/s)':<28}{'':>12}{t[f'{key}_cached']:>12.1f}"
                         f"{t[f'{key}_step_cost']:>7.2f}x SCN's step cost")  # fmt: skip
    return "\n".join(lines)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = tool_parser("bench", __doc__)
    p.add_argument("--out", default="bench.json", help="JSON results file (default: bench.json)")
    p.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N")
    p.add_argument(
        "--images",
        type=int,
        default=None,
        help="generated 100x100 train images (default 2048; --e2e: 12,271 on CUDA, 1,024 on CPU)",
    )
    p.add_argument("--sizes", type=int, nargs="+", default=[224, 112, 48], help="output sides")
    p.add_argument("--batch", type=int, default=64, help="batch size (default 64, as the recipe)")
    p.add_argument("--batches", type=int, default=30, help="pipeline batches timed per size")
    p.add_argument(
        "--workers",
        type=int,
        default=None,
        help="per-sample DataLoader workers for the pipeline figures (default: cores)",
    )
    p.add_argument(
        "--train-workers",
        type=int,
        default=None,
        help="per-sample workers feeding training (default: min(4, cores))",
    )
    p.add_argument(
        "--train-size",
        type=int,
        default=None,
        help="training input side (default 224; --e2e on CPU: 48)",
    )
    p.add_argument(
        "--train-batches",
        type=int,
        default=None,
        help="training steps timed per pipeline (default: 5 on CPU, 100 on CUDA; 0 skips)",
    )
    p.add_argument(
        "--warmup",
        type=int,
        default=None,
        help="training steps before timing (default: 1 on CPU, 20 on CUDA for compile)",
    )
    p.add_argument(
        "--backbone",
        default=None,
        help="timm model name (default resnet18; --e2e on CPU: resnet10t)",
    )
    p.add_argument(
        "--e2e",
        action="store_true",
        help="only the whole-run measurement: python run.py cold, then warm",
    )
    p.add_argument("--e2e-epochs", type=int, default=3, help="epochs of each --e2e run")
    p.add_argument(
        "--faces",
        metavar="DIR",
        default=None,
        help="only the raw-photo measurement on the photos of DIR ('demo': generated ones)",
    )
    p.add_argument(
        "--faces-model", default=None, help="--faces: classify with this checkpoint or export"
    )
    p.add_argument(
        "--backbones",
        nargs="+",
        type=backbone_spec,
        default=None,
        metavar="NAME:SIZE",
        help="only the SCN train step rate of each backbone at its input side, same batch",
    )
    p.add_argument(
        "--workdir", default=None, help="where the temp data goes (default: system temp)"
    )
    args = p.parse_args(argv)
    cuda = resolve_device(args.device).type == "cuda"
    small = args.e2e and not cuda  # a whole run within minutes on a few CPU cores
    if args.images is None:
        args.images = (RAFDB_TRAIN_IMAGES if cuda else 1024) if args.e2e else 2048
    if args.backbone is None:
        args.backbone = "resnet10t" if small else "resnet18"
    if args.train_size is None:
        args.train_size = 48 if small else 224
    if args.e2e_epochs < 1:
        p.error("--e2e-epochs must be at least 1")
    if args.train_batches is None:
        args.train_batches = 100 if cuda else 5
    if args.warmup is None:
        args.warmup = 20 if cuda else 1
    return args


def bench(args: argparse.Namespace) -> dict[str, Any]:
    if args.faces:
        from scn.facebench import faces_bench

        device = resolve_device(args.device)
        result = {"device": device_name(device), "torch": torch.__version__,
                  "faces": faces_bench(args.faces, device, args.backbone, args.faces_model,
                                       args.workdir, args.batch)}  # fmt: skip
    elif args.backbones:
        result = backbone_rates(args)
    else:
        result = e2e(args) if args.e2e else run(args)
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    log.info("\n%s\nresults written to %s", table(result), Path(args.out).resolve())
    return result


def main(argv: list[str] | None = None) -> int:
    return run_cli(bench, parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
