"""`python -m scn.features SOURCE INPUT --out DIR`: pooled backbone features for reuse elsewhere.

SOURCE is a checkpoint of this project, or raw backbone weights with `--backbone NAME`. INPUT is a
folder of images (searched recursively), a list file, or a dataset root with `--split` (and
`--dataset NAME`, default rafdb; then labels are exported too). Writes one `.npy` per image named
after the image (its path under INPUT, or its dataset name), and `features.npz` with features,
alphas, logits, labels, paths and names. For RAN models the features are the
representation P and `region_weights` (N, K+1) holds the region weights, the whole face first.
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path

import numpy as np

from scn.cli import add_dataset_options, add_model_options, run_tool, tool_parser
from scn.inference import dataset_images, find_images, finish_report, iter_batches, load_any
from scn.io import make_output_dir

log = logging.getLogger(__name__)


def export(source: str, inputs: str, out: str, backbone: str | None = None, split: str | None = None,
           batch_size: int = 64, device: str = "auto", dataset: str = "rafdb") -> int:  # fmt: skip
    """Write the features; returns the number of images exported."""
    out_dir = make_output_dir(out)  # before any work
    lm = load_any(source, backbone, device)
    root = Path(inputs).expanduser()
    if split:
        images, labels = dataset_images(dataset, root, split)
    else:
        images = find_images(root)
        labels = np.full(len(images), -1, dtype=np.int64)
    skipped: list = []
    feats, alphas, logits, mus, kept = [], [], [], [], []
    for batch in iter_batches(images, lm.transform, batch_size, skipped):
        result = lm(batch.images)
        f = result.features.float().cpu().numpy()
        for j, i in enumerate(batch.indices):
            target = (out_dir / images.names[i]).with_suffix(".npy")
            target.parent.mkdir(parents=True, exist_ok=True)
            np.save(target, f[j])
        feats.append(f)
        alphas.append(
            result.alpha.cpu().numpy() if result.alpha is not None else np.full(len(f), np.nan)
        )
        logits.append(
            result.logits.float().cpu().numpy() if lm.class_names else np.zeros((len(f), 0))
        )
        if result.mu is not None:  # RAN: the region weights, whole face first
            mus.append(result.mu.float().cpu().numpy())
        kept += batch.indices
    finish_report(len(images), skipped)
    extra = {"region_weights": np.concatenate(mus).astype(np.float32)} if mus else {}
    np.savez(
        out_dir / "features.npz",
        features=np.concatenate(feats).astype(np.float32),
        alphas=np.concatenate(alphas).astype(np.float32),
        logits=np.concatenate(logits).astype(np.float32),
        labels=labels[kept],
        paths=np.array([images.describe(i) for i in kept]),
        names=np.array([images.names[i] for i in kept]),
        class_names=np.array(lm.class_names),
        **extra,
    )
    log.info("%d feature vectors of %d dims written to %s (%d skipped)",
             len(kept), feats[0].shape[1], out_dir, len(skipped))  # fmt: skip
    return len(kept)


def main(argv: list[str] | None = None) -> int:
    parser = tool_parser("features", __doc__)
    parser.add_argument(
        "source", help="a checkpoint of this project, or backbone weights (--backbone)"
    )
    parser.add_argument("inputs", help="a folder, a list file, or a dataset root with --split")
    parser.add_argument("--out", required=True, help="output folder")
    parser.add_argument(
        "--backbone", help="architecture of raw weights, e.g. iresnet18 or resnet18"
    )
    add_dataset_options(parser, dataset="rafdb", what="INPUTS (with --split, labels exported too)")
    add_model_options(parser)
    return run_tool(parser, argv, lambda a: export(
        a.source, a.inputs, a.out, a.backbone, a.split, a.batch_size, a.device, a.dataset
    ))  # fmt: skip


if __name__ == "__main__":
    sys.exit(main())
