"""Face-identity pretraining as a method (task=pretrain): an embedding layer after the pooled
feature and a margin classifier over identities (ArcFace, CosFace or normalised softmax; the
heads and the memory-lean loss live in scn.models.margin). The training logits carry the margin;
after the step the loop reads them without it, so its accuracy is the plain identity prediction."""

from __future__ import annotations

import torch
import torch.nn as nn

from scn.methods.base import Method, ModelOutput, StepContext, Term
from scn.models.margin import DEFAULT_MARGIN, PretrainModel, logits_cross_entropy


def margin_of(pcfg) -> float:
    """pretrain.margin, or the loss's usual one when null (0.5 ArcFace, 0.35 CosFace)."""
    loss = getattr(pcfg.loss, "value", pcfg.loss)
    return float(pcfg.margin) if pcfg.margin is not None else DEFAULT_MARGIN[loss]


class IdentityMargin(Method):
    """Margin-softmax identity classification (hyper-parameters in the `pretrain` group)."""

    name = "identity"
    acc_key = "train/id_acc"  # argmax of s * cos: no margin at the label
    label_audit = False  # identity labels are taken as given

    def build_model(self, backbone: nn.Module, num_classes: int) -> nn.Module:
        p = self.cfg.pretrain
        loss = getattr(p.loss, "value", p.loss)  # the schema's enum, or a resumed run's string
        model = PretrainModel(backbone, num_classes, loss, p.scale, margin_of(p), p.embedding_dim)
        self.head = model.head
        return model

    def terms(self, out: torch.Tensor, y: torch.Tensor, ctx: StepContext) -> dict[str, Term]:
        """`out` is the embedding; cosines, margin and loss in fp32, the B x C logits built once."""
        logits, plain = self.head.logits_and_target(out.float(), y)
        ctx.stats["logits"], ctx.stats["plain"] = logits, plain
        return {"ce": Term(logits_cross_entropy(logits, y) * len(y))}

    def train_output(self, out, y: torch.Tensor, ctx: StepContext) -> ModelOutput:
        # after backward (the loss saved the logits): put the plain target cosines back, in place
        shown = self.head.without_margin(ctx.stats["logits"].detach(), y, ctx.stats["plain"])
        return ModelOutput(shown)
