"""One optimisation step, composing the method's loss terms: CE (on SCN's weighted logits, or plain
logits for the baseline), SCN's rank regularisation, and RAN's region-biased loss."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from scn.engine.accel import Accel
from scn.engine.ran_loss import rb_term
from scn.engine.scn_loss import scn_loss


def train_step(forward, optimizer, accel: Accel, scaler, scn, x: torch.Tensor, y: torch.Tensor,
               ran=None):  # fmt: skip
    """One optimisation step: the model runs in the configured precision, the SCN loss in fp32.
    Returns (model output, loss, ce, RR stats or None); nothing here waits for the device."""
    accel.step_begin()
    with accel.autocast():
        out = forward(x)
    rr = None
    if scn.enabled:
        loss, ce, rr = scn_loss(out.logits, out.alpha, y, scn.beta, scn.margin_1, scn.rr_weight)
    else:
        loss = ce = F.cross_entropy(out.logits.float(), y)
    loss = loss + rb_term(out.mu, ran)  # RAN: rb_weight * region-biased loss; else 0
    optimizer.zero_grad(set_to_none=True)
    if scaler is not None:
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()
    else:
        loss.backward()
        optimizer.step()
    return out, loss, ce, rr
