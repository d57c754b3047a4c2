"""The benchmark CLI runs from any directory and writes the documented JSON shape."""

import json
import subprocess
import sys

import pytest


@pytest.mark.e2e
def test_bench_writes_the_documented_json(tmp_path):
    cmd = [sys.executable, "-m", "scn.bench", "--images", "140", "--sizes", "40", "24",
           "--batch", "16", "--batches", "2", "--train-batches", "1", "--train-size", "32",
           "--backbone", "resnet10t", "--workers", "1", "--train-workers", "1",
           "--out", "b.json", "--workdir", str(tmp_path)]  # fmt: skip
    proc = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    result = json.loads((tmp_path / "b.json").read_text())
    assert result["device"].startswith("cpu")
    assert set(result["pipeline"]) == {"40", "24"}
    for r in [*result["pipeline"].values(), result["train"]]:
        per_sample, cached = r["per_sample"], r["cached"]
        assert per_sample > 0 and cached > 0
        ratio = r.get("pipeline_ratio", r.get("train_ratio"))
        # the JSON rounds rates to 0.1 and ratios to 0.01: allow exactly that much disagreement
        slack = ratio * (0.05 / per_sample + 0.05 / cached) + 0.005
        assert ratio == pytest.approx(cached / per_sample, abs=slack)
    assert "pipeline 40 px" in proc.stderr and "train step" in proc.stderr
    t = result["train"]  # SCN+RAN next to SCN, same settings
    for method in ("scn_ran", "eac", "rul"):  # each method's step next to SCN's
        assert t[f"{method}_cached"] > 0
        rel = 0.05 / t["cached"] + 0.05 / t[f"{method}_cached"] + 0.01  # rounding, as above
        cost = t[f"{method}_step_cost"]
        assert cost == pytest.approx(t["cached"] / t[f"{method}_cached"], rel=rel), method
    assert "SCN+RAN train step" in proc.stderr
    assert [p.name for p in tmp_path.iterdir()] == ["b.json"]  # generated data cleaned up
