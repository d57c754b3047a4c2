"""Choosing the device a run or a tool uses."""

from __future__ import annotations

import torch

from scn.errors import UserError


def resolve_device(name: str) -> torch.device:
    """`auto` picks CUDA when present; asking for CUDA without it is a clear error, not a fallback."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UserError(
            f"device {name!r} (trainer.device or --device) needs CUDA, which is not available; use cpu"
        )
    return device
