"""Runs that survive what clusters and users do to them: resume semantics, clean user errors,
sweeps that go on past a failed job, preemption by signal, and divergence to NaN."""

import json
import signal

import pytest
import torch
from omegaconf import open_dict, read_write

from scn.app import resume_config, run_job, train
from scn.checkpoints import load_checkpoint
from scn.config import hydra_choices, to_container
from scn.engine.trainer import Trainer
from scn.errors import JobFailed, UserError
from scn.report import write_report
from scn.sweep import FailedJob
from tests.conftest import TINY, compose_cfg, run_py, untimed_rows, write_rafdb

TINY_NO_EPOCHS = [o for o in TINY if not o.startswith("trainer.epochs=")]


# ------------------------------------------------------------------------------------- resume
def test_resume_takes_what_the_command_line_does_not_set_from_the_checkpoint(tmp_path):
    started = compose_cfg([*TINY_NO_EPOCHS, "trainer.epochs=4", "trainer.device=cpu"], tmp_path)
    state = {"config": to_container(started), "choices": hydra_choices()}
    ckpt = f"ckpt_path={tmp_path / 'last.pt'}"

    cfg = resume_config(compose_cfg([*TINY_NO_EPOCHS, ckpt], tmp_path / "resumed"), state)
    assert cfg.trainer.epochs == 4  # not the config's default of 70
    assert cfg.trainer.device == "cpu"  # not the default auto
    assert cfg.paths.output_dir == str(tmp_path / "resumed")  # always this run's directory
    assert cfg.ckpt_path == str(tmp_path / "last.pt")

    cfg = compose_cfg([*TINY_NO_EPOCHS, ckpt, "trainer.epochs=6", "logger=wandb"], tmp_path / "b")
    cfg = resume_config(cfg, state)
    assert cfg.trainer.epochs == 6 and cfg.logger.backend == "wandb"


def test_a_requeued_job_resumes_itself_and_a_run_directory_resumes_and_extends(
    tmp_path, monkeypatch
):
    class Stop(Exception):
        pass

    real_save = Trainer.save

    def save_then_die(self, name, partial=None):
        real_save(self, name, partial)
        raise Stop

    monkeypatch.setattr(Trainer, "save", save_then_die)
    with pytest.raises(Stop):  # killed right after epoch 1's last.pt, of trainer.epochs=2
        train(compose_cfg([*TINY, "trainer.checkpoints=last"], tmp_path / "a"))
    monkeypatch.setattr(Trainer, "save", real_save)

    # SLURM requeued the job: the same command in the same directory picks up its last.pt
    monkeypatch.setenv("SLURM_RESTART_COUNT", "1")
    assert train(compose_cfg([*TINY, "trainer.checkpoints=last"], tmp_path / "a"))["epochs"] == 2
    monkeypatch.delenv("SLURM_RESTART_COUNT")
    assert [json.loads(r)["epoch"] for r in (tmp_path / "a/metrics.jsonl").open()] == [1, 2]

    resume = [*TINY_NO_EPOCHS, f"ckpt_path={tmp_path / 'a'}", "trainer.epochs=3"]
    assert train(compose_cfg(resume, tmp_path / "c"))["epochs"] == 3  # extended on request
    assert [json.loads(r)["epoch"] for r in (tmp_path / "c/metrics.jsonl").open()] == [1, 2, 3]
    assert load_checkpoint(tmp_path / "c/last.pt")["config"]["trainer"]["epochs"] == 3

    (tmp_path / "empty").mkdir()
    with pytest.raises(UserError, match="directory without a last.pt"):
        train(compose_cfg([*TINY, f"ckpt_path={tmp_path / 'empty'}"], tmp_path / "d"))


# ------------------------------------------------------------------------------------- errors
def test_user_and_config_errors_print_one_message_and_exit_2(tmp_path, cache_dir):
    root = write_rafdb(tmp_path / "raf", [("train_00001.jpg", 1), ("test_0001.jpg", 2)])
    labels = root / "EmoLabel/list_patition_label.txt"
    labels.write_text("train_00001.jpg 1\ntrain_00002.jpg happy\ntest_0001.jpg 2\n")
    proc = run_py([f"dataset.root={root}", "logger=none", "trainer.progress=false",
                   "hydra.run.dir=out"], tmp_path, cache_dir)  # fmt: skip
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert f"{labels}:2: label 'happy' is not an integer" in proc.stderr
    assert "Traceback" not in proc.stderr + proc.stdout and "HYDRA_FULL_ERROR" not in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1
    assert "label 'happy'" in (tmp_path / "out/run.log").read_text()  # the log keeps it too

    proc = run_py(["trainer.epochz=3"], tmp_path, cache_dir)  # Hydra's config error
    assert proc.returncode == 2 and "Key 'epochz' is not in struct" in proc.stderr
    assert "Traceback" not in proc.stderr and "HYDRA_FULL_ERROR" not in proc.stderr


def test_a_multirun_job_records_its_failure_and_the_sweep_goes_on_unless_told(tiny_cfg, tmp_path):
    cfg = tiny_cfg("trainer.checkpoints=oops")
    with read_write(cfg.hydra), open_dict(cfg):
        cfg.hydra.mode = "MULTIRUN"
        cfg.hydra.job.num = 7
        cfg.hydra.sweep.dir = str(tmp_path)
    from hydra.core.hydra_config import HydraConfig

    HydraConfig.instance().set_config(cfg)
    failed = run_job(cfg)  # the sweeper gets a marker, not a score: Optuna records a failed trial
    assert isinstance(failed, FailedJob) and "job 7 failed" in str(failed)
    with pytest.raises(ValueError, match="trainer.checkpoints='oops'"):
        float(failed)
    assert "trainer.checkpoints='oops'" in (tmp_path / "run/error.txt").read_text()
    assert "job 7 (" in (tmp_path / "failed_jobs.log").read_text()

    cfg.continue_on_error = False
    with pytest.raises(JobFailed) as stop:
        run_job(cfg)
    assert stop.value.code == 2 and "trainer.checkpoints='oops'" in stop.value.message


def test_multirun_completes_the_other_jobs_exits_1_and_the_report_lists_the_failure(
    tmp_path, cache_dir
):
    args = ["-m", *TINY, "trainer.epochs=1", "trainer.checkpoints=none,oops,none",
            "hydra.sweep.dir=sweep"]  # fmt: skip
    proc = run_py(args, tmp_path, cache_dir)
    assert proc.returncode == 1, proc.stderr[-3000:]
    sweep = tmp_path / "sweep"
    assert (sweep / "0/summary.json").is_file() and (sweep / "2/summary.json").is_file()
    assert "trainer.checkpoints='oops'" in (sweep / "1/error.txt").read_text()
    assert not (sweep / "0/error.txt").exists()
    assert "1 job(s) of the multirun failed" in proc.stderr and "sweep/1" in proc.stderr
    assert "Traceback" not in proc.stderr

    md = (write_report(sweep, tmp_path / "report") / "report.md").read_text()
    assert "2 runs, 1 configurations" in md
    failed = md.split("## Failed jobs")[1]
    assert "| 1 | trainer.checkpoints=oops | trainer.checkpoints='oops'" in failed


# ------------------------------------------------------------------------- preemption and NaN
# runs run.py, sending this very process SIGTERM after its STOP_AT-th training step
SIGTERM_AT_STEP = """
import os, runpy, signal, sys
import torch
from scn.engine.trainer import Trainer
torch.set_num_threads(2)
real_step, steps = Trainer.step, []
def step(self, x, y, global_n):
    out = real_step(self, x, y, global_n)
    steps.append(1)
    if len(steps) == int(os.environ["STOP_AT"]):
        os.kill(os.getpid(), signal.SIGTERM)
    return out
Trainer.step = step
sys.argv = sys.argv[1:]
runpy.run_path(sys.argv[0], run_name="__main__")
"""


def test_sigterm_inside_an_epoch_saves_a_last_pt_that_resumes_bitwise(tmp_path, cache_dir):
    common = [*TINY, "trainer.checkpoints=last", "dataset.noise.rate=0.2", "scn.relabel_epoch=2",
              "scn.margin_2=0.0"]  # fmt: skip
    # 3 batches per epoch: step 5 is the second of epoch 2, with relabels on both sides of it
    proc = run_py([*common, "hydra.run.dir=stopped"], tmp_path, cache_dir, SIGTERM_AT_STEP,
                  STOP_AT="5")  # fmt: skip
    stopped = tmp_path / "stopped"
    assert proc.returncode == 128 + signal.SIGTERM, proc.stderr[-3000:]
    assert f"SIGTERM received: stopped after step 2 of epoch 2 and saved {stopped}/last.pt" in (
        proc.stderr
    )
    assert f"resume with python run.py ckpt_path={stopped}" in proc.stderr
    assert "Traceback" not in proc.stderr
    state = load_checkpoint(stopped / "last.pt")
    assert state["epoch"] == 1 and state["partial"]["epoch"] == 2
    assert state["partial"]["batches"] == 2

    resumed = train(compose_cfg([*TINY_NO_EPOCHS, f"ckpt_path={stopped}"], tmp_path / "resumed"))
    full = train(compose_cfg(common, tmp_path / "full"))
    assert resumed["scn/relabeled_total"] > 0
    rows = untimed_rows(tmp_path / "resumed/metrics.jsonl")
    assert rows == untimed_rows(tmp_path / "full/metrics.jsonl")  # bitwise, epoch 2 included
    a, b = load_checkpoint(tmp_path / "full/last.pt"), load_checkpoint(tmp_path / "resumed/last.pt")
    assert all(torch.equal(a["model"][k], b["model"][k]) for k in a["model"])
    assert torch.equal(a["labels"], b["labels"]) and a["relabel_log"] == b["relabel_log"]
    assert "partial" not in b
    assert full["test/acc"] == resumed["test/acc"]


def test_a_diverging_run_stops_with_the_epoch_and_keeps_last_pt_finite(tiny_cfg, tmp_path):
    # epoch 1 trains at lr 0.01, epoch 2 at 1e6: the loss becomes NaN in epoch 2
    cfg = tiny_cfg("optimizer=sgd", "scheduler.gamma=1e8",
                   "trainer.checkpoints=best_and_last")  # fmt: skip
    with pytest.raises(UserError, match="diverged in epoch 2: the loss is nan") as e:
        train(cfg)
    out = tmp_path / "run"
    assert f"last good checkpoint is {out / 'last.pt'}" in str(e.value)
    for name in ("last.pt", "best.pt"):
        state = load_checkpoint(out / name)
        assert state["epoch"] == 1
        assert all(t.isfinite().all() for t in state["model"].values() if t.is_floating_point())
    assert len((out / "metrics.jsonl").read_text().splitlines()) == 1
