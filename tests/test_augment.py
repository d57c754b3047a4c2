"""The batched augmentation against the per-sample reference transforms: same outputs where nothing
is random, the same distributions (flip and noise rates, noise strength, erased boxes) where it is."""

import math

import numpy as np
import pytest
import torch
from PIL import Image

from scn.data.augment import BatchEval, BatchTrain, Boxes
from scn.data.transforms import EvalTransform, TrainTransform

MEAN, STD = (0.5, 0.4, 0.3), (0.2, 0.25, 0.5)


def ks_statistic(a, b) -> float:
    """Two-sample Kolmogorov-Smirnov distance between empirical distributions."""
    a, b = np.sort(np.asarray(a)), np.sort(np.asarray(b))
    grid = np.concatenate([a, b])
    cdf_a = np.searchsorted(a, grid, side="right") / len(a)
    cdf_b = np.searchsorted(b, grid, side="right") / len(b)
    return float(np.abs(cdf_a - cdf_b).max())


def ks_critical(n: int, m: int, alpha: float = 1e-3) -> float:
    return math.sqrt(-0.5 * math.log(alpha / 2)) * math.sqrt((n + m) / (n * m))


def batch_of(img: np.ndarray, n: int) -> torch.Tensor:
    """n copies of an HWC uint8 image as the cache serves them: (n, 3, H, W), channels_last."""
    return torch.from_numpy(np.ascontiguousarray(np.broadcast_to(img, (n, *img.shape))))


def test_ks_helpers_tell_same_from_different_distributions():
    rng = np.random.default_rng(0)
    same = ks_statistic(rng.uniform(size=2000), rng.uniform(size=500))
    shifted = ks_statistic(rng.uniform(size=2000), rng.uniform(0.1, 1.1, size=500))
    assert same < ks_critical(2000, 500) < shifted


@pytest.mark.parametrize("size", [24, 40, 64])
def test_batched_eval_equals_the_per_image_path(size):
    """Down-, no- and up-scaling: the same uint8 resize and normalisation, to float rounding."""
    g = torch.Generator().manual_seed(0)
    imgs = torch.randint(0, 256, (6, 40, 40, 3), dtype=torch.uint8, generator=g)
    out = BatchEval(size, MEAN, STD)(imgs.permute(0, 3, 1, 2))
    ref = torch.stack([EvalTransform(size, MEAN, STD)(Image.fromarray(i.numpy())) for i in imgs])
    assert out.shape == (6, 3, size, size) and out.dtype == torch.float32
    assert out.is_contiguous(memory_format=torch.channels_last)
    assert (out - ref).abs().max().item() < 1e-5


def close(outputs: torch.Tensor, image: torch.Tensor) -> torch.Tensor:
    """Per sample: equal to `image` up to float rounding (the two paths order the ops apart)."""
    return (outputs - image).abs().flatten(1).amax(1) < 1e-4


def classify(outputs: torch.Tensor, plain: torch.Tensor) -> dict[str, float]:
    same = close(outputs, plain)
    flip = close(outputs, plain.flip(-1))
    n = len(outputs)
    return {
        "plain": same.sum().item() / n,
        "flip": flip.sum().item() / n,
        "noise": (~same & ~flip).sum().item() / n,
    }


@pytest.mark.parametrize("masked", [False, True], ids=["cpu-subset", "accelerator-masked"])
def test_flip_or_noise_rates_match_the_reference(masked):
    ramp = np.tile((np.arange(20, dtype=np.uint8) * 10)[None, :, None], (20, 1, 3))
    plain = EvalTransform(20, MEAN, STD)(Image.fromarray(ramp))
    n = 4000
    tf = BatchTrain(20, MEAN, STD, erasing_p=0.0)
    x = tf.flip_or_noise(batch_of(ramp, n).permute(0, 3, 1, 2), torch.Generator().manual_seed(0),
                         masked)  # fmt: skip
    batched = tf.normalize(x)
    torch.manual_seed(0)
    tf = TrainTransform(20, MEAN, STD, erasing_p=0.0)
    reference = torch.stack([tf(Image.fromarray(ramp)) for _ in range(1500)])
    got, ref = classify(batched, plain), classify(reference, plain)
    for key, p in (("plain", 0.5), ("flip", 0.25), ("noise", 0.25)):
        assert abs(got[key] - p) < 5 * math.sqrt(p * (1 - p) / n), (key, got)
        assert abs(ref[key] - p) < 5 * math.sqrt(p * (1 - p) / 1500), (key, ref)


def pixel_residuals(outputs: torch.Tensor, plain: torch.Tensor) -> torch.Tensor:
    """Noisy samples' change in 0..255 pixel units."""
    scale = torch.tensor(STD).view(1, 3, 1, 1) * 255
    noisy = ~close(outputs, plain) & ~close(outputs, plain.flip(-1))
    return ((outputs[noisy] - plain) * scale).flatten()


@pytest.mark.parametrize("masked", [False, True], ids=["cpu-subset", "accelerator-masked"])
def test_noise_strength_and_truncation_match_the_reference(masked):
    """Variance 30 on a mid-grey image (no clipping), truncated to uint8: mean -0.5, sd ~5.5."""
    grey = np.full((16, 16, 3), 128, dtype=np.uint8)
    plain = EvalTransform(16, MEAN, STD)(Image.fromarray(grey))
    tf = BatchTrain(16, MEAN, STD, flip_or_noise_p=1.0, erasing_p=0.0)
    x = tf.flip_or_noise(batch_of(grey, 800).permute(0, 3, 1, 2), torch.Generator().manual_seed(1),
                         masked)  # fmt: skip
    batched = tf.normalize(x)
    torch.manual_seed(1)
    tf = TrainTransform(16, MEAN, STD, flip_or_noise_p=1.0, erasing_p=0.0)
    reference = torch.stack([tf(Image.fromarray(grey)) for _ in range(400)])
    got, ref = pixel_residuals(batched, plain), pixel_residuals(reference, plain)
    for r in (got, ref):
        # whole-valued changes: the noisy image is truncated to uint8
        assert torch.allclose(r, r.round(), atol=1e-3)
        assert abs(r.mean().item() + 0.5) < 0.05
        assert abs(r.std().item() - math.sqrt(30 + 1 / 12)) < 0.1  # + truncation's variance
    assert abs(got.std().item() - ref.std().item()) < 0.1


def erased_boxes(outputs: torch.Tensor) -> list[tuple[float, float, float]]:
    """(area share, height/width, box centre row share) of each sample's zero box."""
    boxes = []
    for out in outputs:
        zero = (out == 0).all(dim=0)
        if not zero.any():
            continue
        rows = zero.any(1).nonzero().squeeze(1)
        cols = zero.any(0).nonzero().squeeze(1)
        h, w = len(rows), len(cols)
        assert zero.sum().item() == h * w  # one solid rectangle
        assert rows[-1] - rows[0] + 1 == h and cols[-1] - cols[0] + 1 == w
        side = zero.shape[0]
        boxes.append((h * w / side**2, h / w, (rows[0].item() + h / 2) / side))
    return boxes


def test_erased_boxes_match_the_reference_distribution():
    """Erasing rate 0.5; area share, aspect and position drawn as torchvision's RandomErasing."""
    light = np.full((40, 40, 3), 200, dtype=np.uint8)
    zeros, ones = (0.0, 0.0, 0.0), (1.0, 1.0, 1.0)
    n = 3000
    batched = BatchTrain(40, zeros, ones, flip_or_noise_p=0.0)(
        batch_of(light, n).permute(0, 3, 1, 2), torch.Generator().manual_seed(2)
    )
    torch.manual_seed(2)
    tf = TrainTransform(40, zeros, ones, flip_or_noise_p=0.0)
    m = 1200
    reference = torch.stack([tf(Image.fromarray(light)) for _ in range(m)])
    got, ref = erased_boxes(batched), erased_boxes(reference)
    assert abs(len(got) / n - 0.5) < 5 * math.sqrt(0.25 / n)
    assert abs(len(ref) / m - 0.5) < 5 * math.sqrt(0.25 / m)
    areas = [a for a, _, _ in got]
    assert min(areas) >= 0.015 and max(areas) <= 0.26  # scale (0.02, 0.25), rounded to pixels
    for k in range(3):  # area share, aspect ratio, vertical position
        d = ks_statistic([b[k] for b in got], [b[k] for b in ref])
        assert d < ks_critical(len(got), len(ref)), (k, d)


def test_pixel_values_stay_in_the_normalised_range():
    g = torch.Generator().manual_seed(3)
    imgs = torch.randint(0, 256, (64, 30, 30, 3), dtype=torch.uint8, generator=g)
    out = BatchTrain(48, MEAN, STD)(imgs.permute(0, 3, 1, 2), torch.Generator().manual_seed(3))
    lo = torch.tensor([(0 - m) / s for m, s in zip(MEAN, STD, strict=True)]).view(1, 3, 1, 1)
    hi = torch.tensor([(1 - m) / s for m, s in zip(MEAN, STD, strict=True)]).view(1, 3, 1, 1)
    assert ((out >= lo - 1e-5) & (out <= hi + 1e-5)).all()
    assert out.is_contiguous(memory_format=torch.channels_last)


def test_same_generator_seed_gives_the_same_batch():
    imgs = torch.randint(0, 256, (16, 24, 24, 3), dtype=torch.uint8).permute(0, 3, 1, 2)
    tf = BatchTrain(32, MEAN, STD)
    a = tf(imgs.clone(), torch.Generator().manual_seed(7))
    b = tf(imgs.clone(), torch.Generator().manual_seed(7))
    c = tf(imgs.clone(), torch.Generator().manual_seed(8))
    assert torch.equal(a, b) and not torch.equal(a, c)


def test_box_mask_and_per_box_fill_agree():
    """The accelerator path (one masked fill) and the CPU path (a slice per box) erase alike."""
    boxes = Boxes(
        erase=torch.tensor([True, False, True]),
        top=torch.tensor([1, 0, 3]),
        left=torch.tensor([2, 1, 0]),
        height=torch.tensor([2, 3, 1]),
        width=torch.tensor([3, 2, 4]),
    )
    by_slice = boxes.apply(torch.ones(3, 2, 5, 6))
    by_mask = torch.ones(3, 2, 5, 6).masked_fill_(boxes.mask(5, 6), 0.0)
    assert torch.equal(by_slice, by_mask)
    assert by_slice[0, :, 1:3, 2:5].eq(0).all() and by_slice[0].eq(0).sum() == 2 * 6
    assert by_slice[1].eq(1).all()
    assert by_slice[2, :, 3, 0:4].eq(0).all() and by_slice[2].eq(0).sum() == 2 * 4
