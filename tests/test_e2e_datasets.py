"""`python run.py dataset=<name>` for every dataset format, in one multirun over generated data
written in each release's exact layout."""

import csv

import pytest
import torch

from tests.conftest import finished_run
from tests.formats_affectnet import write_affectnet_csv, write_folder_tree
from tests.formats_fer import write_fer2013_csv, write_ferplus_folders
from tests.test_e2e import run_py

pytestmark = pytest.mark.e2e

# dataset -> (writer, classes the head must have)
DATASETS = {
    "affectnet": (lambda root: write_affectnet_csv(root, 2, 1, size=36), 8),
    "ferplus": (lambda root: write_ferplus_folders(root, 2, 1, 1, size=48), 8),
    "fer2013": (lambda root: write_fer2013_csv(root, 2, 1, 1), 7),
    "folder": (lambda root: write_folder_tree(root, ("1", "2", "3"), 4, 2, size=36), 3),
}


def test_every_dataset_trains_and_evaluates_with_the_usual_outputs(tmp_path, cache_dir):
    data = tmp_path / "data"
    for name, (write, _) in DATASETS.items():
        write(data / name)
    proc = run_py(
        [
            "-m",
            f"dataset={','.join(DATASETS)}",
            f"paths.data_dir={data}",
            "dataset.root=${paths.data_dir}/${dataset.name}",
            "dataset.image_size=32",
            "dataset.cache_size=36",
            "dataset.noise.rate=0.25",
            "dataset.sampler=balanced",
            "trainer.epochs=1",
            "trainer.checkpoints=last",
            "scn.relabel_epoch=1",
            "scn.margin_2=0.0",  # relabel every sample the model disagrees with
            "trainer.batch_size=8",
            "trainer.progress=false",
            "backbone=resnet10t",
            "logger=none",
            "hydra.sweep.dir=sweep",
        ],
        tmp_path,
        cache_dir,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    for n, (name, (_, classes)) in enumerate(DATASETS.items()):
        job = tmp_path / "sweep" / str(n)
        summary = finished_run(job)
        assert len(summary["test/class_acc"]) == classes
        assert summary["scn/noisy_labels_initial"] > 0  # noise on any dataset, audited
        state = torch.load(job / "last.pt", map_location="cpu", weights_only=True)
        assert len(state["class_names"]) == classes == state["model"]["head.fc.weight"].shape[0]
        rows = list(csv.DictReader((job / "relabels.csv").open()))
        assert rows, name  # margin_2=0 relabels; the rows name images as the dataset does
        assert all(r["new"] in state["class_names"] for r in rows)
        log = (job / "run.log").read_text()
        assert f"{name}: " in log and "train /" in log
    names = {r["sample"] for r in csv.DictReader((tmp_path / "sweep/2/relabels.csv").open())}
    assert all(s.startswith("Training/") and s.endswith(".png") for s in names)  # fer2013 pixels
    assert "dropped" in (tmp_path / "sweep/0/run.log").read_text()  # AffectNet ids 8-10
