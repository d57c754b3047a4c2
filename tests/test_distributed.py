"""torchrun: global batches split across processes, the same augmentation, RR, relabels, metrics
and gradients as one process; one set of run files; resume across process counts. Multi-process
runs use the Gloo backend on CPU."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from scn.data.augment import BatchTrain
from scn.errors import UserError
from scn.models.backbones import Preprocessing
from scn.runtime.distributed import Dist, check_batch
from tests.conftest import ROOT, TINY, finished_run, tiny_args

MEAN, STD = (0.5, 0.5, 0.5), (0.25, 0.25, 0.25)


# ---------------------------------------------------------------- unit


def test_shards_cover_a_batch_in_order_and_differ_by_at_most_one():
    for world in (1, 2, 3, 4):
        for n in (world, 7, 16, 17):
            parts = [Dist(r, world).shard(n) for r in range(world)]
            assert parts[0][0] == 0 and parts[-1][1] == n
            assert all(a[1] == b[0] for a, b in zip(parts, parts[1:], strict=False))
            sizes = [e - s for s, e in parts]
            assert sizes == Dist(0, world).sizes(n)
            assert max(sizes) - min(sizes) <= 1
    assert Dist(1, 2).shard(5) == (3, 5)  # 5 = 3 + 2: rank 0 takes the extra sample


def test_global_batch_must_divide_by_the_process_count():
    assert check_batch(64, Dist(0, 4)) == 16
    with pytest.raises(UserError, match="batch_size=30 .* 4 processes"):
        check_batch(30, Dist(0, 4))


@pytest.mark.parametrize("masked", [False, True])
def test_each_share_of_a_batch_is_augmented_as_in_the_whole_batch(masked):
    """Flip/noise and erasing draw the whole batch's random numbers: the shares of 3 processes
    put together are exactly the one-process batch (CPU path and the accelerator's masked path)."""
    tf = BatchTrain(16, MEAN, STD, flip_or_noise_p=0.9, erasing_p=0.9,
                    memory_format=torch.contiguous_format)  # fmt: skip
    x = torch.randint(0, 256, (11, 3, 20, 20), dtype=torch.uint8)

    def augment(batch, part):
        g = torch.Generator().manual_seed(5)
        if masked:
            y = tf.flip_or_noise(batch.clone(), g, masked=True, part=part)
            out = tf.normalize(tf.resize(y))
            boxes = tf.erase_boxes(part[1], 16, 16, out.device, g)
            return boxes.slice(part[0], part[0] + len(batch)).apply(out)
        return tf(batch.clone(), g, part)

    whole = augment(x, (0, 11))
    shares = [Dist(r, 3).shard(11) for r in range(3)]
    parts = torch.cat([augment(x[s:e], (s, 11)) for s, e in shares])
    assert torch.equal(parts, whole)
    assert not torch.equal(whole, tf.normalize(tf.resize(x)))  # augmentation did something


@pytest.mark.parametrize("kind", ["cached", "files"])
def test_each_process_gets_its_share_of_every_global_batch(tiny_cfg, kind):
    """Training: consecutive shares of each global batch (the cached pipeline's images exactly the
    one-process batch's); evaluation: each process a contiguous part of the split."""
    from scn.data.datasets import load_dataset
    from scn.data.pipeline import build_pipeline

    cfg = tiny_cfg(f"dataset.pipeline={kind}")
    data = load_dataset(cfg.dataset, os.environ["SCN_CACHE_DIR"])
    dev = torch.device("cpu")

    def batches(d, train=True):
        pipe = build_pipeline(cfg.dataset, data, Preprocessing(32, MEAN, STD), dev,
                              cache_dir=Path(os.environ["SCN_CACHE_DIR"]), dist=d)  # fmt: skip
        b = pipe.batches(data.train if train else data.test, train, 16, seed=3)
        return b.global_sizes, [(x, i) for x, i in b]

    sizes, one = batches(Dist())
    assert sizes == [16, 16, 10]  # 42 train images
    ranks = [batches(Dist(r, 2))[1] for r in range(2)]
    for k, (x, idx) in enumerate(one):
        assert [len(ranks[r][k][1]) for r in range(2)] == [sizes[k] // 2] * 2
        assert torch.equal(torch.cat([ranks[r][k][1] for r in range(2)]), idx)
        if kind == "cached":
            assert torch.equal(torch.cat([ranks[r][k][0] for r in range(2)]), x)
    evals = [torch.cat([i for _, i in batches(Dist(r, 2), train=False)[1]]) for r in range(2)]
    assert torch.equal(torch.cat(evals), torch.arange(len(data.test)))


# ---------------------------------------------------------------- torchrun (Gloo, CPU)


def torchrun(args: list[str], cwd, cache_dir, nproc: int = 2) -> subprocess.CompletedProcess:
    env = {**os.environ, "SCN_CACHE_DIR": str(cache_dir), "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone",
           f"--nproc_per_node={nproc}", *args]  # fmt: skip
    return subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=600)


EQUIV = tiny_args(
    "backbone=timm",
    "backbone.name=convnext_atto",  # LayerNorm: no per-process BatchNorm statistics
    "scn.relabel_epoch=1",
    "scn.margin_2=0.05",  # relabels happen from the first epoch
    "scn.margin_1=1.0",  # RR > 0 on every step: the gathered alphas' ranks reach the gradient
    "dataset.noise.rate=0.3",
    "dataset.sampler=balanced",  # draws with replacement: a batch holds some position twice
)


def test_two_processes_train_as_one_does(tmp_path, cache_dir):
    """Same seed and global batch, augmentation on: per step the same loss, RR (active: over the
    gathered alphas) and label tensor, the same relabels over two relabeling epochs (a position
    twice in a batch included: every process writes its last occurrence's label), and after
    DDP's all-reduce the first step's gradients of every parameter equal the one-process ones."""
    probe = str(ROOT / "tests" / "ddp_probe.py")
    env = {**os.environ, "SCN_CACHE_DIR": str(cache_dir), "OMP_NUM_THREADS": "1"}
    one = subprocess.run([sys.executable, probe, str(tmp_path / "one"), *EQUIV], env=env,
                         capture_output=True, text=True, timeout=600)  # fmt: skip
    assert one.returncode == 0, one.stderr[-3000:]
    two = torchrun([probe, str(tmp_path / "two"), *EQUIV], tmp_path, cache_dir)
    assert two.returncode == 0, two.stderr[-3000:]
    a = torch.load(tmp_path / "one" / "rank0.pt")
    b0, b1 = (torch.load(tmp_path / "two" / f"rank{r}.pt") for r in range(2))

    assert len(a["loss"]) == len(b0["loss"]) == 6  # 3 global batches x 2 epochs
    assert sum(a["relabeled"]) > 0 and a["relabeled"] == b0["relabeled"]
    torch.testing.assert_close(b0["loss"], a["loss"], rtol=1e-4, atol=1e-5)
    assert all(rr > 0 for rr in a["rr"])  # margin_1 = 1: the hinge is active on every step
    torch.testing.assert_close(b0["rr"], a["rr"], rtol=1e-4, atol=1e-5)
    assert b1["rr"] == b0["rr"]  # the global batch's RR on every process
    # the relabel rows of each global batch (position, old, new, kept): the same everywhere,
    # and the balanced sampler's repeats are there (a position not kept at an earlier occurrence)
    assert len(a["changes"]) == 6 and any(not c[3].all() for c in a["changes"])
    for ca, c0, c1 in zip(a["changes"], b0["changes"], b1["changes"], strict=True):
        assert torch.equal(ca, c0) and torch.equal(c0, c1)
    for la, lb0, lb1 in zip(a["labels"], b0["labels"], b1["labels"], strict=True):
        assert torch.equal(la, lb0) and torch.equal(lb0, lb1)  # one label tensor everywhere
    assert torch.equal(a["final_labels"], b0["final_labels"])
    assert not torch.equal(a["labels"][0], a["final_labels"])  # relabeling changed labels
    assert a["test_acc"] == b0["test_acc"]  # sharded evaluation, summed confusion
    for k, g in a["grads"].items():
        torch.testing.assert_close(b0["grads"][k], g, rtol=1e-3, atol=1e-6, msg=k)
        torch.testing.assert_close(b1["grads"][k], b0["grads"][k], rtol=0, atol=0, msg=k)


def test_torchrun_run_writes_one_set_of_files_and_resumes_in_one_process(tmp_path, cache_dir):
    args = [*TINY, "trainer.epochs=1", "scn.relabel_epoch=1", "hydra.run.dir=out"]
    proc = torchrun([str(ROOT / "run.py"), *args], tmp_path, cache_dir)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = tmp_path / "out"
    names = {p.name for p in out.iterdir()}
    assert {"summary.json", "metrics.jsonl", "last.pt", "run.log", ".hydra"} <= names
    assert [p.name for p in tmp_path.iterdir()] == ["out"]  # no second run directory
    assert len((out / "metrics.jsonl").read_text().splitlines()) == 1
    assert (out / "run.log").read_text().count("epoch 1/1") == 1  # rank 0 logs, once

    resumed = subprocess.run(
        [sys.executable, str(ROOT / "run.py"), *TINY, "trainer.epochs=2", "ckpt_path=out",
         "hydra.run.dir=out2"],
        cwd=tmp_path, env={**os.environ, "SCN_CACHE_DIR": str(cache_dir)},
        capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    history = [json.loads(line) for line in (tmp_path / "out2" / "metrics.jsonl").open()]
    assert [r["epoch"] for r in history] == [1, 2]


def test_a_bad_dataset_path_fails_the_job_with_the_path(tmp_path, cache_dir):
    missing = tmp_path / "no-such-rafdb"
    args = ["dataset=rafdb", f"dataset.root={missing}", "logger=none", "hydra.run.dir=out"]
    proc = torchrun([str(ROOT / "run.py"), *args], tmp_path, cache_dir)
    assert proc.returncode != 0
    message = f"dataset root not found: {missing}"
    # the first rank to fail names the path; torchrun then stops the other (which may or may not
    # have printed the same message by then)
    assert proc.stderr.count(message) >= 1, proc.stderr[-3000:]
    assert f'File "{ROOT / "scn"}' not in proc.stderr  # a message, not our traceback


def test_sync_bn_is_refused_on_cpu():
    from scn.runtime.distributed import parallel

    with pytest.raises(UserError, match="sync_bn=true needs CUDA"):
        parallel(torch.nn.BatchNorm2d(3), Dist(), torch.device("cpu"), True)


@pytest.mark.gpu
@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs two CUDA devices")
def test_two_gpus_train_with_nccl_and_the_speed_settings(tmp_path, cache_dir):
    """NCCL, one GPU per process, auto speed settings (bf16, channels_last, compile)."""
    args = [*tiny_args("trainer.device=auto"), "scn.relabel_epoch=1", "hydra.run.dir=out"]
    proc = torchrun([str(ROOT / "run.py"), *args], tmp_path, cache_dir)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert finished_run(tmp_path / "out")["epochs"] == 2
