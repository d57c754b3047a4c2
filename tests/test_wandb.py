"""W&B: an offline run is written with the nested config, per-epoch metrics and the summary."""

import json
import shutil
import subprocess

import pytest
import torch

from scn.app import train
from scn.tracking.local import read_metrics
from scn.tracking.wandb_run import flatten_row, resolve_mode
from tests.conftest import finished_run


def inspect(run_dir, *flags):
    exe = shutil.which("wandb")
    proc = subprocess.run(
        [exe, "leet", "inspect", *flags, "--json", str(run_dir)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


def test_offline_run_holds_config_history_and_summary(tiny_cfg, tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "offline")
    cfg = tiny_cfg("logger=wandb", "logger.name=tiny", "logger.log_model=true",
                   "dataset.noise.rate=0.3", "scn.relabel_epoch=1", "scn.margin_2=0.0")  # fmt: skip
    summary = train(cfg)
    run_dirs = list((tmp_path / "run/wandb").glob("offline-run-*"))
    assert len(run_dirs) == 1
    got = json.loads(inspect(run_dirs[0], "--summary"))
    assert got["name"] == "tiny" and got["state"] == "finished" and got["exit_code"] == 0
    assert got["config"]["scn"]["margin_1"] == 0.07  # nested, resolved
    assert got["config"]["choices"]["dataset"] == "synthetic"
    assert "hydra" not in got["config"]
    for key in ("test/acc_best", "test/acc_last", "selected_epoch", "scn/noisy_labels_final"):
        assert got["summary"][key] == pytest.approx(summary[key]), key
    assert got["summary"]["selected_on"] == "test"

    records = [json.loads(line) for line in inspect(run_dirs[0]).splitlines() if line.strip()]
    items = [r["history"]["item"] for r in records if r.get("type") == "history"]
    history = [h for h in items if "test/acc" in h]
    rows = read_metrics(tmp_path / "run/metrics.jsonl")
    assert [h["epoch"] for h in history] == [1, 2]
    assert all(
        h["scn/alpha_hist._type"] == "histogram" for h in history
    )  # alpha histogram per epoch
    assert all(sum(h["scn/alpha_hist.values"]) == 42 for h in history)  # every train alpha, once
    tables = items[-1]  # once, at the end: confusion at selected and last epoch, per class, audit
    for key in (
        "test/confusion_selected_table",
        "test/confusion_last_table",
        "test/per_class",
        "scn/relabels",
    ):
        assert tables[f"{key}._type"] == "table-file", key
    assert int(tables["scn/relabels.nrows"]) == summary["scn/relabeled_total"]
    audit = (tmp_path / "run/relabels.csv").read_text().splitlines()
    assert (
        audit[0] == "sample,old,new,epoch,clean"
        and len(audit) == summary["scn/relabeled_total"] + 1
    )
    models = [
        r["artifact"]
        for r in records
        if r.get("type") == "artifact" and r["artifact"]["type"] == "model"
    ]
    assert len(models) == 1 and "best" in models[0]["aliases"]
    assert [h["test/acc"] for h in history] == [r["test/acc"] for r in rows]
    assert history[0]["test/class_acc/Happiness"] == rows[0]["test/class_acc"]["Happiness"]
    # the run id is kept in the checkpoint so a resume continues the same W&B run
    state = torch.load(tmp_path / "run/last.pt", weights_only=True)
    assert state["wandb_run_id"] == got["run_id"]


def test_mode_resolution_never_prompts(monkeypatch, tmp_path):
    monkeypatch.delenv("WANDB_MODE", raising=False)
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))  # no ~/.netrc
    monkeypatch.setenv("NETRC", str(tmp_path / ".netrc"))
    assert resolve_mode(None) == "offline"
    assert resolve_mode("disabled") == "disabled"
    monkeypatch.setenv("WANDB_API_KEY", "x" * 40)
    assert resolve_mode(None) == "online"
    monkeypatch.setenv("WANDB_MODE", "offline")
    assert resolve_mode(None) == "offline"


def test_flatten_row_keeps_scalars_and_per_class_values():
    row = {
        "epoch": 3,
        "test/acc": 0.5,
        "test/class_acc": {"Fear": 0.25, "Neutral": None},
        "test/confusion": [[1, 0], [0, 1]],
        "flag": True,
    }
    assert flatten_row(row) == {"epoch": 3, "test/acc": 0.5, "test/class_acc/Fear": 0.25}


@pytest.mark.parametrize("backend", ["none"])
def test_logger_none_writes_no_wandb_files(tiny_cfg, tmp_path, backend):
    train(tiny_cfg(f"logger={backend}", "trainer.epochs=1", "trainer.checkpoints=none"))
    assert not (tmp_path / "run/wandb").exists()


def test_online_init_failure_falls_back_to_offline(tiny_cfg, tmp_path, monkeypatch):
    """No network must never cost the training run."""
    import wandb

    real_init = wandb.init
    modes = []

    def flaky_init(**kwargs):
        modes.append(kwargs["mode"])
        if kwargs["mode"] == "online":
            raise wandb.errors.CommError("network unreachable")
        return real_init(**kwargs)

    monkeypatch.setattr(wandb, "init", flaky_init)
    summary = train(
        tiny_cfg(
            "logger=wandb", "logger.mode=online", "trainer.epochs=1", "trainer.checkpoints=none"
        )
    )
    assert modes == ["online", "offline"]
    assert len(list((tmp_path / "run/wandb").glob("offline-run-*"))) == 1
    assert finished_run(tmp_path / "run")["test/acc"] == summary["test/acc"]  # as returned


def run_record(run_dir):
    for line in inspect(run_dir).splitlines():
        record = json.loads(line)
        if record.get("type") == "run":
            return record["run"]
    raise AssertionError("no run record")


def test_a_failing_job_still_closes_its_run(tiny_cfg, tmp_path, monkeypatch):
    from scn.engine.trainer import Trainer

    monkeypatch.setenv("WANDB_MODE", "offline")

    def boom(self, epoch):
        raise RuntimeError("out of memory")

    monkeypatch.setattr(Trainer, "train_epoch", boom)
    with pytest.raises(RuntimeError, match="out of memory"):
        train(tiny_cfg("logger=wandb"))
    run_dir = next((tmp_path / "run/wandb").glob("offline-run-*"))
    got = json.loads(inspect(run_dir, "--summary"))
    assert got["exit_code"] == 1 and got["state"] != "running"
    assert got["summary"]["error"] == "RuntimeError: out of memory"  # for the dashboard


def test_eval_runs_are_logged_with_job_type_eval(tiny_cfg, tmp_path, monkeypatch):
    from scn.app import main as run_task
    from tests.conftest import TINY, compose_cfg

    train(tiny_cfg("trainer.epochs=1", "trainer.checkpoints=last"))
    monkeypatch.setenv("WANDB_MODE", "offline")
    cfg = compose_cfg([*TINY, "task=eval", "logger=wandb", f"ckpt_path={tmp_path / 'run/last.pt'}"],
                      tmp_path / "eval")  # fmt: skip
    acc = run_task(cfg)
    run_dir = next((tmp_path / "eval/wandb").glob("offline-run-*"))
    assert run_record(run_dir)["job_type"] == "eval"
    assert json.loads(inspect(run_dir, "--summary"))["summary"]["test/acc"] == pytest.approx(acc)
