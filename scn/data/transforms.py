"""Per-sample preprocessing: the original SCN train augmentation and the plain eval path."""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from PIL import Image
from torchvision.transforms import v2
from torchvision.transforms.v2 import functional as F


def to_uint8_tensor(img: Image.Image) -> torch.Tensor:
    """RGB PIL image -> uint8 tensor (3, H, W)."""
    return F.pil_to_tensor(img)


class EvalTransform:
    """Resize to the model's input size, scale to [0, 1], normalise with the backbone's statistics."""

    def __init__(self, size: int, mean: Sequence[float], std: Sequence[float]):
        self.size = int(size)
        self.mean = list(mean)
        self.std = list(std)

    def finish(self, x: torch.Tensor) -> torch.Tensor:
        if tuple(x.shape[-2:]) != (self.size, self.size):
            x = F.resize(x, [self.size, self.size], antialias=True)
        return F.normalize(x.float().div_(255.0), self.mean, self.std)

    def __call__(self, img: Image.Image) -> torch.Tensor:
        return self.finish(to_uint8_tensor(img))


class TrainTransform(EvalTransform):
    """The original recipe: with probability p apply ONE of {horizontal flip, Gaussian noise}, then
    resize and normalise, then RandomErasing. Randomness comes from torch's RNG, which the trainer
    seeds per epoch (and DataLoader per worker), so runs and resumed runs repeat exactly.
    """

    def __init__(
        self,
        size: int,
        mean: Sequence[float],
        std: Sequence[float],
        flip_or_noise_p: float = 0.5,
        noise_var: float = 30.0,
        erasing_p: float = 0.5,
        erasing_scale: Sequence[float] = (0.02, 0.25),
        erasing_ratio: Sequence[float] = (0.3, 3.3),
    ):
        super().__init__(size, mean, std)
        self.flip_or_noise_p = float(flip_or_noise_p)
        self.noise_std = math.sqrt(float(noise_var))
        self.erase = v2.RandomErasing(
            p=erasing_p, scale=tuple(erasing_scale), ratio=tuple(erasing_ratio), value=0
        )

    def flip_or_noise(self, x: torch.Tensor) -> torch.Tensor:
        if torch.rand(()).item() >= self.flip_or_noise_p:
            return x
        if torch.rand(()).item() < 0.5:
            return x.flip(-1)
        noisy = x.float() + torch.randn(x.shape) * self.noise_std
        # truncate like the original's np.clip(...).astype(np.uint8)
        return noisy.clamp_(0, 255).to(torch.uint8)

    def __call__(self, img: Image.Image) -> torch.Tensor:
        return self.erase(self.finish(self.flip_or_noise(to_uint8_tensor(img))))
