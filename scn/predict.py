"""`python -m scn.predict CHECKPOINT IMAGES [--out predictions.csv]`: expression, class probabilities,
importance weight alpha (and RAN's region weights mu_0..mu_K) for every image of a file, folder or
list file, or of one split of a dataset (`IMAGES` its root, `--dataset NAME --split test`)."""

from __future__ import annotations

import argparse
import csv
import logging
import sys
from pathlib import Path

import torch

from scn.cli import run_cli
from scn.inference import dataset_images, find_images, finish_report, iter_batches, load_model

log = logging.getLogger(__name__)


def predict(
    checkpoint: str,
    source: str,
    out: str,
    batch_size: int = 64,
    device: str = "auto",
    dataset: str | None = None,
    split: str = "test",
) -> int:
    """Write the CSV; returns the number of images predicted. Rows name files by their path, and
    dataset images as the dataset names them (the names relabels.csv and label CSVs use)."""
    lm = load_model(checkpoint, device)
    if dataset:
        images, _ = dataset_images(dataset, source, split)
        label = images.names
    else:
        images = find_images(source)
        label = [images.describe(i) for i in range(len(images))]
    skipped: list = []
    rows = []
    for batch in iter_batches(images, lm.transform, batch_size, skipped):
        result = lm(batch.images)
        probs = torch.softmax(result.logits.float(), dim=1).cpu()
        alphas = result.alpha.cpu() if result.alpha is not None else None
        mus = result.mu.float().cpu() if result.mu is not None else None
        for j, i in enumerate(batch.indices):
            row = [label[i], lm.class_names[int(probs[j].argmax())]]
            row += [f"{p:.6f}" for p in probs[j].tolist()]
            row.append(f"{alphas[j].item():.6f}" if alphas is not None else "")
            row += [f"{m:.6f}" for m in mus[j].tolist()] if mus is not None else []
            rows.append(row)
    finish_report(len(images), skipped)
    out_path = Path(out)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    with out_path.open("w", newline="") as f:
        writer = csv.writer(f)
        regions = getattr(lm.model, "num_regions", 0)  # RAN: one column per region weight
        writer.writerow(["path", "prediction", *(f"p_{n}" for n in lm.class_names), "alpha",
                         *(f"mu_{i}" for i in range(regions))])  # fmt: skip
        writer.writerows(rows)
    log.info("%d predictions written to %s (%d skipped)", len(rows), out_path, len(skipped))
    return len(rows)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m scn.predict", description=__doc__)
    parser.add_argument("checkpoint", help="best.pt or last.pt written by a training run")
    parser.add_argument(
        "images", help="an image, a folder (searched recursively), a list file, or a dataset root"
    )
    parser.add_argument("--dataset", help="read IMAGES as this dataset (rafdb, ferplus, ...)")
    parser.add_argument(
        "--split", default="test", choices=["train", "val", "test"], help="with --dataset"
    )
    parser.add_argument(
        "--out", default="predictions.csv", help="CSV to write (default: %(default)s)"
    )
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    args = parser.parse_args(argv)
    return run_cli(
        predict,
        args.checkpoint,
        args.images,
        args.out,
        args.batch_size,
        args.device,
        args.dataset,
        args.split,
    )


if __name__ == "__main__":
    sys.exit(main())
