"""The method seam against hand-computed values: EAC's attention consistency, RUL's mixing and
add-up loss, the step's composition of weighted terms, SCN's low-group relabeling, RAN's whole
face as region 0, deterministic relabel writes, the legacy switches and config errors."""

from __future__ import annotations

import functools
import math

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from hydra.errors import ConfigCompositionException

from scn.engine.accel import Accel
from scn.engine.relabel import apply_relabels
from scn.engine.step import compose, train_step
from scn.errors import UserError
from scn.methods import build_method, method_name, upgrade_config
from scn.methods.base import ModelOutput, StepContext
from scn.methods.eac import EAC, CAMClassifier, class_activation_maps, consistency
from scn.methods.ran import RANModel, crop_regions
from scn.methods.rul import RUL, RULHead, RULModel, add_up_loss, mix
from scn.models.backbones import create_backbone
from scn.runtime.distributed import Dist
from tests.conftest import compose_cfg, tiny_args

CPU = Accel(torch.device("cpu"), "fp32", False, False, False)


@functools.lru_cache
def cfg_of(*overrides: str):
    """A composed config (cached: the methods only read it)."""
    return compose_cfg(tiny_args(*overrides))


def ctx_of(n: int, seed: int = 0, epoch: int = 1) -> StepContext:
    return StepContext(Dist(), n, epoch, seed, "cpu")


# ------------------------------------------------------------------------------------ EAC
class MaskedMap(nn.Module):
    """A backbone whose last feature map is its 2-channel 2x2 input times a learnable per-position
    mask (not mirror-symmetric, so a flipped image does not give a mirrored map); the pooled
    feature averages that map, as a ResNet's does."""

    num_features = 2

    def __init__(self):
        super().__init__()
        self.mask = nn.Parameter(torch.tensor([[2.0, 1.0], [1.0, 1.0]]))

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.mask

    def forward_head(self, fmap: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        return fmap.mean((2, 3))


# two images, channels x rows x columns
EAC_X = torch.tensor(
    [
        [[[1.0, 2.0], [3.0, 4.0]], [[1.0, 0.0], [0.0, 1.0]]],
        [[[1.0, 1.0], [1.0, 1.0]], [[0.0, 0.0], [0.0, 0.0]]],
    ]
)
EAC_W = torch.tensor([[1.0, 0.0], [1.0, -1.0]])  # class 0 = channel 0, class 1 = ch0 - ch1


def eac_setup(lam: float = 0.5):
    method = EAC(cfg_of("method=eac", "method.erasing_p=0.0", f"method.lam={lam}"))
    model = CAMClassifier(MaskedMap(), 2).train()
    with torch.no_grad():
        model.head.fc.weight.copy_(EAC_W)
        model.head.fc.bias.zero_()
    return method, model


def test_eac_consistency_by_hand():
    # image 0: map F = x * mask: ch0 [[2,2],[3,4]], ch1 [[2,0],[0,1]]
    #   CAM0 = ch0 = [[2,2],[3,4]], CAM1 = ch0 - ch1 = [[0,2],[3,3]]
    #   mirror image: ch0 [[2,1],[4,3]], ch1 [[0,1],[1,0]] -> map ch0 [[4,1],[4,3]], ch1 [[0,1],[1,0]]
    #   its CAMs [[4,1],[4,3]] and [[4,0],[3,3]], flipped back [[1,4],[3,4]] and [[0,4],[3,3]]
    #   differences [[1,-2],[0,0]] and [[0,-2],[0,0]]: squares 1 + 4 + 4 = 9 over 8 entries
    # image 1: map ch0 = mask [[2,1],[1,1]], ch1 = 0; both CAMs = mask, flipped back [[1,2],[1,1]]
    #   differences [[1,-1],[0,0]] twice: squares 4 over 8 entries
    # (flipped back along the rows instead: 35/8 and 4/8; not flipped back: 27/8 and 0)
    method, model = eac_setup(lam=0.5)
    ctx = ctx_of(2)
    x = method.train_inputs(EAC_X, ctx)
    assert torch.equal(x, torch.cat([EAC_X, EAC_X.flip(-1)]))  # no erasing at erasing_p=0
    out = model(x)
    cam = out.extra["cam"]
    torch.testing.assert_close(consistency(cam[:2], cam[2:]), torch.tensor([9 / 8, 4 / 8]))
    y = torch.tensor([0, 1])
    terms = method.terms(out, y, ctx)
    assert set(terms) == {"ce", "cam"} and terms["cam"].weight == 0.5
    assert terms["cam"].value.item() == pytest.approx(13 / 8)
    # CE on the originals only: pooled features (11/4, 3/4) and (5/4, 0); logits W @ pooled
    # = (11/4, 2) and (5/4, 5/4)
    ce = math.log(1 + math.exp(2 - 11 / 4)) + math.log(2)
    assert terms["ce"].value.item() == pytest.approx(ce, rel=1e-6)
    objective, loss_sum, sums = compose(terms, 2, 1, 2)
    # train/loss = loss_sum / n = mean CE + lam * mean consistency
    assert (loss_sum / 2).item() == pytest.approx((ce + 0.5 * 13 / 8) / 2, rel=1e-6)
    assert objective.item() == pytest.approx((ce + 0.5 * 13 / 8) / 2, rel=1e-6)
    assert sums["cam"].item() == pytest.approx(13 / 8)


def test_eac_consistency_trains_the_features_not_the_classifier():
    method, model = eac_setup()
    ctx = ctx_of(2)
    out = model(method.train_inputs(EAC_X, ctx))
    method.terms(out, torch.tensor([0, 1]), ctx)["cam"].value.backward()
    assert model.head.fc.weight.grad is None or not model.head.fc.weight.grad.any()
    # an independent reference: the maps of the image and of its mirror with W held constant
    mask = torch.tensor([[2.0, 1.0], [1.0, 1.0]], requires_grad=True)

    def cams(images):
        return torch.einsum("bchw,kc->bkhw", images * mask, EAC_W)

    ref = ((cams(EAC_X) - cams(EAC_X.flip(-1)).flip(-1)) ** 2).mean((1, 2, 3)).sum()
    assert ref.item() == pytest.approx(13 / 8)
    ref.backward()
    assert model.backbone.mask.grad.abs().sum() > 0
    torch.testing.assert_close(model.backbone.mask.grad, mask.grad)


def test_eac_erases_only_the_mirror_image_with_the_steps_generator():
    method = EAC(cfg_of("method=eac", "method.erasing_p=1.0"))
    x = torch.rand(4, 3, 16, 16) + 1.0  # no zero pixels: erased ones are exactly 0
    a = method.train_inputs(x, ctx_of(4, seed=7))
    assert torch.equal(a[:4], x)  # the originals are untouched
    erased = a[4:] == 0
    assert erased.any() and torch.equal(a[4:][~erased], x.flip(-1)[~erased])
    torch.manual_seed(123)  # the global generator plays no part
    assert torch.equal(method.train_inputs(x, ctx_of(4, seed=7)), a)
    assert not torch.equal(method.train_inputs(x, ctx_of(4, seed=8)), a)


def test_class_activation_maps_detach_the_classifier():
    fmap = torch.rand(1, 2, 2, 2, requires_grad=True)
    w = torch.rand(3, 2, requires_grad=True)
    cam = class_activation_maps(fmap, w)
    assert cam.shape == (1, 3, 2, 2)
    torch.testing.assert_close(cam[0, 2], w[2, 0] * fmap[0, 0] + w[2, 1] * fmap[0, 1])
    cam.sum().backward()
    assert w.grad is None and fmap.grad is not None


@pytest.mark.parametrize("backbone", ["iresnet18"])
def test_eac_refuses_a_backbone_without_a_spatial_map_by_name(backbone):
    cfg = cfg_of("method=eac", f"backbone={backbone}")
    method = build_method(cfg)
    with pytest.raises(UserError, match=rf"method=eac .*\({backbone}\)"):
        method.build_model(create_backbone(cfg.backbone), 7)
    ok = cfg_of("method=eac")  # resnet10t: its pooled feature averages its last map
    assert isinstance(build_method(ok).build_model(create_backbone(ok.backbone), 7), CAMClassifier)


# ------------------------------------------------------------------------------------ RUL
# u = mean(exp(logvar)) = 1, 2, 3
RUL_MU = torch.tensor([[1.0, 0.0], [0.0, 1.0], [2.0, 2.0]])
RUL_LOGVAR = torch.tensor([[0.0, 0.0], [0.0, math.log(3)], [math.log(2), math.log(4)]])
RUL_Y = torch.tensor([0, 1, 2])
RUL_W = torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.0, 0.0]])  # logits = (z_0, z_1, 0)


def lse(*v: float) -> float:
    return math.log(sum(math.exp(a) for a in v))


def rul_reference(perm: list[int]) -> float:
    """The add-up loss in plain Python: u, w1, z, then half CE to each label of the pair."""
    u = [sum(math.exp(v) for v in row) / len(row) for row in RUL_LOGVAR.tolist()]
    mu, y = RUL_MU.tolist(), RUL_Y.tolist()
    total = 0.0
    for i, j in enumerate(perm):
        w1 = u[i] / (u[i] + u[j])
        z = [w1 * a + (1 - w1) * b for a, b in zip(mu[i], mu[j], strict=True)]
        logits = [z[0], z[1], 0.0]
        total += 0.5 * (lse(*logits) - logits[y[i]]) + 0.5 * (lse(*logits) - logits[y[j]])
    return total


def test_rul_mixing_and_add_up_loss_by_hand():
    perm = torch.tensor([1, 2, 0])
    z, w1 = mix(RUL_MU, RUL_LOGVAR, perm)
    # u = (1, 2, 3), u[perm] = (2, 3, 1): w1 = 1/3, 2/5, 3/4
    torch.testing.assert_close(w1, torch.tensor([1 / 3, 2 / 5, 3 / 4]))
    # z0 = 1/3 (1,0) + 2/3 (0,1); z1 = 2/5 (0,1) + 3/5 (2,2); z2 = 3/4 (2,2) + 1/4 (1,0)
    expected_z = torch.tensor([[1 / 3, 2 / 3], [6 / 5, 8 / 5], [7 / 4, 3 / 2]])
    torch.testing.assert_close(z, expected_z)
    logits = F.pad(expected_z, (0, 1))  # fc = RUL_W: (z_0, z_1, 0)
    # labels y = (0, 1, 2), y[perm] = (1, 2, 0)
    lses = [lse(*row) for row in logits.tolist()]
    by_hand = 0.5 * (2 * sum(lses) - (1 / 3 + 2 / 3 + 8 / 5 + 0 + 0 + 7 / 4))
    assert add_up_loss(logits, RUL_Y, perm).item() == pytest.approx(by_hand, rel=1e-6)
    assert rul_reference([1, 2, 0]) == pytest.approx(by_hand, rel=1e-6)


class TinyMap(nn.Module):
    """A backbone with a 4-channel last feature map."""

    num_features = 4

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x)


def test_rul_pairs_come_from_the_steps_seeded_generator():
    method = RUL(cfg_of("method=rul", "method.dim=2", "method.grid=1"))
    method.build_model(TinyMap(), 3)
    with torch.no_grad():
        method.fc.weight.copy_(RUL_W)
        method.fc.bias.zero_()
    out = ModelOutput(RUL_MU @ RUL_W.T, None, RUL_MU, None, {"logvar": RUL_LOGVAR})

    def loss(seed: int) -> float:
        return method.terms(out, RUL_Y, ctx_of(3, seed=seed))["ce"].value.item()

    def perm_of(seed: int) -> list[int]:
        return torch.randperm(3, generator=torch.Generator().manual_seed(seed)).tolist()

    seeds = {}  # a seed for each distinct permutation
    for s in range(50):
        seeds.setdefault(tuple(perm_of(s)), s)
    assert len(seeds) >= 2
    for perm, s in seeds.items():
        assert loss(s) == pytest.approx(rul_reference(list(perm)), rel=1e-6), perm
    s = seeds[(1, 2, 0)] if (1, 2, 0) in seeds else next(iter(seeds.values()))
    torch.manual_seed(99)  # the global generator plays no part: the same step, the same pairs
    first = loss(s)
    torch.manual_seed(5)
    assert loss(s) == first
    other = next(v for k, v in seeds.items() if rul_reference(list(k)) != pytest.approx(first))
    assert loss(other) != pytest.approx(first)


def test_rul_test_time_logits_classify_the_mean_feature_only():
    torch.manual_seed(0)
    model = RULModel(TinyMap(), RULHead(4, 5, grid=2, dim=3, dropout=0.4)).eval()
    x = torch.rand(3, 3, 8, 8)
    with torch.no_grad():
        out = model(x)
        torch.testing.assert_close(out.logits, model.head.fc(out.features))
        model.head.logvar[3].weight.mul_(10.0)  # another log-variance...
        model.head.logvar[3].bias.add_(1.0)
        again = model(x)
    assert not torch.allclose(again.extra["logvar"], out.extra["logvar"])
    assert torch.equal(again.logits, out.logits)  # ...the same prediction
    u = out.extra["logvar"].exp().mean(1)
    torch.testing.assert_close(RUL(cfg_of("method=rul")).noise_score(out), u)


def test_rul_classifier_learning_rate_multiplier():
    method = RUL(cfg_of("method=rul", "method.fc_lr_mult=10"))
    model = method.build_model(TinyMap(), 3)
    groups = method.param_groups(model, 0.01)
    fc = {id(p) for p in model.head.fc.parameters()}
    assert [len(g["params"]) for g in groups] == [len(list(model.parameters())) - 2, 2]
    assert {id(p) for p in groups[1]["params"]} == fc and groups[1]["lr"] == pytest.approx(0.1)
    assert "lr" not in groups[0]  # the optimiser's own lr


# -------------------------------------------------------------------------- the composed step
class Toy(nn.Module):
    """A model whose output is its parameters: logits = alpha * z, alpha = sigmoid(a),
    mu = sigmoid(m) (regions, the whole face first)."""

    def __init__(self, z, a, m):
        super().__init__()
        self.z, self.a, self.m = (nn.Parameter(t.clone()) for t in (z, a, m))

    def forward(self, x: torch.Tensor) -> ModelOutput:
        alpha = torch.sigmoid(self.a)
        return ModelOutput(alpha[:, None] * self.z, alpha, None, torch.sigmoid(self.m))


def test_step_objective_is_ce_plus_weighted_rr_plus_weighted_rb():
    b = 6
    torch.manual_seed(0)
    z, a, m = torch.randn(b, 3) * 2, torch.randn(b), torch.randn(b, 3)
    y = torch.tensor([0, 1, 2, 0, 1, 2])
    rr_w, rb_w, margin, margin_1, beta = 0.3, 2.0, 0.6, 0.9, 0.5
    cfg = cfg_of("method=scn_ran", f"scn.rr_weight={rr_w}", f"ran.rb_weight={rb_w}",
                 f"ran.margin={margin}", f"scn.margin_1={margin_1}", f"scn.beta={beta}")  # fmt: skip
    method = build_method(cfg)
    model = Toy(z, a, m)
    ctx = ctx_of(b)
    r = train_step(model, torch.optim.SGD(model.parameters(), lr=0.0), CPU, None, method,
                   torch.zeros(b, 1), y, ctx)  # fmt: skip

    # the reference, written out: mean CE + rr_w * RR + rb_w * mean RB hinge
    zr, ar, mr = (t.clone().requires_grad_() for t in (z, a, m))
    alpha = torch.sigmoid(ar)
    ce = F.cross_entropy(alpha[:, None] * zr, y)
    order = torch.argsort(alpha.detach(), descending=True)
    high, low = order[: int(beta * b)], order[int(beta * b) :]
    rr = torch.clamp(margin_1 - (alpha[high].mean() - alpha[low].mean()), min=0)
    mu = torch.sigmoid(mr)
    hinge = torch.clamp(margin - (mu[:, 1:].max(1).values - mu[:, 0]), min=0)
    rb = hinge.mean()
    assert rr.item() > 0 and (hinge > 0).sum() >= 2  # every term is active
    ref = ce + rr_w * rr + rb_w * rb
    ref.backward()

    assert (r.loss_sum / b).item() == pytest.approx(ref.item(), rel=1e-5)  # train/loss
    assert (r.term_sums["ce"] / b).item() == pytest.approx(ce.item(), rel=1e-5)
    assert (r.term_sums["rr"] / b).item() == pytest.approx(rr.item(), rel=1e-5)
    assert (r.term_sums["rb"] / b).item() == pytest.approx(rb.item(), rel=1e-5)
    for p, g in zip((model.z, model.a, model.m), (zr.grad, ar.grad, mr.grad), strict=True):
        torch.testing.assert_close(p.grad, g, rtol=1e-5, atol=1e-7)


def test_compose_under_data_parallel_scales_to_the_single_process_objective():
    # a per-sample term holding this process's sum (2 of a global 8) and a global batch term:
    # world x objective is what each process backpropagates; DDP averages over the 2 processes
    from scn.methods.base import Term

    per, batch = torch.tensor(3.0), torch.tensor(0.5)
    objective, loss_sum, sums = compose(
        {"ce": Term(per), "rr": Term(batch, 0.4, per_sample=False)}, 2, 2, 8
    )
    assert objective.item() == pytest.approx(2 * (3.0 / 8 + 0.4 * 0.5))
    assert loss_sum.item() == pytest.approx(3.0 + 0.4 * 0.5 * 2)
    assert sums["rr"].item() == pytest.approx(1.0)  # counted for this process's 2 samples
    local, _, _ = compose({"rr": Term(batch, 0.4, per_sample=False, local=True)}, 2, 2, 8)
    assert local.item() == pytest.approx(0.4 * 0.5)  # the mean of the processes' own values


# ---------------------------------------------------------------------------- SCN's relabel
# distinct alphas in no particular order; the three smallest are at 5, 1, 9 (B = 10) and at
# 5, 1, 3 (B = 8)
ALPHAS = [0.55, 0.12, 0.91, 0.33, 0.78, 0.05, 0.66, 0.47, 0.84, 0.29]


@pytest.mark.parametrize(("b", "low"), [(10, {1, 5, 9}), (8, {1, 3, 5})])
def test_relabel_scope_low_changes_only_the_bottom_b_minus_floor_beta_b(b, low):
    # beta 0.7: floor(7.0) = 7 high of 10, floor(5.6) = 5 high of 8 (ceil or round: 6)
    alpha = torch.tensor(ALPHAS[:b])
    logits = torch.tensor([[0.0, 5.0, 0.0]]).repeat(b, 1)  # every sample: class 1 by far
    y = torch.zeros(b, dtype=torch.long)
    out = ModelOutput(logits, alpha)
    for scope, may_change in (("low", low), ("all", set(range(b)))):
        method = build_method(cfg_of(f"scn.relabel_scope={scope}", "scn.beta=0.7",
                                     "scn.relabel_epoch=3", "scn.margin_2=0.2"))  # fmt: skip
        ctx = ctx_of(b, epoch=3)
        method.terms(out, y, ctx)
        new = method.relabel(out, y, ctx)
        assert {i for i in range(b) if new[i] == 1} == may_change, scope
        assert all(new[i] == 0 for i in range(b) if i not in may_change)
        early = ctx_of(b, epoch=2)  # relabeling starts at epoch relabel_epoch, counted from 1
        method.terms(out, y, early)
        assert method.relabel(out, y, early) is None


# --------------------------------------------------------------------- RAN's region order
class MeanFeature(nn.Module):
    """A backbone whose one feature is the region's mean pixel: it tells the regions apart."""

    num_features = 1

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.mean((1, 2, 3)).unsqueeze(1)


@pytest.mark.parametrize(("region_size", "face_size"), [(None, None), (4, None), (None, 4)])
def test_the_whole_face_is_region_0(region_size, face_size):
    ramp = torch.arange(64, dtype=torch.float32).view(8, 8) / 63  # mean 0.5, rising to the right
    x = torch.stack([ramp.expand(3, 8, 8), 0.5 * ramp.expand(3, 8, 8)])
    crops = [[0.0, 0.0, 0.75, 0.75], [0.25, 0.0, 1.0, 0.75]]
    model = RANModel(MeanFeature(), 2, crops, region_size, face_size=face_size)
    with torch.no_grad():
        model.head.attention.self_att.weight.fill_(1.0)
        model.head.attention.self_att.bias.zero_()
        out = model(x)
    # mu_i = sigmoid(mean pixel of region i); the whole face's mean is the image's, 0.5 and 0.25
    # (an average-pooled face keeps its mean), the crops' are not
    torch.testing.assert_close(out.mu[:, 0], torch.sigmoid(torch.tensor([0.5, 0.25])))
    assert (out.mu[:, 1:] - out.mu[:, :1]).abs().min() > 1e-3
    # the first region cut is the input (same size) or the input resized (half size: 2x2 means)
    regions = crop_regions(x, model.boxes, 8)
    torch.testing.assert_close(regions[:: model.num_regions], x)
    half = crop_regions(x, model.boxes, 4)
    torch.testing.assert_close(half[:: model.num_regions], F.avg_pool2d(x, 2))


# --------------------------------------------------------------------------- relabel writes
def test_apply_relabels_a_repeated_position_takes_its_last_occurrence():
    labels = torch.tensor([0, 1, 2, 3, 4, 5])
    idx = torch.tensor([2, 4, 2, 1, 4, 2])
    new = torch.tensor([5, 6, 0, 3, 1, 4])
    reference = labels.clone()
    for i, n in zip(idx.tolist(), new.tolist(), strict=True):  # one write after the other
        reference[i] = n
    old, written, kept = apply_relabels(labels, idx, new)
    assert labels.tolist() == reference.tolist() == [0, 3, 4, 3, 1, 5]
    assert old.tolist() == [2, 4, 2, 1, 4, 2]  # the labels before the batch
    # every occurrence writes its position's final label: any write order gives the same tensor
    assert written.tolist() == [4, 1, 4, 3, 1, 4]
    assert kept.tolist() == [False, False, False, True, True, True]
    for order in ([5, 4, 3, 2, 1, 0], [3, 0, 5, 1, 4, 2]):
        shuffled = torch.tensor([0, 1, 2, 3, 4, 5])
        shuffled[idx[order]] = written[order]
        assert torch.equal(shuffled, labels)
    # without repeats: a plain assignment
    plain = torch.tensor([0, 1, 2, 3])
    apply_relabels(plain, torch.tensor([3, 0]), torch.tensor([1, 2]))
    assert plain.tolist() == [2, 1, 2, 1]


# ---------------------------------------------------------------------- legacy and config
@pytest.mark.parametrize(
    ("scn_on", "ran_on", "name"),
    [
        (True, False, "scn"),
        (False, False, "baseline"),
        (False, True, "ran"),
        (True, True, "scn_ran"),
    ],
)
def test_a_stored_config_with_the_old_switches_names_its_method(scn_on, ran_on, name):
    old = {"scn": {"enabled": scn_on, "beta": 0.7},
           "ran": {"enabled": ran_on, "region_size": 56, "margin": 0.02}}  # fmt: skip
    new = upgrade_config(old)
    assert new["method"] == {"name": name} and method_name(old) == name
    assert "enabled" not in new["scn"] and "enabled" not in new["ran"]
    assert new["scn"]["beta"] == 0.7 and new["ran"]["face_size"] == 56
    assert old["scn"]["enabled"] is scn_on  # the stored dict is left as it was
    assert upgrade_config(new) == new


def test_the_old_switches_on_the_command_line_name_the_method_option():
    with pytest.raises(UserError, match="method=baseline"):
        build_method(cfg_of("scn.enabled=false"))
    with pytest.raises(UserError, match="method=scn_ran"):
        build_method(cfg_of("ran.enabled=true"))
    assert build_method(cfg_of("method=baseline")).name == "baseline"


def test_method_typos_fail_at_compose_time():
    with pytest.raises(ConfigCompositionException, match=r"(?s)method/eacc.*baseline.*rul"):
        cfg_of("method=eacc")
    with pytest.raises(ConfigCompositionException, match="method.lamm"):
        cfg_of("method=eac", "method.lamm=1")
    with pytest.raises(ConfigCompositionException, match="method.lam"):
        cfg_of("method=eac", "method.lam=big")
    with pytest.raises(ConfigCompositionException, match="method.dim"):
        cfg_of("method=scn", "method.dim=3")  # another method's key
