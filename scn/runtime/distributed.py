"""Data-parallel glue for `torchrun`: the process group, which rank does what, and the few
collectives the loop needs. Everything else in the project sees a `Dist` and stays the same code on
one process (world 1: every collective is the identity) and on N.

One run on N processes means the same as on one: `trainer.batch_size` is the global batch, each rank
takes its slice of every global batch, metrics are global sums, relabels are exchanged after every
step so all ranks hold one label tensor, and only rank 0 writes files."""

from __future__ import annotations

import datetime
import logging
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist

from scn.errors import UserError

log = logging.getLogger(__name__)

# how long a rank waits in a collective for the others before failing (a dead peer usually ends
# the job sooner: torchrun stops every rank when one exits with an error)
COLLECTIVE_TIMEOUT = datetime.timedelta(minutes=int(os.environ.get("SCN_DIST_TIMEOUT_MIN", 30)))


def launched() -> bool:
    """Started by torchrun (or srun with its variables) with more than one process."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


@dataclass(frozen=True)
class Dist:
    """This process's place in the job; world 1 is a plain single-process run."""

    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def enabled(self) -> bool:
        return self.world > 1

    @property
    def main(self) -> bool:
        """The rank that writes files, logs to W&B and saves checkpoints."""
        return self.rank == 0

    def shard(self, n: int) -> tuple[int, int]:
        """[start, end) of this rank's slice of a global batch of `n` (slices differ by at most 1)."""
        base, extra = divmod(n, self.world)
        start = self.rank * base + min(self.rank, extra)
        return start, start + base + (self.rank < extra)

    def sizes(self, n: int) -> list[int]:
        """Every rank's slice length of a global batch of `n`."""
        base, extra = divmod(n, self.world)
        return [base + (r < extra) for r in range(self.world)]

    # ------------------------------------------------------------ collectives
    def all_reduce_(self, t: torch.Tensor, op: str = "sum") -> torch.Tensor:
        """In place: the sum (or max) over ranks."""
        if self.enabled:
            dist.all_reduce(t, op=dist.ReduceOp.MAX if op == "max" else dist.ReduceOp.SUM)
        return t

    def all_gather_cat(self, t: torch.Tensor, sizes: list[int] | None = None) -> torch.Tensor:
        """Concatenate every rank's `t` along dim 0, in rank order. `sizes`: each rank's length when
        they differ (known to all ranks, e.g. from `sizes()`); None = the same length everywhere."""
        if not self.enabled:
            return t
        sizes = sizes or [t.shape[0]] * self.world
        longest = max(sizes)
        padded = t.new_zeros((longest, *t.shape[1:]))
        padded[: t.shape[0]] = t
        parts = [torch.empty_like(padded) for _ in range(self.world)]
        dist.all_gather(parts, padded.contiguous())
        return torch.cat([p[:s] for p, s in zip(parts, sizes, strict=True)])

    def gather_objects(self, obj):
        """Every rank's picklable `obj`, in rank order (small things, once per epoch)."""
        if not self.enabled:
            return [obj]
        out = [None] * self.world
        dist.all_gather_object(out, obj)
        return out

    def broadcast_object(self, obj):
        """Rank 0's `obj` on every rank."""
        if not self.enabled:
            return obj
        box = [obj]
        dist.broadcast_object_list(box, src=0)
        return box[0]

    def any(self, flag: bool) -> bool:
        """True on every rank when it is true on any (a stop signal received by some ranks only).
        A CPU tensor, so on CUDA it goes over Gloo and the GPU queue is not drained."""
        if not self.enabled:
            return flag
        t = torch.tensor([int(flag)])
        dist.all_reduce(t, op=dist.ReduceOp.MAX)
        return bool(t.item())


class _GatherWithGrad(torch.autograd.Function):
    """All ranks' rows, with the gradient of the whole (rank-identical) objective flowing back to
    each rank's own rows only: the backward returns this rank's slice of its local gradient."""

    @staticmethod
    def forward(ctx, t: torch.Tensor, d: Dist, sizes: list[int]) -> torch.Tensor:
        ctx.start = sum(sizes[: d.rank])
        ctx.n = t.shape[0]
        return d.all_gather_cat(t.detach(), sizes)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        return grad[ctx.start : ctx.start + ctx.n], None, None


def gather_with_grad(t: torch.Tensor, d: Dist, global_n: int) -> torch.Tensor:
    """The global batch's rows of `t` (this rank holds its `shard`); gradients flow to own rows."""
    if not d.enabled:
        return t
    return _GatherWithGrad.apply(t, d, d.sizes(global_n))


SINGLE = Dist()  # a plain single-process run
_current = SINGLE


def current() -> Dist:
    """The process's Dist (world 1 unless `init()` joined a torchrun job)."""
    return _current


def init() -> Dist:
    """Join the torchrun job the environment describes (once per process): CUDA tensors go over
    NCCL, one GPU per local rank; CPU tensors over Gloo. A no-op without torchrun."""
    global _current
    if not launched() or _current.enabled:
        return _current
    rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    backend = "gloo"
    if torch.cuda.is_available():
        torch.cuda.set_device(local_rank % torch.cuda.device_count())
        backend = "cpu:gloo,cuda:nccl"
    if not dist.is_initialized():
        dist.init_process_group(backend, timeout=COLLECTIVE_TIMEOUT, **_attempt_store(rank, world))
    _current = Dist(rank, world, local_rank)
    return _current


def _attempt_store(rank: int, world: int) -> dict:
    """torchrun's elastic agent serves one store for the whole job (TORCHELASTIC_USE_AGENT_STORE)
    and torch >= 2.4 no longer prefixes the process group's keys per attempt: a worker group it
    restarts (--max-restarts) reads the dead group's Gloo/NCCL addresses, and its rendezvous fails
    or hangs (with torch 2.14.1 and Gloo, 3 restarts of 5 did). Namespaced by the attempt, as torch did
    before. TORCHELASTIC_RESTART_COUNT is exact on one node; across nodes it can differ after a
    membership change, so multi-node jobs that restart set TORCH_DISABLE_SHARE_RDZV_TCP_STORE=1
    for torchrun (a fresh store per attempt, no agent store: this returns nothing)."""
    if os.environ.get("TORCHELASTIC_USE_AGENT_STORE") != "True" or "MASTER_PORT" not in os.environ:
        return {}
    store = dist.TCPStore(os.environ.get("MASTER_ADDR", "localhost"),
                          int(os.environ["MASTER_PORT"]), is_master=False,
                          timeout=COLLECTIVE_TIMEOUT)  # fmt: skip
    attempt = os.environ.get("TORCHELASTIC_RESTART_COUNT", "0")
    return {"store": dist.PrefixStore(f"scn/attempt_{attempt}", store), "rank": rank,
            "world_size": world}  # fmt: skip


def close() -> None:
    global _current
    if dist.is_initialized():
        dist.destroy_process_group()
    _current = SINGLE


def device_for(setting: str, d: Dist) -> str:
    """Under torchrun each rank trains on its own GPU: `auto`/`cuda` become `cuda:<local rank>`."""
    if not d.enabled or not torch.cuda.is_available():
        return setting
    if setting in ("auto", "cuda"):
        return f"cuda:{d.local_rank % torch.cuda.device_count()}"
    return setting


def check_batch(batch_size: int, d: Dist) -> int:
    """The per-rank batch: trainer.batch_size is global, so it must divide by the process count."""
    if batch_size % d.world:
        raise UserError(
            f"trainer.batch_size={batch_size} is the global batch and must divide by the "
            f"{d.world} processes; use a multiple of {d.world}"
        )
    return batch_size // d.world


def parallel(
    model: torch.nn.Module, d: Dist, device: torch.device, sync_bn: bool | None
) -> torch.nn.Module:
    """The module the training step calls: DistributedDataParallel under torchrun (its gradients
    are the processes' average), the model itself otherwise. `model` keeps the state_dict keys.
    `sync_bn`: BatchNorm statistics over the global batch instead of each process's share."""
    if sync_bn and device.type != "cuda":
        raise UserError(
            "trainer.sync_bn=true needs CUDA: torch has no SyncBatchNorm on CPU. Set "
            "trainer.sync_bn=false (each process then normalises with its own share's statistics)"
        )
    if not d.enabled:
        return model
    if sync_bn:
        torch.nn.SyncBatchNorm.convert_sync_batchnorm(model)
    ids = [device.index] if device.type == "cuda" else None
    return torch.nn.parallel.DistributedDataParallel(model, device_ids=ids)
