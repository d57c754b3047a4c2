"""Batched preprocessing on the training device: the original SCN recipe applied to a whole uint8
batch at once, with the same distribution as the per-sample transforms in `scn.data.transforms`.

The order of work keeps float passes few and small: flip and noise run on the stored (small) uint8
images, the resize runs on uint8, and scaling, normalisation and erasing are one float pass at the
output size.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torchvision.transforms.v2 import functional as F

ERASE_ATTEMPTS = (
    10  # as torchvision's RandomErasing: boxes that do not fit are redrawn, then skipped
)


@dataclass
class Boxes:
    """Per-sample erasing boxes (B,) each: whether to erase, top, left, height, width."""

    erase: torch.Tensor
    top: torch.Tensor
    left: torch.Tensor
    height: torch.Tensor
    width: torch.Tensor

    def slice(self, start: int, end: int) -> Boxes:
        """The boxes of rows start..end-1 (one process's share of a global batch)."""
        return Boxes(*(t[start:end] for t in (self.erase, self.top, self.left, self.height,
                                              self.width)))  # fmt: skip

    def mask(self, h: int, w: int) -> torch.Tensor:
        """(B, 1, H, W), True inside the erased boxes."""
        device = self.top.device
        rows = torch.arange(h, device=device).view(1, h)
        cols = torch.arange(w, device=device).view(1, w)
        top, left = self.top[:, None], self.left[:, None]
        in_rows = (rows >= top) & (rows < top + self.height[:, None]) & self.erase[:, None]
        in_cols = (cols >= left) & (cols < left + self.width[:, None])
        return (in_rows[:, :, None] & in_cols[:, None, :]).unsqueeze(1)

    def apply(self, x: torch.Tensor) -> torch.Tensor:
        """Zero the boxes in place. On CPU a slice per box touches only the box; on an accelerator
        one masked fill avoids a host sync and a launch per sample."""
        if x.device.type == "cpu":
            index = torch.arange(len(self.erase), device=self.erase.device)
            boxes = torch.stack([index, self.top, self.left, self.height, self.width], 1)
            for i, t, lf, bh, bw in boxes[self.erase].tolist():
                x[i, :, t : t + bh, lf : lf + bw] = 0.0
        else:
            x.masked_fill_(self.mask(x.shape[-2], x.shape[-1]), 0.0)
        return x


class BatchEval:
    """uint8 (B, 3, H, W) -> resized, scaled to [0, 1] and normalised float, like EvalTransform."""

    def __init__(
        self,
        size: int,
        mean: Sequence[float],
        std: Sequence[float],
        memory_format: torch.memory_format = torch.channels_last,
    ):
        self.size = int(size)
        std_t = torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1)
        mean_t = torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1)
        # (x / 255 - mean) / std == x * scale - shift; kept per device, so no batch waits on a copy
        self._consts = {torch.device("cpu"): (1.0 / (255.0 * std_t), -mean_t / std_t)}
        self.memory_format = memory_format

    def consts(self, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        """(scale, -shift) on `device`."""
        if device not in self._consts:
            self._consts[device] = tuple(t.to(device) for t in self._consts[torch.device("cpu")])
        return self._consts[device]

    def resize(self, x: torch.Tensor) -> torch.Tensor:
        if tuple(x.shape[-2:]) != (self.size, self.size):
            x = F.resize(x, [self.size, self.size], antialias=True)
        return x

    def normalize(self, x: torch.Tensor) -> torch.Tensor:
        """uint8 -> float in one conversion and one fused multiply-add: x * scale - shift."""
        scale, neg_shift = self.consts(x.device)
        out = x.to(torch.float32, memory_format=self.memory_format)
        return torch.addcmul(neg_shift, out, scale, out=out)

    def __call__(self, x: torch.Tensor, generator: torch.Generator | None = None,
                 part: tuple[int, int] | None = None) -> torch.Tensor:  # fmt: skip
        return self.normalize(self.resize(x))


class BatchTrain(BatchEval):
    """The original recipe per sample, drawn for the whole batch at once: with probability p ONE of
    {horizontal flip, Gaussian noise of variance `noise_var` truncated to uint8}; resize; normalise;
    RandomErasing (value 0, boxes drawn as torchvision draws them). All randomness comes from
    `generator`, which the trainer seeds per epoch, so runs and resumed runs repeat exactly."""

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
        memory_format: torch.memory_format = torch.channels_last,
    ):
        super().__init__(size, mean, std, memory_format)
        self.flip_or_noise_p = float(flip_or_noise_p)
        self.noise_std = math.sqrt(float(noise_var))
        self.erasing_p = float(erasing_p)
        self.erasing_scale = (float(erasing_scale[0]), float(erasing_scale[1]))
        self.log_ratio = (math.log(erasing_ratio[0]), math.log(erasing_ratio[1]))

    def flip_or_noise(
        self,
        x: torch.Tensor,
        g: torch.Generator | None,
        masked: bool | None = None,
        part: tuple[int, int] | None = None,
    ) -> torch.Tensor:
        """On the gathered (owned) uint8 batch. On CPU only the chosen samples are touched; on an
        accelerator (`masked`) the whole batch is computed and selected by mask: no host sync.
        `part` = (start, total): `x` is rows start.. of a batch of `total` (one process's share of a
        global batch); the random numbers of the whole batch are drawn and this share's applied."""
        b = x.shape[0]
        start, total = part or (0, b)
        mine = slice(start, start + b)
        u = torch.rand(2, total, device=x.device, generator=g)
        chosen = u[0] < self.flip_or_noise_p
        flip = chosen & (u[1] < 0.5)
        noise = chosen & (u[1] >= 0.5)
        if masked if masked is not None else x.device.type != "cpu":
            noisy = torch.randn((total, *x.shape[1:]), device=x.device, generator=g)[mine]
            noisy = noisy.mul_(self.noise_std).add_(x)
            noisy = noisy.clamp_(0, 255).to(torch.uint8)  # truncation, as np.clip().astype(uint8)
            x = torch.where(flip[mine].view(b, 1, 1, 1), x.flip(-1), x)
            return torch.where(noise[mine].view(b, 1, 1, 1), noisy, x)
        flip = flip[mine].nonzero().squeeze(1)
        noise_all = noise.nonzero().squeeze(1)  # the batch's noisy rows, in the draw's order
        if len(flip):
            x.index_copy_(0, flip, x.index_select(0, flip).flip(-1))
        if len(noise_all):
            draw = torch.randn((len(noise_all), *x.shape[1:]), generator=g)
            here = (noise_all >= start) & (noise_all < start + b)
            noise = noise_all[here] - start
            if len(noise):
                noisy = draw[here].mul_(self.noise_std).add_(x.index_select(0, noise))
                x.index_copy_(0, noise, noisy.clamp_(0, 255).to(torch.uint8))
        return x

    def erase_boxes(self, b: int, h: int, w: int, device, g: torch.Generator | None) -> Boxes:
        """Each sample's RandomErasing box, drawn as torchvision draws it: area share uniform in
        `erasing_scale`, log aspect uniform in log(`erasing_ratio`), side lengths rounded, up to 10
        attempts until the box fits, top-left uniform over the positions where it fits."""
        n = ERASE_ATTEMPTS
        u = torch.rand(5, b, n, device=device, generator=g, dtype=torch.float64)
        lo, hi = self.erasing_scale
        area = h * w * (lo + (hi - lo) * u[0])
        aspect = torch.exp(self.log_ratio[0] + (self.log_ratio[1] - self.log_ratio[0]) * u[1])
        bh = torch.sqrt(area * aspect).round()
        bw = torch.sqrt(area / aspect).round()
        fits = (bh < h) & (bw < w)
        first = fits.to(torch.uint8).argmax(dim=1, keepdim=True)  # first attempt that fits
        bh, bw = bh.gather(1, first).squeeze(1), bw.gather(1, first).squeeze(1)
        top = (u[2].gather(1, first).squeeze(1) * (h - bh + 1)).floor()
        left = (u[3].gather(1, first).squeeze(1) * (w - bw + 1)).floor()
        erase = (u[4, :, 0] < self.erasing_p) & fits.any(dim=1)
        return Boxes(erase, top.long(), left.long(), bh.long(), bw.long())

    def __call__(self, x: torch.Tensor, generator: torch.Generator | None = None,
                 part: tuple[int, int] | None = None) -> torch.Tensor:  # fmt: skip
        """`part` = (start, total): `x` is one process's share of a global batch of `total`."""
        start, total = part or (0, x.shape[0])
        if self.flip_or_noise_p > 0:
            x = self.flip_or_noise(x, generator, part=(start, total))
        out = self.normalize(self.resize(x))
        if self.erasing_p > 0:
            boxes = self.erase_boxes(total, self.size, self.size, out.device, generator)
            boxes.slice(start, start + out.shape[0]).apply(out)
        return out
