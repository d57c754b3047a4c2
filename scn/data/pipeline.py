"""How batches reach the model: `cached` (decode once, augment whole batches on the training device,
the default) or `files` (the per-sample reference: decode and augment every image in DataLoader
workers). Both yield (images, positions) with the images already on the device, normalised and in the
model's memory format; positions index the split, so the trainer looks labels up itself."""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch
from omegaconf import DictConfig
from torch.utils.data import DataLoader

from scn.data.augment import BatchEval, BatchTrain
from scn.data.cache import ImageStore, decoded_images
from scn.data.datasets import DataBundle, FaceImages, Split
from scn.data.sampler import epoch_order
from scn.data.transforms import EvalTransform, TrainTransform
from scn.errors import UserError
from scn.runtime.distributed import SINGLE, Dist

log = logging.getLogger(__name__)

PIPELINES = ("cached", "files")


class CachedBatches:
    """Batches gathered from an ImageStore and preprocessed where the images are held: for a
    GPU-resident store, the order, the gather and the augmentation all stay on the GPU (no host
    sync); positions are yielded on the store's device."""

    def __init__(
        self,
        store: ImageStore,
        rows: np.ndarray,
        transform: BatchEval,
        batch_size: int,
        order: torch.Tensor | None = None,
        seed: int = 0,
        drop_last: bool = False,
        dist: Dist = SINGLE,
    ):
        """`order`: positions to visit (a training epoch's); None = every position in file order.
        With `dist`, `batch_size` and `order` are global and this process yields its share of
        each batch, augmented with the random numbers of the whole batch."""
        self.dist = dist
        self.store = store
        self.rows = torch.as_tensor(rows, dtype=torch.long)
        self.transform = transform
        self.batch_size = int(batch_size)
        self.order = order
        self.seed = int(seed)
        self.drop_last = drop_last

    def __len__(self) -> int:
        n = len(self.rows) if self.order is None else len(self.order)
        return n // self.batch_size if self.drop_last else -(-n // self.batch_size)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        order = torch.arange(len(self.rows)) if self.order is None else self.order
        aug_gen = torch.Generator(device=self.store.device).manual_seed(self.seed)
        on_device = self.store.images is not None
        if on_device:  # one copy per epoch, then every index stays on the device
            order = order.to(self.store.device)
            rows = self.rows.to(self.store.device)
        else:
            rows = self.rows
        batches = list(order.split(self.batch_size))
        if self.drop_last and batches and len(batches[-1]) < self.batch_size:
            batches.pop()
        # this process's share of each batch: (start, batch size); the whole batch on one process
        parts = [(self.dist.shard(len(b))[0], len(b)) for b in batches]
        batches = [b[slice(*self.dist.shard(len(b)))] for b in batches]
        # host-resident images bound for a GPU: gather the next batch while this one computes
        prefetch = self.store.pin and len(batches) > 1
        pool = ThreadPoolExecutor(1) if prefetch else None
        try:
            pending = pool.submit(self.store.gather, rows[batches[0]]) if pool else None
            for k, idx in enumerate(batches):
                part = parts[k]
                if pool is not None:
                    x = pending.result()
                    if k + 1 < len(batches):
                        pending = pool.submit(self.store.gather, rows[batches[k + 1]])
                else:
                    x = self.store.gather(rows[idx])
                yield self.transform(x, aug_gen, part), idx
        finally:
            if pool is not None:
                pool.shutdown(wait=True, cancel_futures=True)


class FilesBatches:
    """The per-sample reference pipeline: a DataLoader over image files, moved to the device."""

    def __init__(
        self,
        split: Split,
        transform: EvalTransform,
        batch_size: int,
        device: torch.device,
        memory_format: torch.memory_format,
        num_workers: int,
        order: torch.Tensor | None = None,
        seed: int = 0,
        drop_last: bool = False,
    ):
        self.seed = int(seed)
        self.shuffle = order is not None
        self.device = device
        self.memory_format = memory_format
        self.loader = DataLoader(
            FaceImages(split.images, transform),
            batch_size=batch_size,
            sampler=None if order is None else order.tolist(),
            generator=torch.Generator().manual_seed(self.seed),
            num_workers=num_workers,
            pin_memory=device.type == "cuda",
            drop_last=drop_last,
            persistent_workers=False,
        )

    def __len__(self) -> int:
        return len(self.loader)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        if self.shuffle:  # training: augmentation runs in this process when num_workers=0
            torch.manual_seed(self.seed)
        for x, idx in self.loader:
            yield x.to(self.device, non_blocking=True, memory_format=self.memory_format), idx


class Pipeline:
    """Makes the batches of every split of one dataset for one device and preprocessing."""

    def __init__(
        self,
        kind: str,
        data: DataBundle,
        size: int,
        mean: tuple[float, ...],
        std: tuple[float, ...],
        augmentation: dict,
        device: torch.device,
        memory_format: torch.memory_format = torch.contiguous_format,
        num_workers: int = 0,
        cache_dir: Path | None = None,
        cache_size: int | None = None,
        progress: bool = False,
        sampler: str = "uniform",
        dist: Dist = SINGLE,
    ):
        """`dist`: under torchrun, training batches are global and each process takes its share;
        evaluation splits the images between the processes."""
        if kind not in PIPELINES:
            raise UserError(f"dataset.pipeline={kind!r}; use one of {PIPELINES}")
        self.kind = kind
        self.data = data
        self.device = device
        self.memory_format = memory_format
        self.num_workers = int(num_workers)
        self.cache_dir = cache_dir
        self.cache_size = cache_size
        self.progress = progress
        self.sampler = sampler
        self.dist = dist
        self.stores: dict[str, ImageStore] = {}
        if kind == "cached":
            self.train_tf = BatchTrain(size, mean, std, **augmentation, memory_format=memory_format)
            self.eval_tf = BatchEval(size, mean, std, memory_format)
        else:
            self.train_tf = TrainTransform(size, mean, std, **augmentation)
            self.eval_tf = EvalTransform(size, mean, std)

    def store(self, source: str) -> ImageStore:
        """The decoded images of one dataset split, loaded (and decoded if new) on first use."""
        if source not in self.stores:
            if self.cache_dir is None:
                raise UserError("the cached pipeline needs paths.cache_dir")
            images = decoded_images(
                self.cache_dir, source, self.data.files[source], self.cache_size, self.progress
            )
            self.stores[source] = ImageStore(images, self.device)
            on_gpu = self.stores[source].images is not None
            log.info(
                "%s images held %s", source, f"on {self.device}" if on_gpu else "memory-mapped"
            )
        return self.stores[source]

    def batches(
        self, split: Split, train: bool, batch_size: int, seed: int = 0
    ) -> CachedBatches | FilesBatches:
        """Training batches are ordered by the sampler and augmented from `seed`; eval batches keep
        file order. `global_sizes` on the result: each batch's size over all processes."""
        d = self.dist
        # a trailing training batch of one sample breaks BatchNorm on tiny feature maps, and under
        # torchrun every process needs a sample: drop a tail shorter than that
        drop_last = train and 0 < len(split) % batch_size < max(2, d.world)
        tf = self.train_tf if train else self.eval_tf
        order = epoch_order(split.labels, seed, self.sampler) if train else None
        if not train and d.enabled:  # evaluation: each process a contiguous part of the split
            order = torch.arange(*d.shard(len(split)))
        n = len(split) if order is None else len(order)
        sizes = [batch_size] * (n // batch_size) + ([n % batch_size] if n % batch_size else [])
        if drop_last:
            sizes.pop()
        if self.kind == "cached":
            batches = CachedBatches(self.store(split.source), split.rows, tf, batch_size, order,
                                    seed, drop_last, d if train else SINGLE)  # fmt: skip
            batches.global_sizes = sizes
            return batches
        if train and d.enabled:  # this process's share of each global batch, in order
            if drop_last:
                order = order[: len(order) - len(order) % batch_size]
            order = torch.cat([b[slice(*d.shard(len(b)))] for b in order.split(batch_size)])
            batch_size, drop_last = batch_size // d.world, False
        batches = FilesBatches(
            split, tf, batch_size, self.device, self.memory_format, self.num_workers, order, seed,
            drop_last,
        )  # fmt: skip
        batches.global_sizes = sizes
        return batches


def resolve_workers(setting: int | str, device: torch.device) -> int:
    """`auto`: none on CPU (a worker competes with the model for the cores), up to 8 on CUDA."""
    if setting == "auto":
        return 0 if device.type == "cpu" else min(8, os.cpu_count() or 1)
    return int(setting)


def build_pipeline(
    dcfg: DictConfig,
    data: DataBundle,
    pre,
    device: torch.device,
    *,
    memory_format: torch.memory_format = torch.contiguous_format,
    cache_dir: Path | None = None,
    progress: bool = False,
    dist: Dist = SINGLE,
) -> Pipeline:
    """The dataset config's pipeline at the model's preprocessing `pre` (input_size, mean, std)."""
    return Pipeline(
        dcfg.pipeline,
        data,
        pre.input_size,
        pre.mean,
        pre.std,
        dict(dcfg.augmentation),
        device,
        memory_format=memory_format,
        num_workers=resolve_workers(dcfg.num_workers, device),
        cache_dir=cache_dir,
        cache_size=dcfg.cache_size,
        progress=progress,
        sampler=dcfg.sampler,
        dist=dist,
    )
