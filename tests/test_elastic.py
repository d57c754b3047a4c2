"""Runs that heal themselves: a torchrun worker group restarted after one process was killed, and a
run started again with trainer.auto_resume, resume in their own directory and end as an
uninterrupted run does; an output directory that cannot be made is one line and exit 2."""

from __future__ import annotations

import datetime
import logging
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from omegaconf import open_dict, read_write

from scn import runtime
from scn.app import resume_source, train
from scn.checkpoints import load_checkpoint
from scn.cli import _torchrun_attempt
from scn.errors import JobFailed
from scn.sweep import FailedJob, _recording_setup_failures
from tests.conftest import ROOT, compose_cfg, run_py, tiny_args, untimed_rows

# 3 epochs of 3 global batches (42 train images, batch 16); relabels in epochs 2 and 3, so a resume
# must restore the edited label tensor as well as the weights
ARGS = tiny_args("trainer.epochs=3", "trainer.checkpoints=last", "dataset.noise.rate=0.2",
                 "scn.relabel_epoch=2", "scn.margin_2=0.0")  # fmt: skip

# runs run.py (argv[1:]), and SIGKILLs this process after its KILL_AT-th training step when its
# RANK is KILL_RANK, in torchrun's first attempt only, once the last.pt of epoch 1 is on disk
KILL_AT_STEP = """
import os, runpy, signal, sys, time
import torch
from scn.engine.trainer import Trainer
torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "2")))
real_step, steps = Trainer.step, []
def step(self, *args, **kwargs):
    out = real_step(self, *args, **kwargs)
    steps.append(1)
    first = os.environ.get("TORCHELASTIC_RESTART_COUNT", "0") == "0"
    mine = os.environ.get("RANK", "0") == os.environ.get("KILL_RANK", "0")
    if first and mine and len(steps) == int(os.environ["KILL_AT"]):
        deadline = time.time() + 120
        while not (self.output_dir / "last.pt").is_file() and time.time() < deadline:
            time.sleep(0.05)
        os.kill(os.getpid(), signal.SIGKILL)
    return out
Trainer.step = step
sys.argv = sys.argv[1:]
runpy.run_path(sys.argv[0], run_name="__main__")
"""


def environ(cache_dir, **extra) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "HYDRA_FULL_ERROR"}
    env.update(SCN_CACHE_DIR=str(cache_dir), WANDB_MODE="disabled", WANDB_SILENT="true",
               OMP_NUM_THREADS="1")  # fmt: skip
    return {**env, **extra}


def torchrun(args, cwd, cache_dir, kill_at=None, **env) -> subprocess.CompletedProcess:
    """`torchrun --standalone --nproc_per_node=2 --max-restarts=1 run.py ARGS`, rank 1 killed
    with SIGKILL after its `kill_at`-th step (a script of the test wraps run.py)."""
    entry = [str(ROOT / "run.py")]
    if kill_at is not None:
        script = Path(cwd) / "kill_at_step.py"
        script.write_text(KILL_AT_STEP)
        entry = [str(script), *entry]
        env.update(KILL_AT=str(kill_at), KILL_RANK="1")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
           "--max-restarts=1", "--monitor-interval=0.1", *entry, *args]  # fmt: skip
    proc = subprocess.Popen(cmd, cwd=cwd, env=environ(cache_dir, **env), text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)  # fmt: skip
    try:
        out, err = proc.communicate(timeout=600)
    except subprocess.TimeoutExpired:  # SIGTERM: torchrun stops its workers (SIGKILL would not)
        proc.terminate()
        out, err = proc.communicate(timeout=120)
        pytest.fail(f"torchrun timed out:\n{err[-3000:]}")
    return subprocess.CompletedProcess(cmd, proc.returncode, out, err)


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory, cache_dir) -> list[dict]:
    """metrics.jsonl rows of the 2-process run that nothing interrupts."""
    cwd = tmp_path_factory.mktemp("uninterrupted")
    proc = torchrun([*ARGS, "hydra.run.dir=out"], cwd, cache_dir)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return untimed_rows(cwd / "out/metrics.jsonl")


def killed_rank(proc: subprocess.CompletedProcess) -> bool:
    """torchrun's report of a worker that died of SIGKILL."""
    return "exitcode: -9" in proc.stderr or "Signal 9 (SIGKILL)" in proc.stderr


# ------------------------------------------------------------------------- torchrun restarts
def test_a_restarted_torchrun_group_resumes_its_run_directory(tmp_path, cache_dir, uninterrupted):
    proc = torchrun([*ARGS, "hydra.run.dir=out"], tmp_path, cache_dir, kill_at=5)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert killed_rank(proc), proc.stderr[-3000:]  # rank 1 died in epoch 2, step 2 of 3
    out = tmp_path / "out"
    assert len(uninterrupted) == 3
    assert untimed_rows(out / "metrics.jsonl") == uninterrupted
    log = (out / "run.log").read_text()
    assert f"torchrun attempt 2 (TORCHELASTIC_RESTART_COUNT=1): resuming {out}/last.pt after " \
           "epoch 1" in log  # fmt: skip
    assert load_checkpoint(out / "last.pt")["epoch"] == 3


def test_a_restarted_group_finds_the_default_timestamped_directory(
    tmp_path, cache_dir, uninterrupted
):
    proc = torchrun(ARGS, tmp_path, cache_dir, kill_at=5)  # run dir: outputs/<date>/<time>
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert killed_rank(proc), proc.stderr[-3000:]
    runs = list((tmp_path / "outputs").glob("*/*"))
    assert len(runs) == 1, runs  # the restarted group wrote into the first group's directory
    assert untimed_rows(runs[0] / "metrics.jsonl") == uninterrupted
    assert (
        "torchrun attempt 2 (TORCHELASTIC_RESTART_COUNT=1): resuming"
        in (runs[0] / "run.log").read_text()
    )


def test_torchrun_attempts_share_the_first_start_time_through_the_agent_store(monkeypatch):
    """What rank 0 reads back: the first attempt's start and, from the second on, its number."""
    from torch.distributed import TCPStore

    server = TCPStore("127.0.0.1", 0, is_master=True, wait_for_workers=False)
    monkeypatch.setenv("TORCHELASTIC_USE_AGENT_STORE", "True")
    monkeypatch.setenv("MASTER_ADDR", "127.0.0.1")
    monkeypatch.setenv("MASTER_PORT", str(server.port))
    monkeypatch.setenv("TORCHELASTIC_RUN_ID", "job1")
    monkeypatch.setenv("TORCHELASTIC_RESTART_COUNT", "0")
    start, restart = _torchrun_attempt()
    assert restart is None and abs(datetime.datetime.now() - start).total_seconds() < 60
    # a membership change restarts a group without counting it: the store still knows
    again, restart = _torchrun_attempt()
    assert again == start and restart == "torchrun attempt 2 (TORCHELASTIC_RESTART_COUNT=0)"
    monkeypatch.setenv("TORCHELASTIC_RUN_ID", "job2")  # another job starts afresh
    assert _torchrun_attempt()[1] is None

    # without the agent's store, torchrun's count tells a restart (the start is this attempt's)
    monkeypatch.setenv("TORCHELASTIC_USE_AGENT_STORE", "False")
    monkeypatch.setenv("TORCHELASTIC_RESTART_COUNT", "1")
    assert _torchrun_attempt()[1] == "torchrun restart 1 (TORCHELASTIC_RESTART_COUNT=1)"


def test_a_restart_resumes_its_own_last_pt_or_starts_over_there(tmp_path, monkeypatch, caplog):
    caplog.set_level(logging.INFO)
    monkeypatch.delenv("SLURM_RESTART_COUNT", raising=False)
    cfg = compose_cfg(ARGS, tmp_path)
    assert resume_source(cfg, tmp_path) == (None, None)  # a first start
    monkeypatch.setattr(runtime, "_elastic_restart", "torchrun attempt 2 (...)")
    (tmp_path / ".last.pt.x1y2").write_bytes(b"half a checkpoint")
    assert resume_source(cfg, tmp_path) == (None, None)  # no last.pt yet: start over here
    assert f"torchrun attempt 2 (...): no last.pt in {tmp_path} yet, starting over" in caplog.text
    assert not list(tmp_path.glob(".last.pt.*"))  # the killed write's temp file is gone
    (tmp_path / "last.pt").write_bytes(b"")
    assert resume_source(cfg, tmp_path) == (tmp_path, "torchrun attempt 2 (...)")
    monkeypatch.setattr(runtime, "_elastic_restart", None)
    assert resume_source(cfg, tmp_path) == (None, None)  # a new start in an old directory
    monkeypatch.setenv("SLURM_RESTART_COUNT", "2")  # the same path for SLURM's requeue
    assert resume_source(cfg, tmp_path) == (tmp_path, "SLURM requeue 2 (SLURM_RESTART_COUNT=2)")


# ------------------------------------------------------------------------------ auto_resume
def test_auto_resume_continues_a_killed_run_started_again_with_the_same_command(
    tmp_path, cache_dir
):
    """Started again after a SIGKILL in epoch 2, the same command resumes and ends with the rows
    of an uninterrupted run."""
    args = [str(ROOT / "run.py"), *ARGS, "trainer.auto_resume=true", "hydra.run.dir=out"]
    env = environ(cache_dir, OMP_NUM_THREADS="2")
    script = tmp_path / "kill_at_step.py"
    script.write_text(KILL_AT_STEP)
    killed = subprocess.run([sys.executable, str(script), *args], cwd=tmp_path,
                            env={**env, "KILL_AT": "4"}, capture_output=True, text=True,
                            timeout=600)  # fmt: skip
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-3000:]
    out = tmp_path / "out"
    assert load_checkpoint(out / "last.pt")["epoch"] == 1
    again = subprocess.run([sys.executable, *args], cwd=tmp_path, env=env, capture_output=True,
                           text=True, timeout=600)  # fmt: skip
    assert again.returncode == 0, again.stderr[-3000:]
    log = (out / "run.log").read_text()
    assert f"trainer.auto_resume=true: resuming {out}/last.pt after epoch 1" in log

    train(compose_cfg(ARGS, tmp_path / "reference"))  # one process, uninterrupted
    rows = untimed_rows(out / "metrics.jsonl")
    assert len(rows) == 3 and rows == untimed_rows(tmp_path / "reference/metrics.jsonl")


def test_a_requeued_run_continues_its_wandb_run_and_once_finished_trains_nothing(
    tmp_path, monkeypatch
):
    monkeypatch.setenv("WANDB_MODE", "offline")
    out = tmp_path / "run"
    train(compose_cfg(tiny_args("trainer.epochs=1", "logger=wandb"), out))
    run_id = load_checkpoint(out / "last.pt")["wandb_run_id"]
    # SLURM requeues it (the path torchrun's restarts and auto_resume take), with one more epoch
    monkeypatch.setenv("SLURM_RESTART_COUNT", "1")
    again = tiny_args("trainer.epochs=2", "logger=wandb")
    second = train(compose_cfg(again, out))
    assert second["epochs"] == 2
    runs = sorted(p.name for p in (out / "wandb").glob("offline-run-*"))
    assert len(runs) == 2 and all(name.endswith(f"-{run_id}") for name in runs), runs
    assert load_checkpoint(out / "last.pt")["wandb_run_id"] == run_id

    # requeued once more after it finished: its summary, no training, no W&B run
    rows = untimed_rows(out / "metrics.jsonl")
    assert train(compose_cfg(again, out))["test/acc"] == second["test/acc"]
    assert untimed_rows(out / "metrics.jsonl") == rows and len(rows) == 2
    assert len(list((out / "wandb").glob("offline-run-*"))) == 2


# ------------------------------------------------------------------- unusable output folders
def test_a_run_directory_through_a_file_is_one_line_and_exit_2(tmp_path, cache_dir):
    (tmp_path / "file").write_text("")
    proc = run_py([*tiny_args(), f"hydra.run.dir={tmp_path}/file/x"], tmp_path, cache_dir)
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert proc.stderr.strip().splitlines() == [
        f"cannot create or write the run directory: {tmp_path}/file is a file, not a folder. "
        "hydra.run.dir (with -m: hydra.sweep.dir) must name a folder that can be created and "
        "written; choose another or clear the path"
    ]


def test_a_multirun_job_whose_directory_is_blocked_fails_and_the_others_run(tmp_path, cache_dir):
    sweep = tmp_path / "sweep"
    (sweep / "2").mkdir(parents=True)
    (sweep / "1").write_text("")  # job 1's directory is a file: no error.txt possible
    (sweep / "2/.hydra").write_text("")  # job 2's directory is fine, its .hydra/ is a file
    args = ["-m", *tiny_args("trainer.epochs=1"), "trainer.checkpoints=none",
            "trainer.seed=0,1,2,3", "hydra.sweep.dir=sweep"]  # fmt: skip
    proc = run_py(args, tmp_path, cache_dir)
    assert proc.returncode == 1, proc.stderr[-3000:]
    assert (sweep / "0/summary.json").is_file() and (sweep / "3/summary.json").is_file()
    assert "Traceback" not in proc.stderr
    assert f"{sweep}/2/.hydra is a file, not a folder" in (sweep / "2/error.txt").read_text()
    listed = proc.stderr[proc.stderr.index("2 job(s) of the multirun failed:") :].splitlines()
    assert listed[1].startswith("  sweep/1: cannot create or write the run directory: "
                                f"{sweep}/1 is a file, not a folder.")  # fmt: skip
    assert not listed[1].endswith("error.txt)")  # none could be written
    assert listed[2].startswith("  sweep/2: ") and listed[2].endswith("(see sweep/2/error.txt)")
    assert len((sweep / "failed_jobs.log").read_text().splitlines()) == 2


def test_a_job_setup_failure_stops_the_sweep_when_told(tmp_path):
    """The wrapped job setup: a FailedJob for the sweeper, or with continue_on_error=false the
    end of the multirun with exit 2; anything but an OSError is not its business."""
    cfg = compose_cfg(tiny_args(), tmp_path / "7")
    with read_write(cfg.hydra), open_dict(cfg):
        cfg.hydra.job.num = 7
        cfg.hydra.sweep.dir = str(tmp_path)

    def setup(error):
        def run_job(**kwargs):
            raise error

        return _recording_setup_failures(run_job)

    blocked = OSError(28, "No space left on device", str(tmp_path / "7"))
    ret = setup(blocked)(config=cfg)
    assert isinstance(ret.return_value, FailedJob) and "No space left on device" in str(
        ret.return_value
    )
    assert "No space left on device" in (tmp_path / "7/error.txt").read_text()
    cfg.continue_on_error = False
    with pytest.raises(JobFailed) as stop:
        setup(blocked)(config=cfg)
    assert stop.value.code == 2 and str(tmp_path / "7") in stop.value.message
    with pytest.raises(KeyError):
        setup(KeyError("a bug"))(config=cfg)


def test_cli_out_through_a_file_is_one_line_and_exit_2(tmp_path, cache_dir):
    (tmp_path / "file").write_text("")
    env = environ(cache_dir)
    proc = subprocess.run([sys.executable, "-m", "scn.report", str(tmp_path), "--out",
                           f"{tmp_path}/file/report"], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=600)  # fmt: skip
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert proc.stderr.strip().splitlines() == [
        f"ERROR --out {tmp_path}/file/report: cannot create or write it ({tmp_path}/file is a "
        "file, not a folder); pass an --out whose folders can be created and written"
    ]


@pytest.mark.parametrize("tool", ["predict", "features", "inspect", "report"])
def test_every_cli_checks_its_out_before_any_work(tool, tmp_path, caplog):
    import importlib

    (tmp_path / "file").write_text("")
    out = f"{tmp_path}/file/out"
    argv = {
        "predict": ["missing.pt", "missing-images", "--out", f"{out}/p.csv"],
        "features": ["missing.pt", "missing-images", "--out", out],
        "inspect": [str(tmp_path / "missing-run"), "--out", out],
        "report": [str(tmp_path / "no-runs"), "--out", out],
    }[tool]
    assert importlib.import_module(f"scn.{tool}").main(argv) == 2
    assert f"{tmp_path}/file is a file, not a folder" in caplog.text  # not "checkpoint not found"
    if tool == "predict":
        (tmp_path / "dir.csv").mkdir()
        assert (
            importlib.import_module("scn.predict").main(
                ["missing.pt", "x", "--out", str(tmp_path / "dir.csv")]
            )
            == 2
        )
        assert f"--out {tmp_path / 'dir.csv'} is a folder" in caplog.text
