"""The original recipe's augmentation and the eval path, checked by statistics and by hand."""

import torch
from PIL import Image

from scn.data.transforms import EvalTransform, TrainTransform

MEAN, STD = (0.5, 0.4, 0.3), (0.2, 0.25, 0.5)


def gradient_image(size=20):
    x = torch.arange(size, dtype=torch.uint8).repeat(size, 1) * 10  # left-to-right ramp
    return Image.fromarray(torch.stack([x, x, x], dim=-1).numpy())


def test_eval_transform_is_resize_scale_normalise():
    img = Image.new("RGB", (20, 20), (255, 102, 0))
    out = EvalTransform(8, MEAN, STD)(img)
    assert out.shape == (3, 8, 8)
    expected = torch.tensor([(1.0 - 0.5) / 0.2, (0.4 - 0.4) / 0.25, (0.0 - 0.3) / 0.5])
    assert torch.allclose(out[:, 0, 0], expected, atol=1e-5)


def test_flip_or_noise_chooses_one_with_the_recipe_probabilities():
    torch.manual_seed(0)
    tf = TrainTransform(20, MEAN, STD, erasing_p=0.0)
    img = gradient_image()
    plain = EvalTransform(20, MEAN, STD)(img)
    flipped = plain.flip(-1)
    counts = {"plain": 0, "flip": 0, "noise": 0}
    n = 2000
    for _ in range(n):
        out = tf(img)
        if torch.equal(out, plain):
            counts["plain"] += 1
        elif torch.equal(out, flipped):
            counts["flip"] += 1
        else:
            counts["noise"] += 1
            # variance-30 noise on 0..255 pixels: std 5.48 before scaling, truncated to uint8
            diff = (out - plain) * torch.tensor(STD)[:, None, None] * 255
            assert 3.5 < diff.std().item() < 7.0
    assert abs(counts["plain"] / n - 0.5) < 0.05
    assert abs(counts["flip"] / n - 0.25) < 0.04
    assert abs(counts["noise"] / n - 0.25) < 0.04


def test_random_erasing_zeroes_a_box_of_the_recipe_size_half_the_time():
    torch.manual_seed(1)
    tf = TrainTransform(40, (0.0, 0.0, 0.0), (1.0, 1.0, 1.0), flip_or_noise_p=0.0)
    img = Image.new("RGB", (40, 40), (200, 200, 200))
    areas = []
    for _ in range(1000):
        zero = (tf(img) == 0).all(dim=0)
        if zero.any():
            areas.append(zero.float().mean().item())
    assert abs(len(areas) / 1000 - 0.5) < 0.05
    assert min(areas) >= 0.015 and max(areas) <= 0.26  # scale (0.02, 0.25), rounded to pixels
