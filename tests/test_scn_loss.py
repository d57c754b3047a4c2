"""The SCN math against values computed by hand."""

import math

import pytest
import torch
import torch.nn.functional as F

from scn.methods.scn import SCNHead, rank_regularization, relabel, scn_loss, split_groups


def test_groups_take_floor_beta_b_largest_alphas():
    alpha = torch.tensor([0.1, 0.9, 0.5, 0.7, 0.3])
    high, low = split_groups(alpha, beta=0.7)  # floor(3.5) = 3
    assert sorted(high.tolist()) == [1, 2, 3]
    assert sorted(low.tolist()) == [0, 4]


def test_rr_hinge_by_hand():
    alpha = torch.tensor([0.1, 0.9, 0.5, 0.7, 0.3], requires_grad=True)
    # high mean (0.9 + 0.7 + 0.5) / 3 = 0.7, low mean (0.1 + 0.3) / 2 = 0.2, gap 0.5
    stats = rank_regularization(alpha, beta=0.7, margin_1=0.6)
    assert stats.rr.item() == pytest.approx(0.1)
    assert (stats.high_count, stats.low_count) == (3, 2)
    assert stats.high_sum.item() == pytest.approx(2.1)
    assert stats.low_sum.item() == pytest.approx(0.4)
    stats.rr.backward()
    # d rr / d alpha = -1/3 for high members, +1/2 for low members
    expected = torch.tensor([0.5, -1 / 3, -1 / 3, -1 / 3, 0.5])
    assert torch.allclose(alpha.grad, expected)
    # gap above the margin: hinge at zero
    assert rank_regularization(alpha, 0.7, 0.4).rr.item() == 0.0


@pytest.mark.parametrize("alpha,beta", [([0.4], 0.7), ([0.4, 0.6], 0.0), ([0.2, 0.8], 1.0)])
def test_rr_is_zero_when_a_group_is_empty(alpha, beta):
    stats = rank_regularization(torch.tensor(alpha), beta, 0.07)
    assert stats.rr.item() == 0.0
    assert stats.high_count + stats.low_count == len(alpha)


def test_scn_loss_is_ce_on_weighted_logits_plus_weighted_rr():
    logits = torch.tensor([[2.0, 0.0], [0.0, 1.0], [1.0, 1.0]])
    alpha = torch.tensor([0.9, 0.5, 0.2])
    y = torch.tensor([0, 1, 0])
    loss, ce, stats = scn_loss(logits, alpha, y, beta=0.7, margin_1=0.9, rr_weight=0.5)
    # CE by hand: -log softmax
    by_hand = (
        -math.log(math.exp(2) / (math.exp(2) + 1)) - math.log(math.e / (1 + math.e)) - math.log(0.5)
    ) / 3
    assert ce.item() == pytest.approx(by_hand, rel=1e-6)
    # groups: floor(2.1) = 2 -> high {0.9, 0.5} mean 0.7, low {0.2}; rr = 0.9 - 0.5 = 0.4
    assert stats.rr.item() == pytest.approx(0.4)
    assert loss.item() == pytest.approx(by_hand + 0.5 * 0.4, rel=1e-6)


def test_relabel_rule_by_hand():
    # softmax of log-probabilities gives the probabilities back
    probs = torch.tensor([[0.7, 0.2, 0.1], [0.45, 0.35, 0.2], [0.1, 0.1, 0.8], [0.3, 0.3, 0.4]])
    labels = torch.tensor([1, 1, 2, 0])
    new = relabel(probs.log(), labels, margin_2=0.2)
    # row 0: 0.7 - 0.2 = 0.5 > 0.2 -> 0; row 1: 0.1 -> keep; row 2: label is argmax; row 3: 0.1 keep
    assert new.tolist() == [0, 1, 2, 0]
    only_low = relabel(probs.log(), labels, 0.2, candidates=torch.tensor([False, True, True, True]))
    assert only_low.tolist() == [1, 1, 2, 0]
    assert relabel(probs.log(), labels, margin_2=0.05).tolist() == [0, 0, 2, 2]


def test_head_weights_logits_by_alpha_and_baseline_has_no_alpha():
    torch.manual_seed(0)
    head = SCNHead(4, 3, scn=True)
    f = torch.randn(5, 4)
    logits, alpha = head(f)
    expected_alpha = torch.sigmoid(f @ head.alpha.weight.T + head.alpha.bias).flatten()
    assert torch.allclose(alpha, expected_alpha)
    assert torch.allclose(logits, expected_alpha[:, None] * head.fc(f))
    plain, none = SCNHead(4, 3, scn=False)(f)
    assert none is None and plain.shape == (5, 3)
    # alpha > 0 never changes the argmax
    assert torch.equal(logits.argmax(1), head.fc(f).argmax(1))
    assert F.cross_entropy(logits, torch.zeros(5, dtype=torch.long)).isfinite()
