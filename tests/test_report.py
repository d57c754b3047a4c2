"""The local results report, on a small real multirun of the noise-study recipe."""

import csv
import json
import statistics

import pytest

from scn.errors import UserError
from scn.report import write_report
from tests.conftest import TINY
from tests.test_e2e import run_py

pytestmark = pytest.mark.e2e


def baseline(overrides: str) -> bool:
    return "scn.enabled=false" in overrides.lower()  # Hydra writes swept booleans as False/True


@pytest.fixture(scope="module")
def noise_sweep(tmp_path_factory, cache_dir):
    root = tmp_path_factory.mktemp("study")
    # the recipe's grid, narrowed from the command line: 2 noise rates x SCN on/off x 2 seeds
    args = ["-m", *TINY, "hparams_search=noise_study", "dataset.noise.rate=0.0,0.3", "trainer.seed=0,1",
            "trainer.epochs=2", "trainer.checkpoints=none", "hydra.sweep.dir=sweep"]  # fmt: skip
    proc = run_py(args, root, cache_dir)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return root / "sweep"


def test_report_tables_average_seeds_per_configuration(noise_sweep, tmp_path):
    out = write_report(noise_sweep, tmp_path / "report")
    rows = list(csv.DictReader((out / "report.csv").open()))
    assert len(rows) == 4 and all(r["n"] == "2" for r in rows)
    pairs = {("dataset.noise.rate=0.3" in r["config"], baseline(r["config"])) for r in rows}
    assert pairs == {(False, False), (False, True), (True, False), (True, True)}
    assert not any("trainer.seed" in r["config"] or "hydra" in r["config"] for r in rows)
    # check one configuration against the runs by hand
    accs = []
    for job in noise_sweep.iterdir():
        overrides = (job / ".hydra/overrides.yaml").read_text() if job.is_dir() else ""
        if "dataset.noise.rate=0.3" in overrides and baseline(overrides):
            accs.append(json.loads((job / "summary.json").read_text())["test/acc"])
    row = next(r for r in rows if "noise.rate=0.3" in r["config"] and baseline(r["config"]))
    assert float(row["acc_mean"]) == pytest.approx(statistics.fmean(accs))
    assert float(row["acc_std"]) == pytest.approx(statistics.stdev(accs))
    # noise detection: the loss detector for every noisy run, alpha only with SCN, none when clean
    for r in rows:
        noisy, scn = "dataset.noise.rate=0.3" in r["config"], not baseline(r["config"])
        assert (r["noise_auc_loss_mean"] != "") == noisy and (r["noise_auc_mean"] != "") == (
            noisy and scn
        ), r
    aucs = [
        json.loads((j / "summary.json").read_text()) for j in noise_sweep.iterdir() if j.is_dir()
    ]
    aucs = [s["train/noise_auc_loss"] for s in aucs if "train/noise_auc_loss" in s]
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
    assert "| configuration | n |" in md and "![accuracy_vs_noise.png]" in md
    page = (out / "report.html").read_text()
    assert page.count("data:image/png;base64,") == 4 and "<table>" in page


def test_single_runs_leave_std_blank_and_default_out_is_the_runs_dir(noise_sweep, tmp_path):
    one = tmp_path / "one"
    job = next(p for p in noise_sweep.iterdir() if (p / "summary.json").is_file())
    import shutil

    shutil.copytree(job, one / job.name)
    write_report(one)
    rows = list(csv.DictReader((one / "report.csv").open()))
    assert rows[0]["n"] == "1" and rows[0]["acc_std"] == "" and rows[0]["acc_mean"] != ""
    with pytest.raises(UserError, match="no runs under"):
        write_report(tmp_path / "empty_dir_that_does_not_hold_runs")
