"""`python -m scn.predict CHECKPOINT IMAGES [--out predictions.csv]`: expression, class probabilities,
importance weight alpha (and RAN's region weights mu_0..mu_K) for every image of a file, folder or
list file, or of one split of a dataset (`IMAGES` its root, `--dataset NAME --split test`).

With `--detect`, IMAGES may be raw photos, a folder of them or videos: every face is found, aligned
like the training data and classified, one row per face (see scn.faces.pipeline). The model may be
a checkpoint or a file written by `python -m scn.export` (probabilities only)."""

from __future__ import annotations

import argparse
import csv
import logging
import sys
from pathlib import Path

import torch

from scn.cli import add_dataset_options, add_model_options, run_tool, tool_parser
from scn.errors import UserError
from scn.export import ExportedModel, exported_format, load_exported
from scn.faces.align import DEFAULT_TEMPLATE, TEMPLATES
from scn.faces.detect import DEFAULT_MIN_SCORE, DEFAULT_UPSAMPLE
from scn.faces.pipeline import DetectSettings, FacePredictor, find_media, recorded_template
from scn.inference import (
    LoadedModel,
    dataset_images,
    find_images,
    finish_report,
    iter_batches,
    load_model,
)
from scn.io import check_output_file
from scn.runtime import resolve_device

log = logging.getLogger(__name__)


def predict(
    checkpoint: str,
    source: str,
    out: str,
    batch_size: int = 64,
    device: str = "auto",
    dataset: str | None = None,
    split: str = "test",
    detect: DetectSettings | None = None,
) -> int:
    """Write the CSV; returns the number of images predicted. Rows name files by their path, and
    dataset images as the dataset names them (the names relabels.csv and label CSVs use). With
    `detect`, the rows are the faces found in photos and video frames (returns the rows written)."""
    out_path = check_output_file(out)  # before any work
    lm = load_predictor(checkpoint, device)
    has_alpha = isinstance(lm, LoadedModel)  # alpha and region weights come from checkpoints
    if detect is not None:
        if dataset:
            raise UserError("--detect reads photos and videos; it does not combine with --dataset")
        return predict_faces(lm, source, out_path, detect, batch_size)
    if dataset:
        images, _ = dataset_images(dataset, source, split)
        label = images.names
    else:
        images = find_images(source)
        label = [images.describe(i) for i in range(len(images))]
    skipped: list = []
    rows = []
    for batch in iter_batches(images, lm.transform, batch_size, skipped):
        probs, alphas, mus = classify(lm, batch.images)
        for j, i in enumerate(batch.indices):
            row = [label[i], lm.class_names[int(probs[j].argmax())]]
            row += [f"{p:.6f}" for p in probs[j].tolist()]
            if has_alpha:
                row.append(f"{alphas[j].item():.6f}" if alphas is not None else "")
            row += [f"{m:.6f}" for m in mus[j].tolist()] if mus is not None else []
            rows.append(row)
    finish_report(len(images), skipped)
    with out_path.open("w", newline="") as f:
        writer = csv.writer(f)
        regions = getattr(lm.model, "num_regions", 0)  # RAN: one column per region weight
        writer.writerow(["path", "prediction", *(f"p_{n}" for n in lm.class_names),
                         *(["alpha"] if has_alpha else []),
                         *(f"mu_{i}" for i in range(regions))])  # fmt: skip
        writer.writerows(rows)
    log.info("%d predictions written to %s (%d skipped)", len(rows), out_path, len(skipped))
    return len(rows)


def load_predictor(path: str, device: str = "auto") -> LoadedModel | ExportedModel:
    """A training checkpoint, or a model file written by scn.export (told apart by content)."""
    if exported_format(path) is not None:
        return load_exported(path, str(resolve_device(device)))
    return load_model(path, device)


def classify(
    lm: LoadedModel | ExportedModel, images: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
    """Class probabilities (N, C), alpha (N,) or None, region weights (N, K+1) or None, on the CPU."""
    if isinstance(lm, ExportedModel):
        return lm.probabilities(images), None, None
    result = lm(images)
    probs = torch.softmax(result.logits.float(), dim=1).cpu()
    alphas = result.alpha.cpu() if result.alpha is not None else None
    mus = result.mu.float().cpu() if result.mu is not None else None
    return probs, alphas, mus


def predict_faces(
    lm: LoadedModel | ExportedModel,
    source: str,
    out: Path,
    settings: DetectSettings,
    batch_size: int = 64,
) -> int:
    """`--detect`: one row per face of the photos and videos under `source`."""
    media = find_media(source)
    regions = getattr(lm.model, "num_regions", 0)
    runner = FacePredictor(
        lambda x: classify(lm, x), lm.transform, lm.class_names, lm.preprocessing.input_size,
        settings, batch_size, isinstance(lm, LoadedModel), regions, recorded_template(lm),
    )  # fmt: skip
    return runner.run(media, out)


def main(argv: list[str] | None = None) -> int:
    parser = tool_parser("predict", __doc__)
    parser.add_argument("checkpoint", help="best.pt or last.pt written by a training run")
    parser.add_argument(
        "images", help="an image, a folder (searched recursively), a list file, or a dataset root"
    )
    parser.add_argument(
        "--out", default="predictions.csv", help="CSV to write (default: %(default)s)"
    )
    add_dataset_options(parser, split="test", what="IMAGES")
    add_model_options(parser)
    faces = parser.add_argument_group(
        'faces in photos and videos (--detect; needs the faces extra: pip install -e ".[faces]")'
    )
    faces.add_argument(
        "--detect",
        action="store_true",
        help="IMAGES are raw photos, videos or a folder of them: find, align and classify every "
        "face (one CSV row per face)",
    )
    faces.add_argument(
        "--template",
        choices=sorted(TEMPLATES),
        help="alignment template (default: the one the model's training data was aligned with "
        f"when scn.align recorded it, else {DEFAULT_TEMPLATE})",
    )
    faces.add_argument(
        "--align-size", type=int, help="side the faces are aligned at (default: the model's input)"
    )
    faces.add_argument("--frame-stride", type=int, default=1, help="videos: every N-th frame")
    faces.add_argument(
        "--min-score",
        type=float,
        default=DEFAULT_MIN_SCORE,
        help="detector confidence a face needs (default: %(default)s; dlib's own is 0.0)",
    )
    faces.add_argument(
        "--upsample",
        type=int,
        default=DEFAULT_UPSAMPLE,
        help="upsamplings before detection: 1 finds faces down to ~40 px, 0 is 4x faster "
        "(default: %(default)s)",
    )
    faces.add_argument(
        "--annotate", metavar="DIR", help="write the photos (and videos, as MP4) with faces drawn"
    )

    def call(args: argparse.Namespace) -> int:
        detect = None
        if args.detect:
            if args.frame_stride < 1:
                parser.error("--frame-stride must be at least 1")
            detect = DetectSettings(args.template, args.align_size, args.min_score, args.upsample,
                                    args.frame_stride, args.annotate)  # fmt: skip
        elif args.annotate or args.template or args.align_size or args.frame_stride != 1:
            parser.error("--annotate, --template, --align-size and --frame-stride need --detect")
        return predict(args.checkpoint, args.images, args.out, args.batch_size, args.device,
                       args.dataset, args.split, detect)  # fmt: skip

    return run_tool(parser, argv, call)


if __name__ == "__main__":
    sys.exit(main())
