"""`python -m scn.report DIR [--out OUT]`: compare runs without W&B.

Reads every run under DIR (a multirun folder or any folder of runs): `summary.json`,
`metrics.jsonl` and `.hydra/` (`config.yaml`, `overrides.yaml`). Runs are grouped by method (from
the run's config; runs from before the `method` group too) and by the other overrides that differ
between them, without seed, logger, paths and Hydra keys: runs that differ only there are
repetitions. Each group gets mean ± std over its repetitions of every evaluation rule (the selected
epoch, the best, the last, the mean of the last five), for accuracy and mean per-class accuracy, and
of the noise-detection AUC. Writes `report.md`, `report.csv` (every figure, mean and std in columns of
their own), PNG plots and one self-contained `report.html`. Jobs that failed (an `error.txt` in their
folder) are listed in a section of their own.
"""

from __future__ import annotations

import base64
import csv
import functools
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

from scn.cli import run_tool, tool_parser
from scn.engine.summary import rule_figures
from scn.errors import UserError
from scn.io import make_output_dir
from scn.methods import METHODS, method_name
from scn.sweep import ERROR_FILE, first_line
from scn.tracking.local import read_metrics

log = logging.getLogger(__name__)

IGNORED_PREFIXES = ("trainer.seed", "trainer.progress", "trainer.device", "logger", "paths", "hydra",
                    "ckpt_path", "dataset.num_workers")  # fmt: skip
# overrides that choose the method, shown as the method instead (the last two: before `method=`)
METHOD_KEYS = ("method", "scn.enabled", "ran.enabled")
# the order of the tables: the baseline first, as the reference
METHOD_ORDER = ("baseline", *(m for m in METHODS if m != "baseline"), "pretrain")
RULES = (("", "selected"), ("_best", "best"), ("_last", "last"), ("_last5", "last 5"))
# (column, summary keys: today's name first, then older names of the same figure)
METRICS: list[tuple[str, tuple[str, ...]]] = [
    *((f"acc{s}", (f"test/acc{s}",)) for s, _ in RULES),
    *((f"mean_class_acc{s}", (f"test/mean_class_acc{s}",)) for s, _ in RULES),
    # noise detection at the last epoch (blank without wrong labels): the method's own score
    # (SCN: 1 - alpha, RUL: uncertainty; blank for methods without one) and the training loss
    ("noise_auc", ("noise/auc", "scn/noise_auc")),
    ("noise_prec", ("noise/precision", "scn/noise_precision")),
    ("noise_auc_loss", ("noise/auc_loss", "train/noise_auc_loss")),
    ("noise_prec_loss", ("noise/precision_loss", "train/noise_precision_loss")),
    # task=pretrain runs: verification accuracy on held-out pairs, training identity accuracy
    ("verify_acc", ("verify/acc",)),
    ("id_acc", ("train/id_acc",)),
]
# the tables of report.md and report.html: (title, [(column, header)]); the CSV holds every METRICS
TABLES = [
    ("Test accuracy (%)", [*((f"acc{s}", name) for s, name in RULES),
                           ("noise_auc", "noise AUC, method's score"),
                           ("noise_auc_loss", "noise AUC, loss")]),
    ("Mean per-class test accuracy (%)", [(f"mean_class_acc{s}", name) for s, name in RULES]),
    ("Pretraining (%)", [("verify_acc", "verify acc"), ("id_acc", "identity acc")]),
]  # fmt: skip
NOISE_CURVES = ((("noise/auc", "scn/noise_auc"), "-", "o", "method's score"),
                (("noise/auc_loss", "train/noise_auc_loss"), "--", "s", "loss"))  # fmt: skip


@dataclass
class Run:
    path: Path
    overrides: list[str]
    summary: dict
    history: list[dict] = field(default_factory=list)

    config: str = ""  # the other overrides that set this run apart from the others (label_runs)
    method: str = ""  # scn, baseline, ran, scn_ran, eac, rul or pretrain (see method_of)

    @property
    def kept(self) -> set[str]:
        """The overrides that describe the run, without the method's (see `method`)."""
        return {
            o
            for o in self.overrides
            if not o.lstrip("+~").startswith(IGNORED_PREFIXES)
            and o.lstrip("+~").partition("=")[0] not in METHOD_KEYS
        }

    @property
    def label(self) -> str:
        return f"{self.method}: {self.config}" if self.config else self.method

    def value(self, key: str) -> str | None:
        for o in self.overrides:
            k, _, v = o.lstrip("+~").partition("=")
            if k == key:
                return v
        return None

    def figure(self, keys: tuple[str, ...]) -> float | None:
        """The first of `keys` the summary holds, else the rule computed from metrics.jsonl (runs
        from before a rule was in summary.json)."""
        for key in keys:
            if key in self.summary:
                return self.summary[key]
        return self.history_rules.get(keys[0])

    @functools.cached_property
    def history_rules(self) -> dict[str, float]:
        """The evaluation rules from metrics.jsonl (empty without test rows)."""
        if not self.history or "test/acc" not in self.history[0]:
            return {}
        try:
            return rule_figures(self.history, "test")
        except KeyError:  # a row without mean per-class accuracy
            return {}


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


def method_of(run: Run) -> str:
    """The method a run trained (`pretrain` for task=pretrain), from its composed config
    (`.hydra/config.yaml`) with its overrides on top, through `scn.methods.method_name`: runs from
    before the `method` group map from their `scn.enabled` / `ran.enabled`."""
    composed = run.path / ".hydra" / "config.yaml"
    cfg = (yaml.safe_load(composed.read_text()) or {}) if composed.is_file() else {}
    for key in ("task", *METHOD_KEYS):
        value = run.value(key)
        if value is not None:
            node, *path = ("method", "name") if key == "method" else key.split(".")
            if path:
                cfg[node] = {**(cfg.get(node) or {}), path[0]: yaml.safe_load(value)}
            else:
                cfg[node] = yaml.safe_load(value)
    if cfg.get("task") == "pretrain":
        return "pretrain"
    return method_name(cfg)


def label_runs(runs: list[Run]) -> list[str]:
    """Set each run's method, and its configuration: the overrides not shared by all runs (the
    method's own aside). Returns the shared overrides."""
    common = set.intersection(*(r.kept for r in runs))
    for r in runs:
        r.method = method_of(r)
        r.config = " ".join(sorted(r.kept - common))
    return sorted(common)


def _order(method: str, config: str) -> tuple[int, str, str]:
    """Methods in METHOD_ORDER (others after), then by configuration."""
    rank = METHOD_ORDER.index(method) if method in METHOD_ORDER else len(METHOD_ORDER)
    return rank, method, config


def failed_rows(failed: list[Run], root: Path, common: set[str]) -> list[tuple[str, str, str]]:
    """(job folder, its overrides not shared by the finished runs, `method=` among them, error)
    per failed job."""
    rows = []
    for r in failed:
        own = {o for o in r.overrides if not o.lstrip("+~").startswith(IGNORED_PREFIXES)}
        rows.append(
            (str(r.path.relative_to(root)), " ".join(sorted(own - common)), r.summary["error"])
        )
    return rows


def mean_std(values: list[float]) -> tuple[float, float | None]:
    return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else None)


def table(runs: list[Run]) -> list[dict]:
    """One row per (method, configuration): n, then mean, std and count of each metric over the
    runs that have it (std None for one run; both None where no run has the figure)."""
    groups: dict[tuple[str, str], list[Run]] = defaultdict(list)
    for run in runs:
        groups[run.method, run.config].append(run)
    rows = []
    for (method, config), members in sorted(groups.items(), key=lambda kv: _order(*kv[0])):
        row: dict = {"method": method, "config": config, "n": len(members)}
        for column, keys in METRICS:
            values = [v for v in (r.figure(keys) for r in members) if v is not None]
            mean, std = mean_std(values) if values else (None, None)
            row[f"{column}_mean"], row[f"{column}_std"] = mean, std
            row[f"{column}_n"] = len(values)
        rows.append(row)
    return rows


def cell(row: dict, column: str) -> str:
    """`mean ± std` in %, the mean alone for one run, blank without the figure; `(k of n)` when
    only k of the group's n runs have it (runs from before the figure was recorded)."""
    mean, std, k = row[f"{column}_mean"], row[f"{column}_std"], row[f"{column}_n"]
    if mean is None:
        return ""
    text = f"{100 * mean:.2f}" if std is None else f"{100 * mean:.2f} ± {100 * std:.2f}"
    return text if k == row["n"] else f"{text} ({k} of {row['n']})"


def display_tables(rows: list[dict]) -> list[tuple[str, list[str], list[list[str]]]]:
    """The tables of report.md and report.html: (title, header, cells) each, with only the columns
    and rows that hold a figure, and a configuration column only when runs differ beyond method."""
    tables = []
    with_config = any(row["config"] for row in rows)
    for title, columns in TABLES:
        columns = [(c, h) for c, h in columns if any(row[f"{c}_mean"] is not None for row in rows)]
        shown = [r for r in rows if any(r[f"{c}_mean"] is not None for c, _ in columns)]
        if not shown:
            continue
        header = [
            "method",
            *(["configuration"] if with_config else []),
            "n",
            *(h for _, h in columns),
        ]
        cells = [
            [r["method"], *([r["config"]] if with_config else []), str(r["n"]),
             *(cell(r, c) for c, _ in columns)]
            for r in shown
        ]  # fmt: skip
        tables.append((title, header, cells))
    return tables


def _png(fig) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100)
    return buf.getvalue()


def _first(row: dict, keys: tuple[str, ...]) -> float | None:
    return next((row[k] for k in keys if k in row), None)


def plots(runs: list[Run]) -> dict[str, bytes]:
    """PNG figures: accuracy vs noise per method, learning curves, best run's confusion, and the
    noise-detection AUC per epoch. Every point is drawn as a marker, so one-epoch runs show."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figures: dict[str, bytes] = {}
    noise = [
        r for r in runs if r.value("dataset.noise.rate") is not None and "test/acc" in r.summary
    ]
    if noise:
        fig, ax = plt.subplots(figsize=(5, 3.5))
        by_method: dict[str, dict[float, list[float]]] = defaultdict(lambda: defaultdict(list))
        for r in noise:
            method = r.method or method_of(r)
            by_method[method][float(r.value("dataset.noise.rate"))].append(r.summary["test/acc"])
        for method, points in sorted(by_method.items(), key=lambda kv: _order(kv[0], "")):
            xs = sorted(points)
            stats = [mean_std(points[x]) for x in xs]
            ax.errorbar([100 * x for x in xs], [100 * m for m, _ in stats],
                        yerr=[100 * (s or 0) for _, s in stats], marker="o", capsize=3, label=method)  # fmt: skip
        ax.set_xlabel("label noise (%)")
        ax.set_ylabel("test accuracy, selected epoch (%)")
        ax.legend()
        ax.grid(alpha=0.3)
        fig.tight_layout()
        figures["accuracy_vs_noise.png"] = _png(fig)
        plt.close(fig)
    curves: dict[str, list[list[float]]] = defaultdict(list)
    for r in runs:
        key = curve_key(r)
        if r.history and key:
            curves[r.label].append([row[key] for row in r.history])
    if curves:
        order = {r.label: _order(r.method, r.config) for r in runs}
        curves = dict(sorted(curves.items(), key=lambda kv: order[kv[0]]))
        figures["learning_curves.png"] = curve_plot(curves, plt)
    if any(_first(row, NOISE_CURVES[1][0]) is not None for r in runs for row in r.history):
        figures["noise_detection.png"] = noise_plot(runs, plt)
    trained = [r for r in runs if "test/acc" in r.summary]  # pretraining runs have no classes
    best = max(trained, key=lambda r: r.summary["test/acc"]) if trained else None
    if best is not None and best.history:
        from scn.tracking.figures import save_confusion_png

        row = best.history[best.summary["selected_epoch"] - 1]
        names = list(row["test/class_acc"])
        buf = io.BytesIO()
        save_confusion_png(row["test/confusion"], names, buf, f"best run: {best.label[:50]}")
        figures["confusion_best.png"] = buf.getvalue()
    return figures


def _epoch_axis(ax, last: int) -> None:
    """Whole epochs 1..last on the x axis, a run of one epoch included."""
    from matplotlib.ticker import MaxNLocator

    ax.set_xlabel("epoch")
    ax.set_xlim(0.5, last + 0.5)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True, min_n_ticks=1))


def curve_plot(curves: dict[str, list[list[float]]], plt) -> bytes:
    """Per method and configuration (in `curves`' order), the test accuracy per epoch averaged
    over its runs."""
    fig, ax = plt.subplots(figsize=(6, 3.5))
    last = 1
    for label, members in curves.items():
        length = min(map(len, members))
        last = max(last, length)
        mean = [statistics.fmean(m[i] for m in members) for i in range(length)]
        ax.plot(range(1, length + 1), [100 * v for v in mean], marker="o", markersize=4,
                label=label[:60])  # fmt: skip
    _epoch_axis(ax, last)
    ax.set_ylabel("test accuracy (%; pretraining: verify/acc)")
    if len(curves) <= 12:
        ax.legend(fontsize=6)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    data = _png(fig)
    plt.close(fig)
    return data


def curve_key(run: Run) -> str | None:
    """What a run's learning curve shows: test/acc, or verify/acc for a pretraining run."""
    first = run.history[0] if run.history else {}
    return next((k for k in ("test/acc", "verify/acc") if k in first), None)


def noise_plot(runs: list[Run], plt) -> bytes:
    """Per method and configuration (one colour each), the epoch's noise-detection AUC of the
    method's own score (solid, circles) and of the loss (dashed, squares), averaged over its runs:
    how well each ranks the wrong labels first."""
    fig, ax = plt.subplots(figsize=(6, 3.5))
    order = {r.label: _order(r.method, r.config) for r in runs}
    labels = sorted(order, key=order.get)
    last = 1
    for keys, style, marker, what in NOISE_CURVES:
        curves: dict[str, list[dict[int, float]]] = defaultdict(list)
        for r in runs:
            points = {row["epoch"]: v for row in r.history if (v := _first(row, keys)) is not None}
            if points:
                curves[r.label].append(points)
        for label, members in sorted(curves.items(), key=lambda kv: order[kv[0]]):
            epochs = sorted(set.intersection(*(set(m) for m in members)))
            mean = [100 * statistics.fmean(m[e] for m in members) for e in epochs]
            last = max([last, *epochs])
            ax.plot(epochs, mean, style, marker=marker, markersize=4,
                    color=f"C{labels.index(label) % 10}", label=f"{what}: {label[:50]}")  # fmt: skip
    _epoch_axis(ax, last)
    ax.set_ylabel("noise-detection AUC (%)")
    ax.legend(fontsize=6)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    data = _png(fig)
    plt.close(fig)
    return data


INTRO = (
    "Test accuracy in % by evaluation rule: `selected` at the epoch the run selected (on test"
    " unless dataset.val_fraction > 0), `best` the best epoch (SCN's and RUL's papers), `last` the"
    " last epoch, `last 5` the mean of the last five (EAC's paper); `mean ± std` over the runs that"
    " differ only in seed (the mean alone for one run). Noise AUC: at the last epoch, the ROC-AUC"
    " (in %) with which the method's own score (SCN: 1 − alpha, RUL: its uncertainty) and the"
    " training loss rank the wrong labels first; blank without wrong labels or without a score."
    " report.csv holds every figure, precision of the noise detection included, with mean and std"
    " in columns of their own."
)


def _md_table(header: list[str], cells: list[list[str]]) -> list[str]:
    def line(cs: list[str]) -> str:
        return "| " + " | ".join(c.replace("|", "/") for c in cs) + " |"

    return [line(header), "|" + "---|" * len(header), *(line(c) for c in cells)]


def _html_table(header: list[str], cells: list[list[str]], numeric_from: int = 0) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    body = "".join(
        "<tr>" + "".join(
            f"<td class='{'num' if i >= numeric_from else 'txt'}'>{html.escape(c)}</td>"
            for i, c in enumerate(row)
        ) + "</tr>"
        for row in cells
    )  # fmt: skip
    return f"<table><tr>{head}</tr>{body}</table>"


STYLE = (
    "body{font-family:sans-serif;max-width:1300px;margin:1em auto;padding:0 1em}"
    "table{border-collapse:collapse;margin-bottom:1em}"
    "td,th{border:1px solid #ccc;padding:3px 8px;vertical-align:top}"
    "th{background:#f3f3f3}td.num{text-align:right;white-space:nowrap}"
    "td.txt{max-width:32em;overflow-wrap:anywhere}img{max-width:100%}"
)


def write_report(root: Path, out: Path | None = None) -> Path:
    out = make_output_dir(out or root)
    runs = find_runs(root)
    common = label_runs(runs)
    rows = table(runs)
    stats = ("mean", "std", "n")  # n: how many of the group's runs have the figure
    columns = ["method", "config", "n"] + [f"{c}_{s}" for c, _ in METRICS for s in stats]
    with (out / "report.csv").open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=columns)
        writer.writeheader()
        writer.writerows({k: ("" if v is None else v) for k, v in row.items()} for row in rows)
    tables = display_tables(rows)
    groups = len(rows)
    lines = [
        f"# Runs under {root}",
        "",
        f"{len(runs)} runs, {groups} configurations (method and overrides). {INTRO}",
        "",
        f"Shared by all runs: `{' '.join(common) or '(no overrides)'}`",
    ]
    for title, header, cells in tables:
        lines += ["", f"## {title}", "", *_md_table(header, cells)]
    failed = failed_rows(find_failed(root), root, set(common))
    failed_header = ["job", "configuration", "error"]
    if failed:
        lines += ["", "## Failed jobs", "", f"Not in the tables above ({len(failed)}):", ""]
        lines += _md_table(failed_header, [list(r) for r in failed])
    figures = plots(runs)
    for name, data in figures.items():
        (out / name).write_bytes(data)
        lines += ["", f"![{name}]({name})"]
    (out / "report.md").write_text("\n".join(lines) + "\n")
    numeric = {t: h.index("n") for t, h, _ in tables}
    tables_html = "".join(
        f"<h2>{html.escape(t)}</h2>" + _html_table(h, c, numeric[t]) for t, h, c in tables
    )
    failed_html = (
        f"<h2>Failed jobs</h2><p>Not in the tables above ({len(failed)}).</p>"
        + _html_table(failed_header, [list(r) for r in failed], numeric_from=len(failed_header))
        if failed
        else ""
    )
    images = "".join(
        f'<h3>{html.escape(n)}</h3><img src="data:image/png;base64,{base64.b64encode(d).decode()}">'
        for n, d in figures.items()
    )
    intro = html.escape(INTRO).replace("`", "")
    (out / "report.html").write_text(
        f"<!doctype html><meta charset='utf-8'><title>scn report</title><style>{STYLE}</style>"
        f"<h1>Runs under {html.escape(str(root))}</h1><p>{len(runs)} runs, {groups} configurations"
        f" (method and overrides). {intro}</p><p>Shared by all runs: <code>"
        f"{html.escape(' '.join(common) or '(no overrides)')}</code></p>"
        f"{tables_html}{failed_html}{images}\n"
    )
    log.info("report of %d runs (%d configurations, %d failed jobs) written to %s", len(runs), groups,
             len(failed), out)  # fmt: skip
    return out


def main(argv: list[str] | None = None) -> int:
    parser = tool_parser("report", __doc__)
    parser.add_argument("runs", help="a multirun folder or any folder holding runs")
    parser.add_argument("--out", help="output folder (default: the runs folder)")
    return run_tool(
        parser, argv, lambda a: write_report(Path(a.runs), Path(a.out) if a.out else None)
    )


if __name__ == "__main__":
    sys.exit(main())
