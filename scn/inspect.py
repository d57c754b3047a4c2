"""`python -m scn.inspect RUN_DIR`: see what a trained model found, as one self-contained page.

From a checkpoint of any run (SCN or not) and the run's dataset (or one given on the command line):
per class, the train images the method's own noise score ranks most and least suspect (SCN:
1 - alpha, RUL: its uncertainty; methods without a score: the loss of the label in use), the run's relabeled images with whether each
change fixed or broke the label, the most confident test mistakes with the confusion matrix, and
class activation maps over those mistakes. Writes `inspect.html` (every thumbnail embedded as a
base64 data URI, so the page opens alone) and one PNG grid per section.
"""

from __future__ import annotations

import base64
import csv
import html
import io
import logging
import sys
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageDraw

from scn.checkpoints import load_checkpoint
from scn.cli import add_dataset_options, add_model_options, run_tool, tool_parser
from scn.config import cache_dir
from scn.data.datasets import Split, dataset_config, load_dataset
from scn.errors import UserError
from scn.inference import LoadedModel, finish_report, iter_batches, load_model
from scn.io import make_output_dir
from scn.methods import build_method
from scn.models.backbones import feature_dim

log = logging.getLogger(__name__)

THUMB = 96  # thumbnail side in px, in the page and the PNG grids
CAPTION = 36  # caption band under each tile of a PNG grid (3 lines), px
GRID_COLUMNS = 14  # tiles per line of a PNG grid
MAX_RELABELS = 200  # relabel events shown (the first ones in relabels.csv order)


@dataclass
class Tile:
    image: Image.Image
    caption: str


@dataclass
class Section:
    """One part of the page: tiles in rows (a row per class for the per-class galleries)."""

    key: str  # the anchor in the page and the PNG grid's file name
    title: str
    note: str
    rows: list[tuple[str, list[Tile]]] = field(default_factory=list)

    @property
    def tiles(self) -> list[Tile]:
        return [t for _, row in self.rows for t in row]


@dataclass
class Scores:
    """One eval-mode pass over a split: per-image class probabilities and the method's noise score
    (`score_name`; None for methods without one) at the readable positions `pos`."""

    pos: np.ndarray
    probs: np.ndarray
    score: np.ndarray | None
    score_name: str | None = None


@torch.no_grad()
def score_split(lm: LoadedModel, split: Split, batch_size: int) -> Scores:
    skipped: list[tuple[str, str]] = []
    method = build_method(lm.config)
    pos, probs, values = [], [], []
    for batch in iter_batches(split.images, lm.transform, batch_size, skipped):
        out = lm(batch.images)
        pos += batch.indices
        probs.append(torch.softmax(out.logits.float(), 1).cpu())
        score = method.noise_score(out)
        if score is not None:
            values.append(score.float().cpu())
    finish_report(len(split), skipped)
    score = torch.cat(values).numpy() if values else None
    name = method.score_name if score is not None else None
    return Scores(np.array(pos, dtype=np.int64), torch.cat(probs).numpy(), score, name)


def class_activation_map(fmap: torch.Tensor, weight: torch.Tensor, cls: int) -> torch.Tensor:
    """CAM (Zhou et al. 2016): the final feature map (C, H, W) weighted by the classifier row of
    class `cls` (weight: (classes, C)), summed over channels -> (H, W). Valid where the classifier
    sees the feature map's global average (its bias and SCN's alpha only shift or scale the map)."""
    return torch.einsum("c,chw->hw", weight[cls].float(), fmap.float())


def cam_support(model: torch.nn.Module) -> str | None:
    """None when CAM applies to the model, else why not (shown on the page)."""
    if getattr(model, "num_regions", 0):
        return f"{type(model).__name__} pools regions, not one feature map"
    fc = getattr(model.head, "fc", None)
    if fc is None or fc.in_features != feature_dim(model.backbone):
        return f"{type(model).__name__}'s classifier does not see the pooled feature map"
    if not hasattr(model.backbone, "forward_features"):
        return "the backbone has no spatial feature map"
    return None


@torch.no_grad()
def feature_maps(model: torch.nn.Module, x: torch.Tensor) -> torch.Tensor | None:
    """The backbone's final feature map (B, C, H, W) when its pooled feature is that map's global
    average (ResNets and the like); None otherwise (VGG's hidden layer, IResNet's flattened 7x7)."""
    model.eval()
    fmap = model.backbone.forward_features(x)
    if fmap.ndim != 4 or fmap.shape[1] != model.head.fc.in_features:
        return None
    pooled = model.backbone(x)
    if not torch.allclose(fmap.float().mean((2, 3)), pooled.float(), atol=1e-4, rtol=1e-3):
        return None
    return fmap


def overlay(image: Image.Image, cam: torch.Tensor) -> Image.Image:
    """The map (positive part, scaled to its maximum) as a heat map blended over the image."""
    import matplotlib

    m = cam.clamp(min=0)
    m = m / m.max() if m.max() > 0 else m
    m = F.interpolate(m[None, None], size=image.size[::-1], mode="bilinear", align_corners=False)
    heat = matplotlib.colormaps["jet"](m[0, 0].numpy())[..., :3]
    heat_img = Image.fromarray((heat * 255).astype(np.uint8))
    return Image.blend(image.convert("RGB"), heat_img, 0.45)


def thumb(image: Image.Image) -> Image.Image:
    return image.convert("RGB").resize((THUMB, THUMB), Image.BILINEAR)


def png_bytes(image: Image.Image) -> bytes:
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return buf.getvalue()


def grid(section: Section) -> Image.Image:
    """The section as one PNG: a row per row of tiles, each captioned below."""
    rows = [
        row[i : i + GRID_COLUMNS]
        for _, row in section.rows
        for i in range(0, len(row), GRID_COLUMNS)
    ]
    rows = rows or [[]]
    cols = max(1, max(len(r) for r in rows))
    h = THUMB + CAPTION
    canvas = Image.new("RGB", (cols * THUMB, len(rows) * h), "white")
    draw = ImageDraw.Draw(canvas)
    for r, row in enumerate(rows):
        for c, tile in enumerate(row):
            canvas.paste(thumb(tile.image), (c * THUMB, r * h))
            for k, line in enumerate(tile.caption.split("\n")[:3]):
                draw.text((c * THUMB + 2, r * h + THUMB + k * 10), line[:18], fill="black")
    return canvas


def _name(names: list[str], i: int) -> str:
    return names[i] if 0 <= i < len(names) else str(i)


def gallery_sections(
    split: Split, labels: np.ndarray, clean: np.ndarray, scores: Scores, names: list[str], k: int
) -> list[Section]:
    """Per class of the label in use, the k most and the k least suspect train images: by the
    method's noise score (SCN: 1 - alpha), by the loss of the label in use without one."""
    p_label = scores.probs[np.arange(len(scores.pos)), labels[scores.pos]]
    loss = -np.log(np.clip(p_label, 1e-12, None))
    value, what = (scores.score, scores.score_name) if scores.score is not None else (loss, "loss")
    suspect = np.argsort(-value, kind="stable")  # the most suspect first
    low_title, high_title = f"highest {what}", f"lowest {what}"
    note = (
        "label = the label in use at this checkpoint; clean = the dataset's own label where it "
        f"differs. Ranked by {what} from one eval-mode pass over train."
    )
    low = Section("low", f"Per class: the {k} train images with the {low_title}", note)
    high = Section("high", f"Per class: the {k} train images with the {high_title}", note)
    for c, cname in enumerate(names):
        order = [j for j in suspect if labels[scores.pos[j]] == c]
        for section, picks in ((low, order[:k]), (high, order[::-1][:k])):
            tiles = []
            for j in picks:
                i = int(scores.pos[j])
                caption = f"{cname}\n{what} {value[j]:.3f}"
                if clean[i] != labels[i]:
                    caption += f"\nclean {_name(names, int(clean[i]))}"
                tiles.append(Tile(split.images.load(i), caption))
            section.rows.append((cname, tiles))
    return [low, high]


def relabel_section(run_dir: Path, split: Split) -> Section:
    """The run's relabel events (relabels.csv): old -> new label, epoch, and the verdict against
    the clean label: fixed (new = clean), broke (old = clean), or wrong -> wrong."""
    path = run_dir / "relabels.csv"
    section = Section("relabels", "Relabeled train images", "")
    if not path.is_file():
        section.note = f"no {path.name} in {run_dir} (runs without SCN relabeling write none)."
        return section
    with path.open(newline="") as f:
        events = list(csv.DictReader(f))
    where = {n: i for i, n in enumerate(split.names)}
    known = [e for e in events if e["sample"] in where]
    verdicts = {"fixed": 0, "broke": 0, "wrong -> wrong": 0}
    tiles = []
    for e in known:
        v = (
            "fixed"
            if e["new"] == e["clean"]
            else "broke"
            if e["old"] == e["clean"]
            else "wrong -> wrong"
        )
        verdicts[v] += 1
        if len(tiles) < MAX_RELABELS:
            caption = f"{e['old']} -> {e['new']}\nepoch {e['epoch']} {v}"
            tiles.append(Tile(split.images.load(where[e["sample"]]), caption))
    section.rows.append(("", tiles))
    missing = len(events) - len(known)
    section.note = (
        f"{len(events)} relabel events in {path.name}: {verdicts['fixed']} fixed a wrong label, "
        f"{verdicts['broke']} broke a right one, {verdicts['wrong -> wrong']} moved a wrong label "
        f"to another wrong one; showing the first {len(tiles)}."
        + (f" {missing} name images not in this train split." if missing else "")
    )
    return section


def mistake_sections(
    lm: LoadedModel, split: Split, scores: Scores, names: list[str], n: int, batch_size: int
) -> tuple[Section, Section, np.ndarray]:
    """The n most confident test mistakes, class activation maps over them, and the confusion."""
    labels = split.labels[scores.pos]
    pred = scores.probs.argmax(1)
    conf = scores.probs.max(1)
    cm = np.zeros((len(names), len(names)), dtype=np.int64)
    np.add.at(cm, (labels, pred), 1)
    wrong = np.flatnonzero(pred != labels)
    shown = wrong[np.argsort(-conf[wrong], kind="stable")][:n]
    images = [split.images.load(int(scores.pos[j])) for j in shown]
    mistakes = Section(
        "mistakes",
        "The most confident test mistakes",
        f"{len(wrong)} of {len(labels)} test images misclassified; the {len(shown)} with the "
        "highest predicted probability.",
    )
    tiles = [
        Tile(img, f"{names[labels[j]]} -> {names[pred[j]]}\np {conf[j]:.2f}")
        for img, j in zip(images, shown, strict=True)
    ]
    mistakes.rows.append(("", tiles))
    cams = Section("cam", "Class activation maps of those mistakes", "")
    why = cam_support(lm.model)
    maps: list[torch.Tensor] = []
    if why is None and len(images):
        tf = lm.transform
        for start in range(0, len(images), batch_size):
            x = torch.stack([tf(img) for img in images[start : start + batch_size]]).to(lm.device)
            fmap = feature_maps(lm.model, x)
            if fmap is None:
                why = "the backbone's pooled feature is not the average of a spatial feature map"
                break
            weight = lm.model.head.fc.weight.detach()
            for b, j in enumerate(shown[start : start + batch_size]):
                maps.append(class_activation_map(fmap[b], weight, int(pred[j])).cpu())
    if why is None:
        cams.note = (
            "The final feature map weighted by the classifier row of the predicted class "
            "(positive part, scaled to its maximum), over each image."
        )
        cams.rows.append(
            ("", [Tile(overlay(t.image, m), t.caption) for t, m in zip(tiles, maps, strict=True)])
        )
    else:
        cams.note = f"Not available for this model: {why}."
    return mistakes, cams, cm


def build_sections(
    run_dir: Path,
    ckpt: str = "best",
    per_class: int = 4,
    data: str | None = None,
    dataset: str | None = None,
    device: str = "auto",
    batch_size: int = 64,
) -> tuple[list[Section], np.ndarray, list[str], str]:
    """Every section of the page, the test confusion matrix, the class names and a header line."""
    path = run_dir / f"{ckpt}.pt"
    if not path.is_file():
        other = "last" if ckpt == "best" else "best"
        raise UserError(
            f"{path} not found; pass --ckpt {other} if the run kept that one "
            "(trainer.checkpoints=best_and_last keeps both)"
        )
    if per_class < 1:
        raise UserError(f"--per-class {per_class}: pass 1 or more images per class")
    state = load_checkpoint(path)
    lm = load_model(path, device, state)
    if data:
        name = dataset or state.get("choices", {}).get("dataset") or lm.config.dataset.name
        dcfg = dataset_config(name, data)
    else:
        if dataset:
            raise UserError("--dataset names the format of --data ROOT; pass --data too")
        dcfg = lm.config.dataset
    bundle = load_dataset(dcfg, cache_dir(lm.config))
    names = lm.class_names
    if len(bundle.class_names) != len(names):
        raise UserError(
            f"the dataset at {bundle.root} has {len(bundle.class_names)} classes but {path} "
            f"predicts {len(names)}; pass --data/--dataset of a dataset with the model's classes"
        )
    train = bundle.train
    labels = np.asarray(train.labels)
    if not data and len(state["labels"]) == len(train):
        labels = state["labels"].numpy()  # the labels in use when the checkpoint was written
    train_scores = score_split(lm, train, batch_size)
    sections = gallery_sections(train, labels, train.clean_labels, train_scores, names, per_class)
    sections.append(relabel_section(run_dir, train))
    test_scores = score_split(lm, bundle.test, batch_size)
    mistakes, cams, cm = mistake_sections(
        lm, bundle.test, test_scores, names, per_class * len(names), batch_size
    )
    sections += [mistakes, cams]
    header = (
        f"{path} (epoch {state['epoch']}, method {lm.config.method.name}, "
        f"{lm.config.backbone.name}) on {bundle.root}: {len(train)} train / {len(bundle.test)} "
        f"test images, {int((labels != train.clean_labels).sum())} train labels in use differ "
        "from the clean ones"
    )
    return sections, cm, names, header


def _img(data: bytes) -> str:
    return f'<img src="data:image/png;base64,{base64.b64encode(data).decode()}">'


def write_page(
    sections: list[Section], cm: np.ndarray, names: list[str], header: str, out: Path
) -> Path:
    """The PNG grids and the self-contained inspect.html."""
    from scn.tracking.figures import save_confusion_png

    out.mkdir(parents=True, exist_ok=True)
    buf = io.BytesIO()
    save_confusion_png(cm.tolist(), names, buf, "test confusion")
    (out / "confusion.png").write_bytes(buf.getvalue())
    parts = [f"<h1>scn.inspect</h1><p>{html.escape(header)}</p>"]
    for s in sections:
        if s.tiles:
            grid(s).save(out / f"{s.key}.png")
        parts.append(f'<section id="{s.key}"><h2>{html.escape(s.title)}</h2>')
        parts.append(f"<p>{html.escape(s.note)}</p>")
        for title, row in s.rows:
            if title:
                parts.append(f"<h3>{html.escape(title)}</h3>")
            parts.append("<div class='row'>")
            for t in row:
                caption = html.escape(t.caption).replace("\n", "<br>")
                img = _img(png_bytes(thumb(t.image)))
                parts.append(f"<figure>{img}<figcaption>{caption}</figcaption></figure>")
            parts.append("</div>")
        parts.append("</section>")
        if s.key == "mistakes":
            parts.append(
                '<section id="confusion"><h2>Test confusion</h2><p>Rows: true class; columns: '
                f"predicted.</p>{_img(buf.getvalue())}</section>"
            )
    page = out / "inspect.html"
    page.write_text(
        "<!doctype html><meta charset='utf-8'><title>scn inspect</title><style>"
        "body{font-family:sans-serif}figure{display:inline-block;margin:3px;font-size:11px;"
        "width:100px;vertical-align:top}img{image-rendering:pixelated}</style>"
        + "\n".join(parts)
        + "\n"
    )
    return page


def inspect_run(
    run_dir: Path,
    ckpt: str = "best",
    out: Path | None = None,
    per_class: int = 4,
    data: str | None = None,
    dataset: str | None = None,
    device: str = "auto",
) -> Path:
    """Build the sections and write the page; returns the path of inspect.html."""
    out = make_output_dir(out or run_dir / "inspect")  # before any work
    sections, cm, names, header = build_sections(run_dir, ckpt, per_class, data, dataset, device)
    page = write_page(sections, cm, names, header, out)
    log.info("%s written (%d images)", page, sum(len(s.tiles) for s in sections) + 1)
    return page


def wandb_galleries(run_dir: Path, ckpt: str = "best", per_class: int = 4) -> dict:
    """logger.log_images: the page's sections for W&B, each as one grid image
    (`inspect/<section>`) and every thumbnail in one table (`inspect/images`)."""
    import wandb

    sections = build_sections(run_dir, ckpt, per_class)[0]
    table = wandb.Table(columns=["section", "row", "image", "caption"])
    media: dict = {}
    for s in sections:
        if s.tiles:
            media[f"inspect/{s.key}"] = wandb.Image(grid(s), caption=f"{s.title}. {s.note}")
        for title, row in s.rows:
            for t in row:
                table.add_data(s.key, title, wandb.Image(thumb(t.image)), t.caption)
    media["inspect/images"] = table
    return media


def main(argv: list[str] | None = None) -> int:
    parser = tool_parser("inspect", __doc__)
    parser.add_argument("run_dir", help="a run's output folder (holds best.pt / last.pt)")
    parser.add_argument("--ckpt", choices=("best", "last"), default="best")
    parser.add_argument("--out", help="output folder (default: RUN_DIR/inspect)")
    parser.add_argument("--per-class", type=int, default=4, help="images per class and gallery")
    parser.add_argument("--data", help="a dataset root to inspect instead of the run's dataset")
    add_dataset_options(parser, with_split=False, what="--data (default: the run's dataset)")
    add_model_options(parser, batch_size=False)
    return run_tool(parser, argv, lambda a: inspect_run(
        Path(a.run_dir), a.ckpt, Path(a.out) if a.out else None, a.per_class, a.data, a.dataset,
        a.device,
    ))  # fmt: skip


if __name__ == "__main__":
    sys.exit(main())
