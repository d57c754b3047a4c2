"""Whole-run speed: phase timings in every row and the summary, checkpoints written by a background
thread (kill mid-write, final state, writer errors), and the whole-run benchmark in tiny form."""

import json
import logging
import os
import signal
import threading

import pytest
import torch

from scn import bench
from scn.app import train
from scn.checkpoints import load_checkpoint
from scn.engine.accel import compile_cache, resolve_accel
from scn.engine.checkpoint import CheckpointWriteError, CheckpointWriter, host_copy, last_due
from scn.engine.trainer import Trainer
from scn.errors import UserError
from scn.tracking.local import read_metrics
from scn.tracking.wandb_run import NullTracker
from tests.conftest import TINY, compose_cfg, tiny_args

PHASES = ("time/train_s", "time/eval_s", "time/checkpoint_s", "time/checkpoint_write_s")
STARTUP = ("time/startup_s", "time/startup_data_s", "time/startup_model_s",
           "time/startup_compile_s")  # fmt: skip


# ----------------------------------------------------------------------------- the writer
def test_host_copy_shares_nothing_the_loop_keeps_changing():
    model = torch.nn.BatchNorm1d(3)
    state = {"model": model.state_dict(), "history": [{"epoch": 1}], "rng": (1, [2])}
    copied = host_copy(state)
    with torch.no_grad():
        model.weight.add_(1.0)
    state["history"][0]["epoch"] = 9
    assert torch.equal(copied["model"]["weight"], torch.ones(3))  # BatchNorm's initial weight
    assert copied["history"] == [{"epoch": 1}] and copied["rng"] == (1, [2])
    assert copied["model"]._metadata == state["model"]._metadata  # versions for load_state_dict


def test_the_writer_keeps_one_write_in_flight_and_the_newest_queued_state(tmp_path, monkeypatch):
    import scn.engine.checkpoint as checkpoint

    started, gate, written = threading.Event(), threading.Event(), []
    real = checkpoint.save_checkpoint

    def slow_save(path, state):
        started.set()
        gate.wait(10)
        written.append((path.name, state["epoch"]))
        real(path, state)

    monkeypatch.setattr(checkpoint, "save_checkpoint", slow_save)
    writer = CheckpointWriter()
    base = {"model": {}, "optimizer": {}, "scheduler": {}, "labels": torch.zeros(1), "config": {},
            "history": []}  # fmt: skip
    writer.submit(tmp_path / "last.pt", {**base, "epoch": 1})
    assert started.wait(10)  # epoch 1 is being written
    for epoch in (2, 3):  # 2 is queued, then replaced by 3
        writer.submit(tmp_path / "last.pt", {**base, "epoch": epoch})
    writer.submit(tmp_path / "best.pt", {**base, "epoch": 3})
    gate.set()
    writer.wait()
    assert written == [("last.pt", 1), ("last.pt", 3), ("best.pt", 3)]
    assert load_checkpoint(tmp_path / "last.pt")["epoch"] == 3 and writer.writes == 3
    assert writer._thread is None  # no thread left behind between writes
    assert sorted(p.name for p in tmp_path.iterdir()) == ["best.pt", "last.pt"]  # no temp files


def test_checkpoint_every_thins_last_pt_but_never_the_final_epoch():
    assert [e for e in range(1, 8) if last_due(e, 3, 7)] == [3, 6, 7]
    assert [e for e in range(1, 4) if last_due(e, 1, 3)] == [1, 2, 3]


# ------------------------------------------------------------------------------ in a run
def test_rows_and_summary_say_where_the_time_went_and_last_pt_is_the_final_state(tmp_path):
    cfg = compose_cfg(tiny_args("trainer.checkpoint_every=2"), tmp_path / "run")
    trainer = Trainer(cfg, tmp_path / "run")
    summary = trainer.fit(NullTracker())
    rows = read_metrics(tmp_path / "run/metrics.jsonl")
    for row in rows:
        for key in (*PHASES, "time/epoch_s"):
            assert row[key] >= 0, key
        assert row["time/train_s"] > 0 and row["time/eval_s"] > 0
        parts = row["time/train_s"] + row["time/eval_s"] + row["time/checkpoint_s"]
        # the rest of an epoch: the scheduler, the finiteness check, selection (milliseconds)
        assert parts <= row["time/epoch_s"] + 1e-3
        assert parts >= 0.8 * row["time/epoch_s"] - 0.05, row
    assert all(k in rows[0] for k in STARTUP) and not any(k in rows[1] for k in STARTUP)
    first = rows[0]
    assert first["time/startup_compile_s"] == 0  # compile is off on a CPU
    # start-up: building the Trainer (data, model), then fit up to the end of the first step
    built = first["time/startup_data_s"] + first["time/startup_model_s"]
    assert 0 < built < first["time/startup_s"] < built + first["time/train_s"] + 0.5
    # checkpoint_every=2: last.pt after epoch 2 only (epoch 1 is not due); best.pt whenever better
    improved = 1 + (rows[1]["test/acc"] > rows[0]["test/acc"])
    assert trainer.writer.writes == 1 + improved
    for key in ("time/train_s", "time/eval_s", "time/checkpoint_s", "time/epoch_s"):
        assert summary[key] == pytest.approx(sum(r[key] for r in rows), abs=1e-3)
    assert summary["time/startup_s"] == first["time/startup_s"]
    assert summary["time/checkpoint_write_s"] > 0 and summary["time/checkpoint_wait_s"] >= 0
    assert json.loads((tmp_path / "run/summary.json").read_text()) == summary

    # the final last.pt holds the state at the end, tensor for tensor
    state = load_checkpoint(tmp_path / "run/last.pt")
    assert state["epoch"] == 2
    model = trainer.model.state_dict()
    assert model.keys() == state["model"].keys()
    assert all(torch.equal(model[k].cpu(), state["model"][k]) for k in model)
    opt = trainer.optimizer.state_dict()["state"]
    assert all(
        torch.equal(opt[i]["exp_avg"], state["optimizer"]["state"][i]["exp_avg"]) for i in opt
    )
    assert torch.equal(trainer.labels.cpu(), state["labels"])
    assert [r["epoch"] for r in state["history"]] == [1, 2]
    assert not list((tmp_path / "run").glob(".*.pt.*"))


def test_a_run_killed_mid_write_keeps_the_previous_checkpoint_and_a_failed_write_fails_the_run(
    tmp_path, monkeypatch
):
    killed = tmp_path / "killed"
    train(compose_cfg(tiny_args("trainer.epochs=1", "trainer.checkpoints=last"), killed))
    state = load_checkpoint(killed / "last.pt")
    pid = os.fork()  # the run's process, from here on: killed (SIGKILL) writing epoch 2's last.pt
    if pid == 0:
        try:

            def dying_save(obj, f):
                f.write(b"the first bytes of a checkpoint")
                f.flush()
                os.kill(os.getpid(), signal.SIGKILL)

            torch.save = dying_save
            writer = CheckpointWriter()
            writer.submit(killed / "last.pt", {**state, "epoch": 2})
            writer.wait()
        finally:
            os._exit(1)  # never back into pytest
    _, status = os.waitpid(pid, 0)
    assert os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGKILL
    assert len(list(killed.glob(".last.pt.*"))) == 1  # the unfinished write's temp file
    assert load_checkpoint(killed / "last.pt")["epoch"] == 1  # the previous one, whole

    # the next start removes the temp file; its own write then fails (a full disk)
    import scn.engine.checkpoint as checkpoint

    def full_disk(obj, f):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(checkpoint.torch, "save", full_disk)
    out = tmp_path / "resumed"
    with pytest.raises(CheckpointWriteError) as e:
        train(compose_cfg(tiny_args("trainer.epochs=2", f"ckpt_path={killed}"), out))
    assert not list(killed.glob(".last.pt.*"))  # removed by the resume
    assert isinstance(e.value, UserError)  # one clear line from run.py, exit 2
    assert f"could not write checkpoint {out / 'last.pt'}: OSError" in str(e.value)
    assert "No space left on device" in str(e.value)
    assert not (out / "last.pt").exists() and not list(out.glob(".last.pt.*"))
    assert load_checkpoint(killed / "last.pt")["epoch"] == 1


def test_checkpoint_every_is_checked(tmp_path):
    with pytest.raises(UserError, match="trainer.checkpoint_every=0; use a whole number"):
        Trainer(compose_cfg(tiny_args("trainer.checkpoint_every=0"), tmp_path), tmp_path)


def test_compiled_code_is_cached_under_paths_cache_dir_and_a_warm_start_is_told(
    tmp_path, monkeypatch, caplog
):
    monkeypatch.delenv("TORCHINDUCTOR_CACHE_DIR", raising=False)  # restored after the test
    monkeypatch.delenv("TRITON_CACHE_DIR", raising=False)
    caplog.set_level(logging.INFO)
    assert compile_cache(tmp_path) is False and "compile cache: cold" in caplog.text
    assert os.environ["TORCHINDUCTOR_CACHE_DIR"] == str(tmp_path / "compile/inductor")
    assert os.environ["TRITON_CACHE_DIR"] == str(tmp_path / "compile/triton")
    (tmp_path / "compile/inductor/fxgraph").mkdir(parents=True)
    (tmp_path / "compile/inductor/fxgraph/entry").write_bytes(b"x")
    assert compile_cache(tmp_path) is True and "compile cache: warm, 1 files" in caplog.text
    model = torch.nn.Linear(2, 2)  # compile off (the CPU default): nothing is touched
    accel = resolve_accel(compose_cfg(TINY).trainer, torch.device("cpu"), 16)
    monkeypatch.delenv("TORCHINDUCTOR_CACHE_DIR")
    assert accel.compiled(model, tmp_path / "other") is model
    assert "TORCHINDUCTOR_CACHE_DIR" not in os.environ and not (tmp_path / "other").exists()


# ------------------------------------------------------------------------ the e2e benchmark
@pytest.mark.e2e
def test_bench_e2e_runs_cold_then_warm_and_writes_the_phase_split(tmp_path, monkeypatch, caplog):
    monkeypatch.chdir(tmp_path)
    caplog.set_level(logging.INFO)
    argv = ["--e2e", "--images", "64", "--e2e-epochs", "1", "--train-size", "32", "--batch", "16",
            "--out", "e.json", "--workdir", str(tmp_path)]  # fmt: skip
    assert bench.main(argv) == 0  # the two runs are `python run.py` processes
    result = json.loads((tmp_path / "e.json").read_text())
    assert set(result) == {"device", "torch", "e2e"}  # only the whole-run measurement
    e = result["e2e"]
    assert e["images"] == 70 and e["test_images"] == 21 and e["epochs"] == 1  # 10 and 3 a class
    assert e["model"] == "resnet10t SCN, 32 px, batch 16"  # the CPU default backbone
    for run in (e["cold"], e["warm"]):
        assert run["startup_s"] > 0 and run["train_s"] > 0 and run["eval_s"] > 0
        assert run["checkpoint_s"] >= 0 and run["checkpoint_write_s"] > 0
        assert run["epoch_s"] == pytest.approx(sum(run["per_epoch_s"]), abs=1e-3)
        assert run["startup_s"] < run["wall_s"] and run["epoch_s"] < run["wall_s"]
        assert run["epoch_over_train_eval"] >= 1.0 and 0 <= run["test_acc"] <= 1
    # the cold run decoded the images into the cache; the warm one maps them
    assert e["warm"]["startup_data_s"] < e["cold"]["startup_data_s"]
    assert "cold run:" in caplog.text and "warm run:" in caplog.text and "wall_s" in caplog.text
    assert [p.name for p in tmp_path.iterdir()] == ["e.json"]  # generated data cleaned up
