"""Distillation of a frozen face-identity teacher into any backbone (task=pretrain
pretrain.teacher=facenet_casia): the student's embedding layer learns to point where the teacher's
L2-normalised embedding of the same image points (loss 1 - cosine). The teacher's embeddings are
computed once per image (scn.engine.pretrain.DistillTrainer) and looked up by dataset position, so a step costs
the student's forward and backward only."""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from scn.errors import UserError
from scn.methods.base import Method, ModelOutput, StepContext, Term
from scn.models.margin import embedding_layer


class EmbeddingModel(nn.Module):
    """`backbone.*` (what backbone.pth holds) and `embedding.*`; forward gives the embedding."""

    def __init__(self, backbone: nn.Module, dim: int):
        super().__init__()
        self.backbone = backbone
        self.embedding, self.dim = embedding_layer(backbone, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.embedding(self.backbone(x))


def cosine_distance(student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
    """Per sample 1 - cos(student, teacher), `teacher` already L2-normalised."""
    return 1 - (F.normalize(student.float(), dim=1) * teacher).sum(1)


class Distill(Method):
    """Cosine distillation towards `targets` (N, D): the teacher's embeddings of the train images,
    indexed by dataset position."""

    name = "distill"
    acc_key = "train/retrieval_acc"  # share of the batch whose nearest teacher embedding is its own
    label_audit = False  # the images' labels are not used

    def __init__(self, cfg, targets: torch.Tensor):
        super().__init__(cfg)
        self.targets = targets

    def build_model(self, backbone: nn.Module, num_classes: int) -> nn.Module:
        model = EmbeddingModel(backbone, self.targets.shape[1])
        if model.dim != self.targets.shape[1]:
            raise UserError(
                f"backbone {self.cfg.backbone.name} ends in a {model.dim}-d embedding of its own; "
                f"the teacher's has {self.targets.shape[1]}: distil into another backbone"
            )
        return model

    def terms(self, out: torch.Tensor, y: torch.Tensor, ctx: StepContext) -> dict[str, Term]:
        teacher = self.targets[ctx.idx]
        ctx.stats["sim"] = F.normalize(out.detach().float(), dim=1) @ teacher.T
        return {"distance": Term(cosine_distance(out, teacher).sum())}

    def term_names(self) -> tuple[str, ...]:
        return ("distance",)

    def train_output(self, out: torch.Tensor, y: torch.Tensor, ctx: StepContext) -> ModelOutput:
        return ModelOutput(ctx.stats["sim"], None, out.detach())

    def correct(self, out: ModelOutput, y: torch.Tensor, ctx: StepContext) -> torch.Tensor:
        sim = ctx.stats["sim"]
        return (sim.argmax(1) == torch.arange(len(sim), device=sim.device)).sum()
