"""`python -m scn.features SOURCE INPUT --out DIR`: pooled backbone features for reuse elsewhere.

SOURCE is a checkpoint of this project, or raw backbone weights with `--backbone NAME`. INPUT is a
folder of images (searched recursively), a list file, or a RAF-DB-layout root with `--split` (then
labels are exported too). Writes one `.npy` per image mirroring the input tree, and `features.npz`
with features, alphas, logits, labels and paths.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

import numpy as np
from omegaconf import OmegaConf

from scn.cli import run_cli
from scn.data.datasets import load_dataset
from scn.data.labels import RAFDB_CLASS_NAMES, RAFDB_LABEL_FILE
from scn.errors import UserError
from scn.inference import find_images, finish_report, iter_batches, load_any

log = logging.getLogger(__name__)


def dataset_split(root: Path, split: str) -> tuple[list[Path], np.ndarray]:
    """Images and clean labels of one split of a RAF-DB-layout folder."""
    dcfg = OmegaConf.create(
        {"name": "rafdb", "root": str(root), "class_names": list(RAFDB_CLASS_NAMES), "label_file": None,
         "noise": {"rate": 0.0, "seed": 0}, "val_fraction": 0.0, "val_seed": 0}
    )  # fmt: skip
    data = load_dataset(dcfg, root)
    chosen = data.train if split == "train" else data.test
    return chosen.paths, chosen.clean_labels


def export(source: str, inputs: str, out: str, backbone: str | None = None, split: str | None = None,
           batch_size: int = 64, device: str = "auto") -> int:  # fmt: skip
    """Write the features; returns the number of images exported."""
    lm = load_any(source, backbone, device)
    root = Path(inputs).expanduser()
    if split:
        if not (root / RAFDB_LABEL_FILE).is_file():
            raise UserError(
                f"--split needs a RAF-DB-layout folder; {root / RAFDB_LABEL_FILE} is missing"
            )
        paths, labels = dataset_split(root, split)
        base = root
    else:
        paths, base = find_images(root)
        labels = np.full(len(paths), -1, dtype=np.int64)
    out_dir = Path(out)
    out_dir.mkdir(parents=True, exist_ok=True)
    skipped: list = []
    feats, alphas, logits, kept = [], [], [], []
    for batch in iter_batches(paths, lm.transform, batch_size, skipped):
        result = lm(batch.images)
        f = result.features.float().cpu().numpy()
        for j, path in enumerate(batch.paths):
            rel = path.relative_to(base) if path.is_relative_to(base) else Path(path.name)
            target = (out_dir / rel).with_suffix(".npy")
            target.parent.mkdir(parents=True, exist_ok=True)
            np.save(target, f[j])
        feats.append(f)
        alphas.append(
            result.alpha.cpu().numpy() if result.alpha is not None else np.full(len(f), np.nan)
        )
        logits.append(
            result.logits.float().cpu().numpy() if lm.class_names else np.zeros((len(f), 0))
        )
        kept += batch.indices
    finish_report(len(paths), skipped)
    np.savez(
        out_dir / "features.npz",
        features=np.concatenate(feats).astype(np.float32),
        alphas=np.concatenate(alphas).astype(np.float32),
        logits=np.concatenate(logits).astype(np.float32),
        labels=labels[kept],
        paths=np.array([str(paths[i]) for i in kept]),
        class_names=np.array(lm.class_names),
    )
    log.info("%d feature vectors of %d dims written to %s (%d skipped)",
             len(kept), feats[0].shape[1], out_dir, len(skipped))  # fmt: skip
    return len(kept)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m scn.features", description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )  # fmt: skip
    parser.add_argument(
        "source", help="a checkpoint of this project, or backbone weights (--backbone)"
    )
    parser.add_argument("inputs", help="a folder, a list file, or a RAF-DB root with --split")
    parser.add_argument("--out", required=True, help="output folder")
    parser.add_argument(
        "--backbone", help="architecture of raw weights, e.g. iresnet18 or resnet18"
    )
    parser.add_argument(
        "--split", choices=["train", "test"], help="export a RAF-DB split with labels"
    )
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--device", default="auto")
    args = parser.parse_args(argv)
    return run_cli(
        export,
        args.source,
        args.inputs,
        args.out,
        args.backbone,
        args.split,
        args.batch_size,
        args.device,
    )


if __name__ == "__main__":
    sys.exit(main())
