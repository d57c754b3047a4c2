"""`python -m scn.report DIR [--out OUT]`: compare runs without W&B.

Reads every run under DIR (a multirun folder or any folder of runs): `summary.json`,
`metrics.jsonl` and `.hydra/overrides.yaml`. A configuration is a run's overrides without seed,
logger, paths and Hydra keys; runs that differ only there are repetitions. Writes `report.md`,
`report.csv`, PNG plots and one self-contained `report.html`. Jobs that failed (an `error.txt` in
their folder) are listed in a section of their own.
"""

from __future__ import annotations

import argparse
import base64
import csv
import html
import io
import json
import logging
import statistics
import sys
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from scn.cli import run_cli
from scn.errors import UserError
from scn.sweep import ERROR_FILE, first_line
from scn.tracking.local import read_metrics

log = logging.getLogger(__name__)

IGNORED_PREFIXES = ("trainer.seed", "trainer.progress", "trainer.device", "logger", "paths", "hydra",
                    "ckpt_path", "dataset.num_workers")  # fmt: skip
METRICS = [  # (column, summary key)
    ("acc", "test/acc"),
    ("mean_class_acc", "test/mean_class_acc"),
    ("acc_best", "test/acc_best"),
    ("acc_last", "test/acc_last"),
    # noise detection at the last epoch (blank without wrong labels): 1 - alpha vs the loss
    ("noise_auc", "scn/noise_auc"),
    ("noise_prec", "scn/noise_precision"),
    ("noise_auc_loss", "train/noise_auc_loss"),
    ("noise_prec_loss", "train/noise_precision_loss"),
    # task=pretrain runs: verification accuracy on held-out pairs, training identity accuracy
    ("verify_acc", "verify/acc"),
    ("id_acc", "train/id_acc"),
]
NOISE_CURVES = (("scn/noise_auc", "-", "1 - alpha"), ("train/noise_auc_loss", "--", "loss"))


@dataclass
class Run:
    path: Path
    overrides: list[str]
    summary: dict
    history: list[dict] = field(default_factory=list)

    config: str = ""  # the overrides that set this run apart from the others (see label_runs)
    method: str = ""  # baseline, SCN, RAN or SCN+RAN (see method_of)

    @property
    def kept(self) -> set[str]:
        return {o for o in self.overrides if not o.lstrip("+~").startswith(IGNORED_PREFIXES)}

    def value(self, key: str) -> str | None:
        for o in self.overrides:
            k, _, v = o.lstrip("+~").partition("=")
            if k == key:
                return v
        return None


def _overrides(run_dir: Path) -> list[str]:
    overrides_file = run_dir / ".hydra" / "overrides.yaml"
    overrides = yaml.safe_load(overrides_file.read_text()) if overrides_file.is_file() else []
    return list(overrides or [])


def find_failed(root: Path) -> list[Run]:
    """Jobs that failed: an error.txt (written by a failed job of a multirun) in their folder;
    `summary["error"]` holds its first line."""
    return [
        Run(e.parent, _overrides(e.parent), {"error": first_line(e.read_text())})
        for e in sorted(root.rglob(ERROR_FILE))
    ]


def find_runs(root: Path) -> list[Run]:
    runs = []
    for summary in sorted(root.rglob("summary.json")):
        run_dir = summary.parent
        if (run_dir / ERROR_FILE).is_file():  # failed after its summary: listed with the failed
            continue
        metrics = run_dir / "metrics.jsonl"
        history = read_metrics(metrics) if metrics.is_file() else []
        runs.append(Run(run_dir, _overrides(run_dir), json.loads(summary.read_text()), history))
    if not runs:
        failed = find_failed(root)
        raise UserError(
            f"no runs under {root} (looked for */summary.json written by python run.py)"
            + (f"; {len(failed)} failed jobs: see their error.txt" if failed else "")
        )
    return runs


METHODS = ("baseline", "SCN", "RAN", "SCN+RAN", "pretrain")


def method_of(run: Run) -> str:
    """The method a run trained, from its composed config (`.hydra/config.yaml`), else from its
    overrides over the defaults (SCN on, RAN off)."""
    composed = run.path / ".hydra" / "config.yaml"
    cfg = (yaml.safe_load(composed.read_text()) or {}) if composed.is_file() else {}

    def enabled(group: str, default: bool) -> bool:
        value = run.value(f"{group}.enabled")
        if value is None:
            value = (cfg.get(group) or {}).get("enabled", default)
        return str(value).lower() == "true"

    if (run.value("task") or cfg.get("task")) == "pretrain":
        return "pretrain"
    return METHODS[enabled("scn", True) + 2 * enabled("ran", False)]


def label_runs(runs: list[Run]) -> list[str]:
    """Name each run's configuration by the overrides not shared by all runs; returns the shared.
    When the runs differ in method, the name starts with the method: `SCN+RAN: ran.enabled=True
    scn.enabled=True`, `baseline: ...`."""
    common = set.intersection(*(r.kept for r in runs))
    for r in runs:
        r.method = method_of(r)
    by_method = len({r.method for r in runs}) > 1
    for r in runs:
        r.config = " ".join(sorted(r.kept - common)) or "(all runs alike)"
        if by_method:
            r.config = f"{r.method}: {r.config}"
    return sorted(common)


def _config_order(config: str) -> tuple[int, str]:
    """Methods in the order baseline, SCN, RAN, SCN+RAN, then by the rest of the name."""
    first, _, rest = config.partition(": ")
    return (METHODS.index(first) if first in METHODS else len(METHODS), rest or config)


def failed_rows(failed: list[Run], root: Path, common: set[str]) -> list[tuple[str, str, str]]:
    """(job folder, its overrides not shared by the finished runs, error) per failed job."""
    return [
        (str(r.path.relative_to(root)), " ".join(sorted(r.kept - common)), r.summary["error"])
        for r in failed
    ]


def mean_std(values: list[float]) -> tuple[float, float | None]:
    return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else None)


def table(runs: list[Run]) -> list[dict]:
    """One row per configuration: n, then mean and std of each metric over its runs."""
    groups: dict[str, list[Run]] = defaultdict(list)
    for run in runs:
        groups[run.config].append(run)
    rows = []
    for config, members in sorted(groups.items(), key=lambda kv: _config_order(kv[0])):
        row: dict = {"config": config, "n": len(members)}
        for column, key in METRICS:
            values = [r.summary[key] for r in members if key in r.summary]
            mean, std = mean_std(values) if values else (None, None)
            row[f"{column}_mean"], row[f"{column}_std"] = mean, std
        rows.append(row)
    return rows


def _fmt(v) -> str:
    return "" if v is None else (f"{100 * v:.2f}" if isinstance(v, float) else str(v))


def _png(fig) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100)
    return buf.getvalue()


def plots(runs: list[Run]) -> dict[str, bytes]:
    """PNG figures: accuracy vs noise (SCN vs baseline), learning curves, best run's confusion."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figures: dict[str, bytes] = {}
    noise = [r for r in runs if r.value("dataset.noise.rate") is not None]
    if noise:
        fig, ax = plt.subplots(figsize=(5, 3.5))
        by_method: dict[str, dict[float, list[float]]] = defaultdict(lambda: defaultdict(list))
        for r in noise:
            method = r.method or method_of(r)
            by_method[method][float(r.value("dataset.noise.rate"))].append(r.summary["test/acc"])
        for method, points in sorted(by_method.items()):
            xs = sorted(points)
            stats = [mean_std(points[x]) for x in xs]
            ax.errorbar([100 * x for x in xs], [100 * m for m, _ in stats],
                        yerr=[100 * (s or 0) for _, s in stats], marker="o", capsize=3, label=method)  # fmt: skip
        ax.set_xlabel("label noise (%)")
        ax.set_ylabel("test accuracy (%)")
        ax.legend()
        ax.grid(alpha=0.3)
        fig.tight_layout()
        figures["accuracy_vs_noise.png"] = _png(fig)
        plt.close(fig)
    fig, ax = plt.subplots(figsize=(6, 3.5))
    curves: dict[str, list[list[float]]] = defaultdict(list)
    for r in runs:
        key = curve_key(r)
        if r.history and key:
            curves[r.config].append([row[key] for row in r.history])
    for config, members in sorted(curves.items()):
        length = min(map(len, members))
        mean = [statistics.fmean(m[i] for m in members) for i in range(length)]
        ax.plot(range(1, length + 1), [100 * v for v in mean], label=config[:60])
    ax.set_xlabel("epoch")
    ax.set_ylabel("test accuracy (%; pretraining: verify/acc)")
    if len(curves) <= 12:
        ax.legend(fontsize=6)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    figures["learning_curves.png"] = _png(fig)
    plt.close(fig)
    if any(NOISE_CURVES[1][0] in row for r in runs for row in r.history):
        figures["noise_detection.png"] = noise_plot(runs, plt)
    trained = [r for r in runs if "test/acc" in r.summary]  # pretraining runs have no classes
    best = max(trained, key=lambda r: r.summary["test/acc"]) if trained else None
    if best is not None and best.history:
        from scn.tracking.figures import save_confusion_png

        row = best.history[best.summary["selected_epoch"] - 1]
        names = list(row["test/class_acc"])
        buf = io.BytesIO()
        save_confusion_png(row["test/confusion"], names, buf, f"best run: {best.config[:50]}")
        figures["confusion_best.png"] = buf.getvalue()
    return figures


def curve_key(run: Run) -> str | None:
    """What a run's learning curve shows: test/acc, or verify/acc for a pretraining run."""
    first = run.history[0] if run.history else {}
    return next((k for k in ("test/acc", "verify/acc") if k in first), None)


def noise_plot(runs: list[Run], plt) -> bytes:
    """Per configuration, the epoch's noise-detection AUC of 1 - alpha (solid) and of the loss
    (dashed), averaged over its runs: how well each ranks the wrong labels first."""
    fig, ax = plt.subplots(figsize=(6, 3.5))
    for key, style, what in NOISE_CURVES:
        curves: dict[str, list[dict[int, float]]] = defaultdict(list)
        for r in runs:
            points = {row["epoch"]: row[key] for row in r.history if key in row}
            if points:
                curves[r.config].append(points)
        for config, members in sorted(curves.items()):
            epochs = sorted(set.intersection(*(set(m) for m in members)))
            mean = [100 * statistics.fmean(m[e] for m in members) for e in epochs]
            ax.plot(epochs, mean, style, label=f"{what}: {config[:50]}")
    ax.set_xlabel("epoch")
    ax.set_ylabel("noise-detection AUC (%)")
    ax.legend(fontsize=6)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    data = _png(fig)
    plt.close(fig)
    return data


def write_report(root: Path, out: Path | None = None) -> Path:
    runs = find_runs(root)
    common = label_runs(runs)
    out = out or root
    out.mkdir(parents=True, exist_ok=True)
    rows = table(runs)
    columns = ["config", "n"] + [f"{c}_{s}" for c, _ in METRICS for s in ("mean", "std")]
    with (out / "report.csv").open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=columns)
        writer.writeheader()
        writer.writerows({k: ("" if v is None else v) for k, v in row.items()} for row in rows)
    header = "| configuration | n | " + " | ".join(f"{c} mean | {c} std" for c, _ in METRICS) + " |"
    lines = [
        f"# Runs under {root}",
        "",
        f"{len(runs)} runs, {len(rows)} configurations. Test accuracy in %: `acc` and `mean_class_acc`"
        " at the selected epoch, `acc_best` the best epoch, `acc_last` the last; std over repetitions"
        " (blank for one run). `noise_*`: at the last epoch, the ROC-AUC and precision (in %) with"
        " which 1 - alpha (SCN) and the training loss (`_loss`) rank the wrong labels first; blank"
        " without wrong labels. `verify_acc` and `id_acc`: pretraining runs' (task=pretrain)"
        " verification accuracy on held-out pairs and training identity accuracy.",
        "",
        f"Shared by all runs: `{' '.join(common) or '(no overrides)'}`",
        "",
        header,
        "|" + "---|" * (2 + 2 * len(METRICS)),
    ]
    for row in rows:
        cells = [row["config"], str(row["n"])] + [_fmt(row[c]) for c in columns[2:]]
        lines.append("| " + " | ".join(cells) + " |")
    failed = failed_rows(find_failed(root), root, set(common))
    if failed:
        lines += ["", "## Failed jobs", "", f"Not in the table above ({len(failed)}):",
                  "", "| job | configuration | error |", "|---|---|---|"]  # fmt: skip
        lines += ["| " + " | ".join(c.replace("|", "/") for c in r) + " |" for r in failed]
    figures = plots(runs)
    for name, data in figures.items():
        (out / name).write_bytes(data)
        lines += ["", f"![{name}]({name})"]
    (out / "report.md").write_text("\n".join(lines) + "\n")
    body = "".join(
        "<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in
                         [row["config"], str(row["n"])] + [_fmt(row[c]) for c in columns[2:]]) + "</tr>"
        for row in rows
    )  # fmt: skip
    images = "".join(
        f'<h3>{html.escape(n)}</h3><img src="data:image/png;base64,{base64.b64encode(d).decode()}">'
        for n, d in figures.items()
    )
    head = "".join(f"<th>{html.escape(c)}</th>" for c in columns)
    failed_html = (
        f"<h2>Failed jobs</h2><p>Not in the table above ({len(failed)}).</p><table>"
        "<tr><th>job</th><th>configuration</th><th>error</th></tr>"
        + "".join(
            "<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in r) + "</tr>" for r in failed
        )
        + "</table>"
        if failed
        else ""
    )
    (out / "report.html").write_text(
        f"<!doctype html><meta charset='utf-8'><title>scn report</title>"
        f"<style>body{{font-family:sans-serif}}td,th{{border:1px solid #ccc;padding:2px 6px}}</style>"
        f"<h1>Runs under {html.escape(str(root))}</h1><p>{len(runs)} runs, {len(rows)} configurations; "
        f"accuracy in %. Shared by all runs: <code>{html.escape(' '.join(common))}</code></p><table><tr>{head}</tr>{body}</table>{failed_html}{images}\n"
    )
    log.info("report of %d runs (%d configurations, %d failed jobs) written to %s", len(runs),
             len(rows), len(failed), out)  # fmt: skip
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m scn.report", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    parser.add_argument("runs", help="a multirun folder or any folder holding runs")
    parser.add_argument("--out", help="output folder (default: the runs folder)")
    args = parser.parse_args(argv)
    return run_cli(write_report, Path(args.runs), Path(args.out) if args.out else None)


if __name__ == "__main__":
    sys.exit(main())
