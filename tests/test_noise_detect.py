"""Noise-detection figures: ROC-AUC and precision@k on crafted scores against hand values."""

from __future__ import annotations

import pytest
import torch

from scn.engine.noise_detect import SampleScores, detection_auc, noise_summary, precision_at_k


def t(*v):
    return torch.tensor(v)


def test_auc_and_precision_without_ties():
    # wrong: 0.8 and 0.1; right: 0.2, 0.4, 0.6. 0.8 beats all 3 right, 0.1 none: 3 of 6 pairs
    scores, wrong = t(0.2, 0.8, 0.4, 0.6, 0.1), t(False, True, False, False, True)
    assert detection_auc(scores, wrong).item() == pytest.approx(0.5)
    # k = 2: the two highest are 0.8 (wrong) and 0.6 (right)
    assert precision_at_k(scores, wrong).item() == pytest.approx(0.5)
    perfect = t(False, True, False, False, True)
    assert detection_auc(perfect.float(), perfect).item() == 1.0
    assert precision_at_k(perfect.float(), perfect).item() == 1.0


def test_ties_count_half_in_auc_and_by_expected_share_in_precision():
    scores, wrong = t(0.9, 0.5, 0.5, 0.1), t(True, True, False, False)
    # pairs (wrong, right): 0.9>0.5, 0.9>0.1, 0.5=0.5 (half), 0.5>0.1 -> 3.5 / 4
    assert detection_auc(scores, wrong).item() == pytest.approx(0.875)
    # k = 2: 0.9 is wrong; one more from the tied pair {wrong, right}: expected 0.5 -> 1.5 / 2
    assert precision_at_k(scores, wrong).item() == pytest.approx(0.75)
    flat, wrong3 = torch.zeros(5), t(True, False, True, False, True)
    assert detection_auc(flat, wrong3).item() == pytest.approx(0.5)
    assert precision_at_k(flat, wrong3).item() == pytest.approx(0.6)  # the base rate


def record_epoch(labels, alpha=None):  # the method's score: 1 - alpha, as SCN's
    """Positions 0..3 with clean labels 0, 1, 2, 0; the logits favour the clean class, so a wrong
    label costs a high loss. Two steps, position 3 seen twice (its later step kept)."""
    clean = t(0, 1, 2, 0)
    logits = torch.nn.functional.one_hot(clean, 3).float() * 4
    s = SampleScores()
    steps = [t(0, 1, 3), t(2, 3)]
    for idx in steps:
        score = None if alpha is None else 1 - alpha[idx]
        s.record(idx, labels[idx], clean, logits[idx], score)
    return s


def test_sample_scores_rank_alpha_and_loss_and_skip_clean_epochs():
    alpha = t(0.9, 0.2, 0.5, 0.5)
    # position 1 (label 0, clean 1) and 2 (label 1, clean 2) wrong; 1 - alpha: 0.1, 0.8, 0.5, 0.5
    m = record_epoch(t(0, 0, 1, 0), alpha).metrics()
    # alpha: wrong 0.8 beats both right; wrong 0.5 beats 0.1, ties 0.5 -> 3.5 / 4; k = 2: 0.8 then
    # the tied pair {2 (wrong), 3 (right)} -> 1.5 / 2. Loss: both wrong labels cost more -> perfect
    assert m == pytest.approx(
        {
            "noise/auc": 0.875,
            "noise/precision": 0.75,
            "noise/auc_loss": 1.0,
            "noise/precision_loss": 1.0,
        }
    )
    baseline = record_epoch(t(0, 0, 1, 0)).metrics()  # no alpha: the loss detector only
    assert set(baseline) == {"noise/auc_loss", "noise/precision_loss"}
    assert record_epoch(t(0, 1, 2, 0), alpha).metrics() == {}  # no wrong label: nothing logged
    all_wrong = record_epoch(t(1, 0, 0, 1), alpha).metrics()  # no right label: no AUC
    assert all_wrong == {"noise/precision": 1.0, "noise/precision_loss": 1.0}
    assert SampleScores().metrics() == {}


def test_latest_step_wins_and_state_round_trips():
    s = record_epoch(t(0, 0, 1, 0), t(0.9, 0.2, 0.5, 0.5))
    clean = t(0, 1, 2, 0)
    s.record(t(1), t(1), clean, torch.zeros(1, 3), t(0.3))  # position 1 again, now right
    assert s.wrong.tolist() == [False, False, True, False] and s.score[1].item() == pytest.approx(
        0.3
    )
    back = SampleScores.from_state(s.state_dict(), "cpu")
    assert back.metrics() == s.metrics() and len(s.metrics()) == 4
    # saved before the method seam: SCN's alpha, read back as the score 1 - alpha
    old = {k: v for k, v in s.state_dict().items() if k != "score"} | {"alpha": 1 - s.score}
    assert SampleScores.from_state(old, "cpu").metrics() == pytest.approx(s.metrics())
    rows = [{"epoch": 1, "noise/auc": 0.5}, {"epoch": 2, "noise/auc": 0.7, "test/acc": 1}]
    aliases = {"noise/auc": "scn/noise_auc"}
    assert noise_summary(rows, aliases) == {"noise/auc": 0.7, "scn/noise_auc": 0.7}
    assert noise_summary([], {}) == {}


def pairwise_auc(scores: list[float], wrong: list[bool]) -> float:
    """The AUC by its definition: over all (wrong, right) pairs, 1 if the wrong one scores higher."""
    pos = [s for s, w in zip(scores, wrong, strict=True) if w]
    neg = [s for s, w in zip(scores, wrong, strict=True) if not w]
    return sum((p > n) + 0.5 * (p == n) for p in pos for n in neg) / (len(pos) * len(neg))


def test_trainer_figures_come_from_the_trained_labels_and_weighted_logits(tiny_cfg, monkeypatch):
    """One SCN epoch relabeling from its first step: the figures use the labels each step trained
    with (before its relabeling), its alpha and the CE of its alpha-weighted logits."""
    from scn.engine.trainer import Trainer

    cfg = tiny_cfg("backbone=resnet10t", "dataset.noise.rate=0.3", "scn.relabel_epoch=1",
                   "scn.margin_2=0.0", "trainer.epochs=1", "trainer.checkpoints=none")  # fmt: skip
    trainer = Trainer(cfg, cfg.paths.output_dir)
    steps, positions = [], []
    real_step, real_record = trainer.step, SampleScores.record

    def step(x, y, ctx):
        out = real_step(x, y, ctx)
        steps.append((y.clone(), out.out.logits.detach().clone(), out.out.alpha.detach().clone()))
        return out

    def record(self, idx, *args):
        positions.append(idx.clone())
        return real_record(self, idx, *args)

    monkeypatch.setattr(trainer, "step", step)
    monkeypatch.setattr(SampleScores, "record", record)
    row = trainer.train_epoch(1)
    assert row["scn/relabeled"] > 0  # labels changed during the epoch
    idx = torch.cat(positions)
    y, logits, alpha = (torch.cat(v) for v in zip(*steps, strict=True))
    wrong = (y != trainer.clean_labels[idx]).tolist()
    assert sum(wrong) == 13  # round(0.3 * 42) flipped, all seen before any relabeling of them
    loss = torch.nn.functional.cross_entropy(logits, y, reduction="none")
    assert row["noise/auc"] == pytest.approx(pairwise_auc((1 - alpha).tolist(), wrong))
    assert row["scn/noise_auc"] == row["noise/auc"]  # today's SCN name, kept
    assert row["noise/auc_loss"] == pytest.approx(pairwise_auc(loss.tolist(), wrong))
    assert row["train/noise_auc_loss"] == row["noise/auc_loss"]
    top = torch.argsort(loss, descending=True)[:13].tolist()
    assert row["train/noise_precision_loss"] == pytest.approx(sum(wrong[i] for i in top) / 13)
