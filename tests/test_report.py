"""The local results report: grouping by method and the evaluation rules on hand-written run
folders, then on a small real multirun of the noise-study recipe."""

import csv
import json
import shutil
import statistics

import pytest
import yaml

from scn.errors import UserError
from scn.report import write_report
from tests.conftest import TINY
from tests.test_e2e import run_py


def fake_run(root, name, overrides, summary, history=(), config=None):
    """A run folder as python run.py leaves it: .hydra/overrides.yaml (and config.yaml),
    summary.json and, with `history`, metrics.jsonl."""
    run = root / name
    (run / ".hydra").mkdir(parents=True)
    (run / ".hydra/overrides.yaml").write_text(yaml.safe_dump(list(overrides)))
    if config is not None:
        (run / ".hydra/config.yaml").write_text(yaml.safe_dump(config))
    (run / "summary.json").write_text(json.dumps(summary))
    if history:
        (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in history))
    return run


def rows_of(accs, mcas, **noise):
    """metrics.jsonl rows with these test accuracies and mean per-class accuracies (and noise
    figures: `key=[value per epoch]`)."""
    return [
        {"epoch": e, "test/acc": a, "test/mean_class_acc": m,
         "test/class_acc": {"a": a, "b": m}, "test/confusion": [[2, 1], [1, 2]],
         **{k.replace("__", "/"): v[e - 1] for k, v in noise.items()}}
        for e, (a, m) in enumerate(zip(accs, mcas, strict=True), start=1)
    ]  # fmt: skip


def new_summary(method, acc, mca, **noise):
    """summary.json as today's runs write it: `acc` and `mca` (mean per-class accuracy) each
    (selected, best, last, mean of the last five)."""
    summary = {"method": method, "selected_epoch": 1, **noise}
    for metric, values in (("acc", acc), ("mean_class_acc", mca)):
        for rule, value in zip(("", "_best", "_last", "_last5"), values, strict=True):
            summary[f"test/{metric}{rule}"] = value
    return summary


@pytest.fixture
def runs(tmp_path):
    """scn x 2 seeds and scn at another margin_1 (today's runs), the baseline x 2 seeds and RAN
    (runs from before the method group: scn.enabled / ran.enabled, no last-5 figure, the old
    noise key; one baseline without metrics.jsonl), RUL x 1, and a failed EAC job."""
    root = tmp_path / "sweep"
    # for the plots; today's figures come from summaries
    history = rows_of([0.5, 0.7], [0.4, 0.6], noise__auc=[0.5, 0.6], noise__auc_loss=[0.7, 0.8])
    scn = {"method": {"name": "scn"}}
    noise = {"noise/auc": 0.60, "noise/auc_loss": 0.80, "scn/noise_auc": 0.99}  # alias differs
    fake_run(root, "0", ["method=scn", "trainer.seed=0"],
             new_summary("scn", (0.70, 0.80, 0.60, 0.65), (0.50, 0.55, 0.45, 0.52), **noise),
             history, scn)  # fmt: skip
    noise = {"noise/auc": 0.70, "noise/auc_loss": 0.90}
    fake_run(root, "1", ["method=scn", "trainer.seed=1"],
             new_summary("scn", (0.74, 0.86, 0.64, 0.67), (0.54, 0.59, 0.49, 0.54), **noise),
             history, scn)  # fmt: skip
    fake_run(root, "2", ["method=scn", "scn.margin_1=0.1", "trainer.seed=0"],
             new_summary("scn", (0.71, 0.81, 0.61, 0.66), (0.51, 0.56, 0.46, 0.53)),
             history, scn)  # fmt: skip
    # old baseline: test/acc 0.1 .. 0.6 over six epochs -> the last five average 0.4; mean
    # per-class 0.3 everywhere but the 4th epoch's 0.9 -> best 0.9, last 0.3, last five 0.42
    old = rows_of([0.1, 0.2, 0.3, 0.4, 0.5, 0.6], [0.3, 0.3, 0.3, 0.9, 0.3, 0.3],
                  train__noise_auc_loss=[0.5, 0.55, 0.6, 0.65, 0.7, 0.75])  # fmt: skip
    fake_run(root, "3", ["scn.enabled=False", "trainer.seed=0"],
             {"test/acc": 0.6, "test/mean_class_acc": 0.3, "test/acc_best": 0.6,
              "test/acc_last": 0.6, "train/noise_auc_loss": 0.75, "selected_epoch": 6},
             old, {"scn": {"enabled": False}, "ran": {"enabled": False}})  # fmt: skip
    fake_run(root, "4", ["scn.enabled=False", "trainer.seed=1"],
             {"test/acc": 0.5, "test/mean_class_acc": 0.4, "test/acc_best": 0.7,
              "test/acc_last": 0.5, "train/noise_auc_loss": 0.85, "selected_epoch": 3})  # fmt: skip
    fake_run(root, "5", ["ran.enabled=True", "scn.enabled=False", "trainer.seed=0"],
             {"test/acc": 0.3, "test/mean_class_acc": 0.2, "test/acc_best": 0.3,
              "test/acc_last": 0.3, "selected_epoch": 1})  # fmt: skip
    fake_run(root, "6", ["method=rul", "trainer.seed=0"],
             new_summary("rul", (0.9, 0.9, 0.8, 0.85), (0.7, 0.75, 0.6, 0.65),
                         **{"noise/auc": 0.55, "noise/auc_loss": 0.65}),
             rows_of([0.9], [0.7], noise__auc=[0.55], noise__auc_loss=[0.65]),
             {"method": {"name": "rul"}})  # fmt: skip
    failed = root / "7"
    (failed / ".hydra").mkdir(parents=True)
    (failed / ".hydra/overrides.yaml").write_text(yaml.safe_dump(["method=eac", "trainer.seed=0"]))
    (failed / "error.txt").write_text("UserError: method=eac needs class activation maps\n...")
    return root


def test_runs_group_by_method_with_each_rule_as_mean_and_std(runs, tmp_path):
    out = write_report(runs, tmp_path / "report")
    rows = list(csv.DictReader((out / "report.csv").open()))
    assert [(r["method"], r["config"], r["n"]) for r in rows] == [
        ("baseline", "", "2"),
        ("scn", "", "2"),
        ("scn", "scn.margin_1=0.1", "1"),
        ("ran", "", "1"),
        ("rul", "", "1"),
    ]
    scn = rows[1]
    for column, (a, b) in {
        "acc": (0.70, 0.74),
        "acc_best": (0.80, 0.86),
        "acc_last": (0.60, 0.64),
        "acc_last5": (0.65, 0.67),
        "mean_class_acc_best": (0.55, 0.59),
        "noise_auc": (0.60, 0.70),  # today's key, not the older alias
        "noise_auc_loss": (0.80, 0.90),
    }.items():
        assert float(scn[f"{column}_mean"]) == pytest.approx((a + b) / 2), column
        assert float(scn[f"{column}_std"]) == pytest.approx(statistics.stdev([a, b])), column
    base = rows[0]
    # last five from metrics.jsonl for the run that has one; the other has neither
    assert float(base["acc_last5_mean"]) == pytest.approx(0.4) and base["acc_last5_n"] == "1"
    assert float(base["mean_class_acc_best_mean"]) == pytest.approx(0.9)
    assert float(base["mean_class_acc_last5_mean"]) == pytest.approx(0.42)
    assert float(base["noise_auc_loss_mean"]) == pytest.approx(0.80)  # the old key, 0.75 and 0.85
    assert base["noise_auc_mean"] == "" and base["acc_best_n"] == "2"
    md = (out / "report.md").read_text()
    # method | configuration | n | selected | best | last | last 5 | noise AUC x 2, in %
    assert "| scn |  | 2 | 72.00 ± 2.83 | 83.00 ± 4.24 | 62.00 ± 2.83 | 66.00 ± 1.41 | 65.00 ± 7.07 | 85.00 ± 7.07 |" in md  # fmt: skip
    assert "| baseline |  | 2 | 55.00 ± 7.07 | 65.00 ± 7.07 | 55.00 ± 7.07 | 40.00 (1 of 2) |  | 80.00 ± 7.07 |" in md  # fmt: skip
    assert "| rul |  | 1 | 90.00 | 90.00 | 80.00 | 85.00 | 55.00 | 65.00 |" in md
    assert "| scn |  | 2 | 52.00 ± 2.83 | 57.00 ± 2.83 | 47.00 ± 2.83 | 53.00 ± 1.41 |" in md
    assert "| baseline |  | 2 | 35.00 ± 7.07 | 90.00 (1 of 2) | 30.00 (1 of 2) | 42.00 (1 of 2) |" in md  # fmt: skip
    assert "| 7 | method=eac | UserError: method=eac needs class activation maps |" in md
    assert "scn.enabled" not in md and "verify acc" not in md  # no pretraining runs, no column
    page = (out / "report.html").read_text()
    assert page.count("<table>") == 3 and "<td class='num'>83.00 ± 4.24</td>" in page
    for name in ("learning_curves.png", "noise_detection.png", "confusion_best.png"):
        assert (out / name).read_bytes()[:4] == b"\x89PNG", name


def test_one_method_no_configuration_column_and_blank_columns_dropped(tmp_path):
    for seed, acc in ((0, 0.5), (1, 0.75)):
        fake_run(tmp_path / "runs", str(seed), ["method=eac", f"trainer.seed={seed}"],
                 new_summary("eac", (acc,) * 4, (acc,) * 4),
                 config={"method": {"name": "eac"}})  # fmt: skip
    out = write_report(tmp_path / "runs", tmp_path / "out")
    md = (out / "report.md").read_text()
    header = "| method | n | selected | best | last | last 5 |"
    assert md.count(header) == 2  # accuracy and mean per-class; no noise columns without noise
    assert "| eac | 2 | 62.50 ± 17.68 | 62.50 ± 17.68 | 62.50 ± 17.68 | 62.50 ± 17.68 |" in md


def test_pretraining_runs_get_a_table_of_their_own(tmp_path):
    for seed, verify in ((0, 0.8), (1, 0.9)):
        fake_run(tmp_path / "runs", str(seed), ["task=pretrain", f"trainer.seed={seed}"],
                 {"verify/acc": verify, "train/id_acc": 0.5},
                 [{"epoch": 1, "verify/acc": verify}],
                 {"task": "pretrain", "method": {"name": "scn"}})  # fmt: skip
    out = write_report(tmp_path / "runs", tmp_path / "out")
    md = (out / "report.md").read_text()
    assert "## Pretraining (%)" in md and "## Test accuracy" not in md
    assert "| pretrain | 2 | 85.00 ± 7.07 | 50.00 ± 0.00 |" in md
    assert (out / "learning_curves.png").is_file()


@pytest.mark.e2e
def test_report_tables_average_seeds_per_configuration(noise_sweep, tmp_path):
    out = write_report(noise_sweep, tmp_path / "report")
    rows = list(csv.DictReader((out / "report.csv").open()))
    assert len(rows) == 4 and all(r["n"] == "2" for r in rows)
    pairs = {("dataset.noise.rate=0.3" in r["config"], r["method"]) for r in rows}
    assert pairs == {(False, "scn"), (False, "baseline"), (True, "scn"), (True, "baseline")}
    assert not any("trainer.seed" in r["config"] or "method" in r["config"] for r in rows)
    # check one configuration against the runs by hand
    accs = []
    for job in noise_sweep.iterdir():
        overrides = (job / ".hydra/overrides.yaml").read_text() if job.is_dir() else ""
        if "dataset.noise.rate=0.3" in overrides and "method=baseline" in overrides:
            accs.append(json.loads((job / "summary.json").read_text())["test/acc_last5"])
    row = next(r for r in rows if "noise.rate=0.3" in r["config"] and r["method"] == "baseline")
    assert float(row["acc_last5_mean"]) == pytest.approx(statistics.fmean(accs))
    assert float(row["acc_last5_std"]) == pytest.approx(statistics.stdev(accs))
    # noise detection: the loss detector for every noisy run, 1 - alpha only with SCN, none clean
    for r in rows:
        noisy, scn = "dataset.noise.rate=0.3" in r["config"], r["method"] == "scn"
        assert (r["noise_auc_loss_mean"] != "") == noisy and (r["noise_auc_mean"] != "") == (
            noisy and scn
        ), r
    aucs = [
        json.loads((j / "summary.json").read_text()) for j in noise_sweep.iterdir() if j.is_dir()
    ]
    aucs = [s["noise/auc_loss"] for s in aucs if "noise/auc_loss" in s]
    assert len(aucs) == 4 and statistics.fmean(aucs) == pytest.approx(
        statistics.fmean(float(r["noise_auc_loss_mean"]) for r in rows if r["noise_auc_loss_mean"])
    )
    names = (
        "accuracy_vs_noise.png",
        "learning_curves.png",
        "confusion_best.png",
        "noise_detection.png",
    )
    for name in names:
        assert (out / name).read_bytes()[:4] == b"\x89PNG", name
    md = (out / "report.md").read_text()
    assert "| method | configuration | n | selected |" in md and "![accuracy_vs_noise.png]" in md
    page = (out / "report.html").read_text()
    assert page.count("data:image/png;base64,") == 4 and "<table>" in page


@pytest.fixture(scope="module")
def noise_sweep(tmp_path_factory, cache_dir):
    root = tmp_path_factory.mktemp("study")
    # the recipe's grid, narrowed from the command line: 2 noise rates x SCN/baseline x 2 seeds
    args = ["-m", *TINY, "hparams_search=noise_study", "dataset.noise.rate=0.0,0.3", "trainer.seed=0,1",
            "trainer.epochs=2", "trainer.checkpoints=none", "hydra.sweep.dir=sweep"]  # fmt: skip
    proc = run_py(args, root, cache_dir)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return root / "sweep"


@pytest.mark.e2e
def test_single_runs_leave_std_blank_and_default_out_is_the_runs_dir(noise_sweep, tmp_path):
    one = tmp_path / "one"
    job = next(p for p in noise_sweep.iterdir() if (p / "summary.json").is_file())
    shutil.copytree(job, one / job.name)
    write_report(one)
    rows = list(csv.DictReader((one / "report.csv").open()))
    assert rows[0]["n"] == "1" and rows[0]["acc_std"] == "" and rows[0]["acc_mean"] != ""
    with pytest.raises(UserError, match="no runs under"):
        write_report(tmp_path / "empty_dir_that_does_not_hold_runs")
