"""Benchmark: building the decoded-image cache for AffectNet-sized data, and its memory.

    python -m scn.cachebench --images 50000                 # 224 px cache, temp folder, table only
    python -m scn.cachebench --images 50000 --cache-size 112 --keep /data/cb --out cb.json

AffectNet's 287k train images must work on a machine with 32 GB of RAM: the cache is a
memory-mapped file, written and read in pieces, never loaded whole. This generates an AffectNet
csv-release tree (Manually_Annotated_file_lists/ + Manually_Annotated_Images/) of `--images` train
JPEGs of mixed sizes with face boxes, reads it with the affectnet reader, builds the train cache
with `scn.data.cache.decoded_images`, then streams the cache in shuffled batches the way training
gathers them. It reports wall time, images/s, the cache's size, and memory: peak RSS from
getrusage (self and the largest child), plus values sampled from /proc that separate anonymous
memory (what the processes really hold, as Pss so pages shared with forked workers count once)
from the resident pages of the memory-mapped cache (page cache the kernel reclaims under memory
pressure, but counted in RSS while mapped).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import multiprocessing as mp
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
from omegaconf import OmegaConf
from PIL import Image

from scn.cli import run_cli, tool_parser
from scn.data.datasets import dataset_config
from scn.data.readers import affectnet

log = logging.getLogger(__name__)

CHUNK = 500  # images per generation task
MARKER = ".cachebench.json"  # settings of a kept tree, so a rerun with --keep reuses it


# ---------------------------------------------------------------- generation


def _write_chunk(task: tuple[str, int, int, int, int, int]) -> list[tuple[int, str]]:
    """Write images start..stop-1 and return their file-list rows. Smooth random content (an 8x8
    colour field upsampled) compresses like photographs do, unlike pixel noise."""
    root, start, stop, min_side, max_side, seed = task
    image_dir = Path(root) / affectnet.CSV_IMAGE_DIR
    rng = np.random.default_rng([seed, start])
    rows = []
    for k in range(start, stop):
        w, h = (int(v) for v in rng.integers(min_side, max_side + 1, 2))
        x, y = int(rng.integers(0, w // 5 + 1)), int(rng.integers(0, h // 5 + 1))
        bw, bh = int(rng.integers(w // 2, w - x + 1)), int(rng.integers(h // 2, h - y + 1))
        name = f"{k % 1000 + 1}/{hashlib.sha224(f'{seed}/{k}'.encode()).hexdigest()}.jpg"
        field = rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)
        img = Image.fromarray(field).resize((w, h), Image.Resampling.BILINEAR)
        img.save(image_dir / name, format="JPEG", quality=90)
        landmarks = ";".join(f"{v:.2f}" for v in rng.uniform(x, x + bw, 136))
        expression = int(rng.integers(0, 8))
        affect = ",".join(f"{v:.6f}" for v in rng.uniform(-1, 1, 2))
        rows.append((k, f"{name},{x},{y},{bw},{bh},{landmarks},{expression},{affect}"))
    return rows


def generate(root: Path, images: int, test_images: int, args: argparse.Namespace) -> float:
    """An AffectNet csv-release tree: `images` train rows, `test_images` validation rows."""
    settings = {
        "images": images,
        "test_images": test_images,
        "min_side": args.min_side,
        "max_side": args.max_side,
        "seed": args.seed,
    }
    marker = root / MARKER
    if marker.is_file() and json.loads(marker.read_text()) == settings:
        log.info("reusing the generated tree in %s", root)
        return 0.0
    shutil.rmtree(root, ignore_errors=True)
    for sub in range(1, 1001):
        (root / affectnet.CSV_IMAGE_DIR / str(sub)).mkdir(parents=True, exist_ok=True)
    total = images + test_images
    tasks = [
        (str(root), a, min(a + CHUNK, total), args.min_side, args.max_side, args.seed)
        for a in range(0, total, CHUNK)
    ]
    t0 = time.perf_counter()
    rows: list[tuple[int, str]] = []
    workers = min(args.workers, len(tasks))
    if workers <= 1:
        for task in tasks:
            rows += _write_chunk(task)
    else:
        with mp.get_context("spawn").Pool(workers) as pool:
            for done, chunk in enumerate(pool.imap_unordered(_write_chunk, tasks), start=1):
                rows += chunk
                if done % 20 == 0:
                    log.info("generated %d / %d images", len(rows), total)
    rows.sort()
    lists = root / affectnet.CSV_LIST_DIR
    lists.mkdir(parents=True, exist_ok=True)
    header = ",".join(affectnet.CSV_COLUMNS)
    for fname, part in (("training.csv", rows[:images]), ("validation.csv", rows[images:])):
        with open(lists / fname, "w", newline="") as f:
            f.write(header + "\n")
            f.writelines(r + "\n" for _, r in part)
    marker.write_text(json.dumps(settings))
    return time.perf_counter() - t0


# ---------------------------------------------------------------- memory


def _status(pid: int | str) -> dict[str, int]:
    """VmRSS / RssAnon / RssFile / RssShmem of a process in KiB (empty when /proc lacks them)."""
    out: dict[str, int] = {}
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                key, _, value = line.partition(":")
                if key in ("VmRSS", "RssAnon", "RssFile", "RssShmem"):
                    out[key] = int(value.split()[0])
    except OSError:
        pass
    return out


def _pss_anon(pid: int | str, fallback: int) -> int:
    """Proportional anonymous KiB: forked decode workers share the parent's pages copy-on-write,
    and summing their RssAnon would count those pages once per worker; Pss splits them."""
    try:
        with open(f"/proc/{pid}/smaps_rollup") as f:
            for line in f:
                if line.startswith("Pss_Anon:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return fallback


def _children(pid: int) -> list[int]:
    """Direct child processes (the cache build's decode workers)."""
    kids = []
    for entry in os.listdir("/proc") if os.path.isdir("/proc") else []:
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                stat = f.read()
        except OSError:
            continue
        # the command name may hold spaces and parentheses: fields follow the last ')'
        if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
            kids.append(int(entry))
    return kids


def _mapped_kib(prefix: str) -> int:
    """Resident KiB of this process's mappings of files under `prefix` (the memory-mapped cache:
    page cache the kernel can reclaim, yet counted in RSS while mapped)."""
    try:
        with open("/proc/self/smaps") as f:
            text = f.read()
    except OSError:
        return 0
    total, at = 0, text.find(prefix)
    while at >= 0:
        rss = text.find("\nRss:", at)
        if rss < 0:
            break
        total += int(text[rss + 5 : text.index("kB", rss)])
        at = text.find(prefix, rss)
    return total


class MemorySampler:
    """Samples this process and its children from /proc every `interval` s (reading smaps costs the
    kernel ~40 ms a process, so not more often): the values at the start and the peaks. `anon` is
    memory a process really holds; `cache_mapped` is the resident part of the memory-mapped cache
    files under `cache_dir`."""

    KEYS = ("self_rss", "self_anon", "cache_mapped", "children_rss", "children_anon", "total_anon")
    # total_anon: proportional (Pss) anonymous memory of self + children, shared pages counted once

    def __init__(self, cache_dir: str, interval: float = 2.0):
        self.prefix = str(Path(cache_dir).resolve())
        self.interval = interval
        self.start_kib: dict[str, int] = {}
        self.peaks_kib = dict.fromkeys(self.KEYS, 0)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self.available = bool(_status("self"))

    def sample(self) -> None:
        me = _status("self")
        pids = _children(os.getpid())
        kids = [_status(pid) for pid in pids]
        now = {
            "self_rss": me.get("VmRSS", 0),
            "self_anon": me.get("RssAnon", 0),
            "cache_mapped": _mapped_kib(self.prefix),
            "children_rss": sum(k.get("VmRSS", 0) for k in kids),
            "children_anon": sum(k.get("RssAnon", 0) for k in kids),
        }
        now["total_anon"] = _pss_anon("self", now["self_anon"]) + sum(
            _pss_anon(pid, k.get("RssAnon", 0)) for pid, k in zip(pids, kids, strict=True)
        )
        self.start_kib = self.start_kib or now
        for key, value in now.items():
            self.peaks_kib[key] = max(self.peaks_kib[key], value)

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self.sample()

    def __enter__(self) -> MemorySampler:
        self.sample()
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.sample()

    def report_mib(self) -> dict[str, dict[str, float]] | None:
        if not self.available:
            return None
        return {
            "start": {k: round(v / 1024, 1) for k, v in self.start_kib.items()},
            "peak": {k: round(v / 1024, 1) for k, v in self.peaks_kib.items()},
        }


def _maxrss_mib(who: int) -> float:
    """getrusage's ru_maxrss in MiB (KiB on Linux, bytes on macOS)."""
    value = resource.getrusage(who).ru_maxrss
    return round(value / (1024 * 1024 if sys.platform == "darwin" else 1024), 1)


# ---------------------------------------------------------------- measurement


def measure(root: str, cache_dir: str, cache_size: int | None, batch: int, progress: bool) -> dict:
    """Read, build the train cache and stream it; runs in a fresh process so its RSS is its own."""
    from scn.data.cache import decoded_images  # torch: imported here, in the measuring process

    # importing torch may run a helper subprocess, forked while this process was large: its
    # ru_maxrss is in RUSAGE_CHILDREN before any decode worker starts
    result: dict[str, Any] = {
        "maxrss_children_before_build_mib": _maxrss_mib(resource.RUSAGE_CHILDREN)
    }
    dcfg = OmegaConf.merge(dataset_config("affectnet", root), {"release": "csv"})
    t0 = time.perf_counter()
    files = affectnet.read(dcfg, Path(root))
    result["read_s"] = round(time.perf_counter() - t0, 2)
    images = files.splits["train"].images
    with MemorySampler(cache_dir) as mem:
        t0 = time.perf_counter()
        cpu0 = os.times()
        arr = decoded_images(Path(cache_dir), "train", images, cache_size, progress)
        wall = time.perf_counter() - t0
        cpu1 = os.times()
    path = Path(arr.filename)  # np.load(mmap_mode="r") returns a memmap
    result["build"] = {
        "images": len(images),
        "wall_s": round(wall, 1),
        "images_per_s": round(len(images) / wall, 1),
        "cpu_s_self": round(cpu1.user + cpu1.system - cpu0.user - cpu0.system, 1),
        "cpu_s_children": round(
            cpu1.children_user + cpu1.children_system - cpu0.children_user - cpu0.children_system,
            1,
        ),
        "maxrss_self_mib": _maxrss_mib(resource.RUSAGE_SELF),
        "maxrss_largest_child_mib": _maxrss_mib(resource.RUSAGE_CHILDREN),
        "sampled_mib": mem.report_mib(),
        "cache_shape": list(arr.shape),
        "cache_file_bytes": path.stat().st_size,
        "cache_file_gib": round(path.stat().st_size / 2**30, 2),
    }
    del arr
    # stream as training does: a shuffled pass, each batch a copy gathered from the memory map
    arr = np.load(path, mmap_mode="r")
    order = np.random.default_rng(0).permutation(len(arr))
    with MemorySampler(cache_dir) as mem:
        t0 = time.perf_counter()
        checksum = 0
        anon_peak = 0
        for a in range(0, len(order), batch):
            x = arr[order[a : a + batch]]
            checksum += int(x[:, ::32, ::32].sum())
            anon_peak = max(anon_peak, _status("self").get("RssAnon", 0))
            del x
        wall = time.perf_counter() - t0
    result["stream"] = {
        "batch": batch,
        "batches": -(-len(order) // batch),
        "wall_s": round(wall, 1),
        "images_per_s": round(len(order) / wall, 1),
        "gib_per_s": round(arr.nbytes / 2**30 / wall, 2),
        "batch_mib": round(batch * arr[0].nbytes / 2**20, 1),
        "peak_anon_per_batch_mib": round(anon_peak / 1024, 1),
        "sampled_mib": mem.report_mib(),
        "checksum": checksum,
    }
    return result


def run(args: argparse.Namespace) -> dict[str, Any]:
    """Generate (or reuse) the tree, then measure in a fresh process (or this one)."""
    keep = Path(args.keep).expanduser() if args.keep else None
    tmp = None if keep else tempfile.TemporaryDirectory(prefix="scn-cachebench-", dir=args.workdir)
    work = keep or Path(tmp.name)  # type: ignore[union-attr]
    try:
        root, cache_dir = work / "affectnet", work / "cache"
        test_images = max(8, args.images // 100)
        load_before = os.getloadavg()
        gen_s = generate(root, args.images, test_images, args)
        jpeg_bytes = sum(p.stat().st_size for p in (root / affectnet.CSV_IMAGE_DIR).rglob("*.jpg"))
        shutil.rmtree(cache_dir, ignore_errors=True)  # always time a fresh build
        margs = (str(root), str(cache_dir), args.cache_size, args.batch, args.progress)
        measured = measure(*margs) if args.in_process else _in_fresh_process(margs)
        result = {
            "machine": {
                "cpus": os.cpu_count(),
                "loadavg_before": [round(v, 2) for v in load_before],
                "loadavg_after": [round(v, 2) for v in os.getloadavg()],
                "ram_gib": _ram_gib(),
            },
            "settings": {
                "images": args.images,
                "test_images": test_images,
                "cache_size": args.cache_size,
                "sides": [args.min_side, args.max_side],
                "measured_in": "this process" if args.in_process else "a new interpreter",
            },
            "generate": {
                "wall_s": round(gen_s, 1),
                "workers": args.workers,
                "jpeg_mib": round(jpeg_bytes / 2**20, 1),
            },
            **measured,
        }
    finally:
        if tmp is not None:
            tmp.cleanup()
    return result


def _in_fresh_process(margs: tuple) -> dict[str, Any]:
    """`measure` in a new interpreter (`--measure`): its getrusage figures cover only the
    measurement, and its decode workers start the way they do under `python run.py`."""
    root, cache_dir, cache_size, batch, progress = margs
    out = Path(cache_dir).parent / "measure.json"
    cmd = [sys.executable, "-m", "scn.cachebench", "--measure", root, cache_dir, str(out)]
    cmd += ["--cache-size", str(cache_size), "--batch", str(batch)]
    cmd += ["--progress"] if progress else []
    done = subprocess.run(cmd, check=False)
    if done.returncode != 0 or not out.is_file():
        raise RuntimeError(f"the measuring process failed (exit {done.returncode}): {cmd}")
    return json.loads(out.read_text())


def _ram_gib() -> float | None:
    try:
        return round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1)
    except (ValueError, OSError, AttributeError):
        return None


def table(r: dict[str, Any]) -> str:
    b, s, m = r["build"], r["stream"], r["machine"]
    lines = [
        f"AffectNet-layout cache build: {b['images']:,} train images "
        f"({r['settings']['sides'][0]}-{r['settings']['sides'][1]} px, face-box crops), "
        f"cache_size={r['settings']['cache_size']}, {m['cpus']} CPUs, {m['ram_gib']} GiB RAM, "
        f"load {m['loadavg_before'][0]} -> {m['loadavg_after'][0]}",
        f"{'generate JPEGs':<36}{r['generate']['wall_s']:>9.1f} s  "
        f"({r['generate']['jpeg_mib']:,.0f} MiB)",
        f"{'read file lists':<36}{r['read_s']:>9.2f} s",
        f"{'build cache':<36}{b['wall_s']:>9.1f} s  {b['images_per_s']:,.0f} images/s  "
        f"(cpu s: self {b['cpu_s_self']}, workers {b['cpu_s_children']})",
        f"{'cache file':<36}{b['cache_file_gib']:>9.2f} GiB  {tuple(b['cache_shape'])}",
        f"{'build maxrss: self / largest child':<36}{b['maxrss_self_mib']:>9,.0f} / "
        f"{b['maxrss_largest_child_mib']:,.0f} MiB  (getrusage; includes mapped cache pages; "
        f"child before build {r['maxrss_children_before_build_mib']:,.0f})",
    ]
    for phase, d in (("build", b), ("stream", s)):
        mem = d["sampled_mib"]
        if mem:
            st, pk = mem["start"], mem["peak"]
            lines.append(
                f"{phase + ' anon (Pss) start/peak':<36}{st['total_anon']:>9,.0f} / "
                f"{pk['total_anon']:,.0f} MiB  (resident cache pages peak "
                f"{pk['cache_mapped']:,.0f} MiB, reclaimable)"
            )
    lines.append(
        f"{'stream (shuffled, batch ' + str(s['batch']) + ')':<36}{s['wall_s']:>9.1f} s  "
        f"{s['images_per_s']:,.0f} images/s, {s['gib_per_s']} GiB/s, "
        f"{s['batch_mib']:,.0f} MiB a batch"
    )
    return "\n".join(lines)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = tool_parser("cachebench", __doc__)
    p.add_argument("--images", type=int, default=50000, help="train images to generate")
    p.add_argument("--cache-size", type=int, default=224, help="cached side (default 224)")
    p.add_argument("--keep", default=None, help="generate into DIR and keep it (reused next time)")
    p.add_argument("--out", default=None, help="also write the results as JSON to this file")
    p.add_argument("--workers", type=int, default=min(4, os.cpu_count() or 1),
                   help="processes writing JPEGs (default min(4, cores))")  # fmt: skip
    p.add_argument("--batch", type=int, default=256, help="streaming batch (default 256)")
    p.add_argument("--min-side", type=int, default=150, help="smallest generated side (px)")
    p.add_argument("--max-side", type=int, default=400, help="largest generated side (px)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--workdir", default=None, help="parent of the temp folder (default: system)")
    p.add_argument("--progress", action="store_true", help="show the cache build's progress bar")
    p.add_argument("--measure", nargs=3, metavar=("ROOT", "CACHE", "OUT"), help=argparse.SUPPRESS)
    p.add_argument(
        "--in-process",
        action="store_true",
        help="measure in this process (quicker; RSS then includes generation)",
    )
    return p.parse_args(argv)


def bench(args: argparse.Namespace) -> dict[str, Any]:
    if args.measure:  # the measuring process of a run (see _in_fresh_process)
        root, cache_dir, out = args.measure
        result = measure(root, cache_dir, args.cache_size, args.batch, args.progress)
        Path(out).write_text(json.dumps(result, indent=2) + "\n")
        return result
    result = run(args)
    if args.out:
        Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    log.info("\n%s%s", table(result), f"\nresults written to {args.out}" if args.out else "")
    return result


def main(argv: list[str] | None = None) -> int:
    return run_cli(bench, parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
