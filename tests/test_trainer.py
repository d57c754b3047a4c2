"""In-process training on tiny generated data: outputs, checkpoints, relabel audit, resume."""

import json

import pytest
import torch

from scn.app import train
from scn.checkpoints import load_checkpoint, save_checkpoint
from scn.engine.trainer import Trainer
from scn.errors import UserError
from scn.tracking.local import read_metrics
from tests.conftest import TINY, compose_cfg, untimed_rows


def test_train_writes_metrics_summary_and_checkpoints(tiny_cfg, tmp_path):
    cfg = tiny_cfg("dataset.noise.rate=0.3", "scn.relabel_epoch=1", "scn.margin_2=0.0")
    summary = train(cfg)
    out = tmp_path / "run"
    rows = read_metrics(out / "metrics.jsonl")
    assert [r["epoch"] for r in rows] == [1, 2]
    for key in (
        "train/loss",
        "train/ce",
        "train/rr",
        "train/lr",
        "scn/alpha_high",
        "scn/alpha_low",
        "scn/relabeled",
        "scn/relabel_fixed",
        "scn/relabel_broken",
        "noise/auc",
        "noise/precision",
        "noise/auc_loss",
        "noise/precision_loss",
        "scn/noise_auc",
        "scn/noise_precision",
        "train/noise_auc_loss",
        "train/noise_precision_loss",
        "test/acc",
        "test/mean_class_acc",
        "test/class_acc",
        "test/confusion",
    ):
        assert key in rows[0], key
    assert sum(map(sum, rows[0]["test/confusion"])) == 21
    assert rows[1]["train/lr"] == pytest.approx(rows[0]["train/lr"] * 0.9)
    on_disk = json.loads((out / "summary.json").read_text())
    assert on_disk == json.loads(json.dumps(summary))
    assert summary["selected_on"] == "test" and "papers" in summary["selection_note"]
    assert summary["test/acc_best"] == max(r["test/acc"] for r in rows)
    assert summary["method"] == "scn"
    # two epochs: the mean of the last five is the mean of both
    assert summary["test/acc_last5"] == pytest.approx(
        (rows[0]["test/acc"] + rows[1]["test/acc"]) / 2
    )
    assert summary["test/mean_class_acc_last"] == rows[1]["test/mean_class_acc"]
    assert summary["test/acc"] == rows[summary["selected_epoch"] - 1]["test/acc"]
    assert summary["scn/noisy_labels_initial"] == 13  # round(0.3 * 42)
    # margin_2 = 0 relabels every misclassified sample from epoch 1
    assert summary["scn/relabeled_total"] == sum(r["scn/relabeled"] for r in rows) > 0
    # the audit adds up: final noisy = initial - fixed + broken (+ wrong -> other wrong: unchanged)
    s = summary
    assert (
        s["scn/noisy_labels_final"]
        == s["scn/noisy_labels_initial"]
        - s["scn/noisy_labels_fixed"]
        + s["scn/clean_labels_broken"]
    )
    assert rows[-1]["scn/noisy_labels"] == s["scn/noisy_labels_final"]
    assert s["scn/noise_auc"] == rows[-1]["scn/noise_auc"]  # the last epoch's detection figures

    state = load_checkpoint(out / "last.pt")
    assert state["epoch"] == 2 and (out / "best.pt").is_file()
    keys = state["model"].keys()
    assert all(k.startswith(("backbone.", "head.")) for k in keys)
    assert {"head.alpha.weight", "head.fc.weight"} <= set(keys)
    assert state["class_names"][3] == "Happiness"
    assert state["preprocessing"]["input_size"] == 32 and len(state["preprocessing"]["mean"]) == 3
    assert state["config"]["scn"]["margin_2"] == 0.0
    assert int((state["labels"] != state["initial_labels"]).sum()) > 0
    assert {"torch", "numpy", "python"} <= set(state["rng"])


def test_baseline_has_no_alpha_no_rr_no_relabel(tiny_cfg, tmp_path):
    cfg = tiny_cfg(
        "method=baseline", "scn.relabel_epoch=1", "trainer.epochs=1", "trainer.checkpoints=last"
    )
    summary = train(cfg)
    row = read_metrics(tmp_path / "run/metrics.jsonl")[0]
    assert "train/rr" not in row and "scn/relabeled" not in row
    assert "train/noise_auc_loss" not in row  # clean labels: no noise-detection figures
    assert row["train/loss"] == row["train/ce"]
    assert summary["scn/relabeled_total"] == 0
    state = torch.load(tmp_path / "run/last.pt", weights_only=True)
    assert not any(k.startswith("head.alpha") for k in state["model"])
    assert not (tmp_path / "run/best.pt").exists()


def test_relabel_scope_low_only_touches_low_group(tiny_cfg, monkeypatch):
    cfg = tiny_cfg(
        "scn.relabel_scope=low",
        "scn.relabel_epoch=1",
        "scn.margin_2=-1",
        "trainer.epochs=1",
        "trainer.checkpoints=none",
        "scn.beta=0.5",
    )
    trainer = Trainer(cfg, cfg.paths.output_dir)
    seen = []
    import scn.methods.scn as tr

    real = tr.relabel

    def spy(logits, labels, margin_2, candidates=None):
        seen.append(candidates.clone())
        return real(logits, labels, margin_2, candidates)

    monkeypatch.setattr(tr, "relabel", spy)
    trainer.train_epoch(1)
    # batches of 16, 16, 10 -> low groups of 8, 8, 5
    assert [int(c.sum()) for c in seen] == [8, 8, 5]


def test_val_split_selects_on_val(tiny_cfg, tmp_path):
    summary = train(tiny_cfg("dataset.val_fraction=0.34", "trainer.checkpoints=none"))
    rows = read_metrics(tmp_path / "run/metrics.jsonl")
    assert summary["selected_on"] == "val" and "val/acc" in rows[0]
    best_val = max(r["val/acc"] for r in rows)
    assert summary["selected_epoch"] == next(r["epoch"] for r in rows if r["val/acc"] == best_val)
    assert not list((tmp_path / "run").glob("*.pt"))


def test_resume_repeats_an_uninterrupted_run_bitwise(tmp_path, monkeypatch):
    common = [
        *TINY,
        "trainer.epochs=3",
        "scn.relabel_epoch=2",
        "dataset.noise.rate=0.2",
        "trainer.checkpoints=last",
    ]
    full = train(compose_cfg(common, tmp_path / "full"))
    full_rows = untimed_rows(tmp_path / "full/metrics.jsonl")

    # interrupt after epoch 1 (a crash right after last.pt was written)
    class Stop(Exception):
        pass

    real_save = Trainer.save

    def save_then_die(self, name):
        real_save(self, name)
        if self.epoch == 1:
            raise Stop

    monkeypatch.setattr(Trainer, "save", save_then_die)
    with pytest.raises(Stop):
        train(compose_cfg(common, tmp_path / "part"))
    monkeypatch.setattr(Trainer, "save", real_save)

    resumed = train(
        compose_cfg(
            [*TINY, f"ckpt_path={tmp_path / 'part/last.pt'}", "trainer.epochs=3"],
            tmp_path / "resumed",
        )
    )
    rows = untimed_rows(tmp_path / "resumed/metrics.jsonl")
    assert rows == full_rows  # epochs 2 and 3 bitwise equal, epoch 1 carried over
    assert resumed["test/acc"] == full["test/acc"]
    a = load_checkpoint(tmp_path / "full/last.pt")
    b = load_checkpoint(tmp_path / "resumed/last.pt")
    assert all(torch.equal(a["model"][k], b["model"][k]) for k in a["model"])
    assert torch.equal(a["labels"], b["labels"])


def test_resume_refuses_other_changes_and_finished_runs(tmp_path):
    train(compose_cfg([*TINY, "trainer.epochs=1", "trainer.checkpoints=last"], tmp_path / "a"))
    ckpt = tmp_path / "a/last.pt"
    with pytest.raises(UserError, match="scn.margin_1"):
        train(compose_cfg([*TINY, f"ckpt_path={ckpt}", "scn.margin_1=0.5"], tmp_path / "b"))
    with pytest.raises(UserError, match="already completed epoch 1"):
        train(compose_cfg([*TINY, f"ckpt_path={ckpt}", "trainer.epochs=1"], tmp_path / "c"))


def test_resume_keeps_speed_settings_unless_the_command_line_sets_them(tmp_path):
    train(compose_cfg([*TINY, "trainer.epochs=1", "trainer.checkpoints=last",
                       "trainer.precision=bf16", "trainer.channels_last=false"], tmp_path / "a"))  # fmt: skip
    resume = [*TINY, f"ckpt_path={tmp_path / 'a/last.pt'}", "trainer.epochs=2"]
    train(compose_cfg([*resume, "dataset.pipeline=files"], tmp_path / "b"))
    cfg = load_checkpoint(tmp_path / "b/last.pt")["config"]
    assert cfg["trainer"]["precision"] == "bf16"  # kept, not reset to auto
    assert cfg["trainer"]["channels_last"] is False
    assert cfg["dataset"]["pipeline"] == "files"  # set on the command line


def test_a_checkpoint_from_before_a_key_resumes_with_the_key_from_conf(tmp_path):
    train(compose_cfg([*TINY, "trainer.epochs=1", "trainer.checkpoints=last",
                       "dataset.sampler=balanced"], tmp_path / "a"))  # fmt: skip
    state = torch.load(tmp_path / "a/last.pt", weights_only=False)
    for group, key in (("trainer", "checkpoint_every"), ("trainer", "cuda_graphs"),
                       ("scn", "rr_scope"), ("dataset", "pipeline")):  # fmt: skip
        del state["config"][group][key]
    torch.save(state, tmp_path / "old.pt")
    resume = [*TINY, f"ckpt_path={tmp_path / 'old.pt'}", "trainer.epochs=2"]
    assert train(compose_cfg(resume, tmp_path / "b"))["epochs"] == 2
    cfg = load_checkpoint(tmp_path / "b/last.pt")["config"]
    assert cfg["trainer"]["checkpoint_every"] == 1 and cfg["trainer"]["cuda_graphs"] == "auto"
    assert cfg["scn"]["rr_scope"] == "global" and cfg["dataset"]["pipeline"] == "cached"
    assert cfg["dataset"]["sampler"] == "balanced"  # the checkpoint's own value, not the default


def test_checkpoint_writes_are_atomic_and_bad_files_are_named(tmp_path, monkeypatch):
    path = tmp_path / "last.pt"
    save_checkpoint(path, {"epoch": 1})

    def broken_save(obj, f):
        f.write(b"partial")
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", broken_save)
    with pytest.raises(OSError):
        save_checkpoint(path, {"epoch": 2})
    monkeypatch.undo()
    assert torch.load(path, weights_only=True)["epoch"] == 1  # the old file survives intact
    assert [p.name for p in tmp_path.iterdir()] == ["last.pt"]  # no temp files left behind
    with pytest.raises(UserError, match="not a training checkpoint"):
        load_checkpoint(path)
    path.write_bytes(b"garbage")
    with pytest.raises(UserError, match="cannot load checkpoint .*last.pt"):
        load_checkpoint(path)
    with pytest.raises(UserError, match="checkpoint not found"):
        load_checkpoint(tmp_path / "none.pt")
