"""Use a trained model: task=eval, scn.predict, scn.features and load_model, on a model trained here."""

import csv
import json
import shutil

import numpy as np
import pytest
import torch

from scn.app import main as run_task
from scn.app import train
from scn.errors import UserError
from scn.features import export
from scn.inference import load_model
from scn.predict import predict
from tests.conftest import TINY, compose_cfg


@pytest.fixture(scope="module")
def trained(tmp_path_factory, cache_dir):
    out = tmp_path_factory.mktemp("trained")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("SCN_CACHE_DIR", str(cache_dir))
        summary = train(compose_cfg([*TINY, "trainer.epochs=2"], out))
    return out, summary


def test_eval_reproduces_the_training_accuracy_and_writes_reports(trained, tmp_path):
    run_dir, summary = trained
    cfg = compose_cfg([*TINY, "task=eval", f"ckpt_path={run_dir / 'best.pt'}"], tmp_path / "eval")
    assert run_task(cfg) == summary["test/acc"]  # best.pt is the selected epoch
    report = json.loads((tmp_path / "eval/eval.json").read_text())
    assert report["test/acc"] == summary["test/acc"]
    assert report["test/mean_class_acc"] == summary["test/mean_class_acc"]
    assert report["images"] == 21 and set(report["hflip"]) == {
        "acc",
        "mean_class_acc",
        "class_acc",
        "confusion",
    }
    confusion = json.loads((tmp_path / "eval/confusion.json").read_text())
    assert sum(map(sum, confusion["confusion"])) == 21 and confusion["class_names"][0] == "Surprise"
    assert (tmp_path / "eval/confusion.png").read_bytes()[:4] == b"\x89PNG"


def test_eval_on_train_split_and_missing_checkpoint(trained, tmp_path):
    run_dir, _ = trained
    overrides = ["task=eval", "eval.split=train", "eval.hflip=false", "optimized_metric=train/acc"]
    acc = run_task(
        compose_cfg([*TINY, *overrides, f"ckpt_path={run_dir / 'last.pt'}"], tmp_path / "e")
    )
    report = json.loads((tmp_path / "e/eval.json").read_text())
    assert report["images"] == 42 and report["train/acc"] == acc and "hflip" not in report
    with pytest.raises(UserError, match="task=eval needs ckpt_path"):
        run_task(compose_cfg([*TINY, "task=eval"], tmp_path / "f"))


def test_predict_agrees_with_the_evaluation_path(trained, tmp_path, tiny_synthetic):
    run_dir, summary = trained
    images = tiny_synthetic / "Image/aligned"
    test_images = tmp_path / "faces"
    test_images.mkdir()
    for p in sorted(images.glob("test_*")):
        shutil.copy(p, test_images / p.name)
    out = tmp_path / "pred.csv"
    assert predict(str(run_dir / "best.pt"), str(test_images), str(out)) == 21
    rows = list(csv.DictReader(out.open()))
    assert (
        list(rows[0])[:3] == ["path", "prediction", "p_Surprise"] and list(rows[0])[-1] == "alpha"
    )
    for r in rows:
        probs = [
            float(r[f"p_{n}"])
            for n in ("Surprise", "Fear", "Disgust", "Happiness", "Sadness", "Anger", "Neutral")
        ]
        assert abs(sum(probs) - 1) < 1e-4 and 0 < float(r["alpha"]) < 1
    labels = {}
    names = ["Surprise", "Fear", "Disgust", "Happiness", "Sadness", "Anger", "Neutral"]
    for line in (tiny_synthetic / "EmoLabel/list_patition_label.txt").read_text().splitlines():
        name, lab = line.split()
        labels[name] = names[int(lab) - 1]
    correct = sum(
        r["prediction"] == labels[r["path"].rsplit("/", 1)[1].replace("_aligned", "")] for r in rows
    )
    assert correct / 21 == pytest.approx(summary["test/acc"])  # same predictions as training's eval
    again = tmp_path / "again.csv"
    predict(str(run_dir / "best.pt"), str(test_images), str(again), batch_size=5)
    assert again.read_text() == out.read_text()  # deterministic, whatever the batch size
    # the same split read as a dataset: rows carry the dataset's names, predictions are the same
    split = tmp_path / "split.csv"
    assert predict(str(run_dir / "best.pt"), str(tiny_synthetic), str(split), dataset="synthetic",
                   split="test") == 21  # fmt: skip
    by_name = {r["path"]: r["prediction"] for r in csv.DictReader(split.open())}
    assert sorted(by_name) == sorted(n for n in labels if n.startswith("test_"))
    assert all(by_name[r["path"].rsplit("/", 1)[1].replace("_aligned", "")] == r["prediction"]
               for r in rows)  # fmt: skip


def test_predict_skips_unreadable_images_and_refuses_empty_folders(
    trained, tmp_path, tiny_synthetic, caplog
):
    run_dir, _ = trained
    folder = tmp_path / "mixed"
    folder.mkdir()
    for p in sorted((tiny_synthetic / "Image/aligned").glob("test_000*"))[:3]:
        shutil.copy(p, folder / p.name)
    (folder / "broken.jpg").write_bytes(b"not an image")
    assert predict(str(run_dir / "best.pt"), str(folder), str(tmp_path / "p.csv")) == 3
    assert "1 of 4 images could not be read" in caplog.text
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(UserError, match="no images in"):
        predict(str(run_dir / "best.pt"), str(empty), str(tmp_path / "q.csv"))


def test_features_from_a_checkpoint_mirror_the_tree_and_consolidate(
    trained, tmp_path, tiny_synthetic
):
    run_dir, _ = trained
    src = tmp_path / "tree"
    for i, p in enumerate(sorted((tiny_synthetic / "Image/aligned").glob("test_*"))[:6]):
        (src / f"person{i % 2}").mkdir(parents=True, exist_ok=True)
        shutil.copy(p, src / f"person{i % 2}" / p.name)
    out = tmp_path / "feats"
    assert export(str(run_dir / "best.pt"), str(src), str(out)) == 6
    npys = sorted(p.relative_to(out).as_posix() for p in out.rglob("*.npy"))
    assert len(npys) == 6 and all(n.startswith(("person0/", "person1/")) for n in npys)
    z = np.load(out / "features.npz")
    assert (
        z["features"].shape == (6, 512)
        and z["logits"].shape == (6, 7)
        and z["alphas"].shape == (6,)
    )
    assert (z["labels"] == -1).all()
    first = np.load(out / npys[0])
    stem = npys[0].split("/")[1].removesuffix(".npy")
    idx = [p.endswith(f"/{stem}.jpg") for p in z["paths"]].index(True)
    assert np.allclose(first, z["features"][idx])
    # the features are the model's pooled backbone output for the image
    lm = load_model(run_dir / "best.pt", "cpu")
    from scn.data.sources import load_rgb

    x = lm.transform(load_rgb(z["paths"][0])).unsqueeze(0)
    assert np.allclose(lm(x).features.numpy()[0], z["features"][0], atol=1e-5)


def test_features_of_a_dataset_split_and_of_raw_backbone_weights(tmp_path, tiny_synthetic):
    import timm

    torch.manual_seed(3)
    weights = tmp_path / "backbone.pth"
    torch.save(timm.create_model("iresnet18", num_classes=0).state_dict(), weights)
    out = tmp_path / "f"
    assert (
        export(str(weights), str(tiny_synthetic), str(out), backbone="iresnet18", split="test")
        == 21
    )
    z = np.load(out / "features.npz")
    assert z["features"].shape == (21, 512) and z["logits"].shape == (21, 0)
    assert np.isnan(z["alphas"]).all() and sorted(set(z["labels"].tolist())) == list(range(7))
    with pytest.raises(UserError, match="--backbone NAME"):
        export(str(weights), str(tiny_synthetic), str(out))
    with pytest.raises(UserError, match="does not fit backbone"):
        export(str(weights), str(tiny_synthetic), str(out), backbone="resnet18", split="test")


def test_checkpoint_that_does_not_fit_is_named(trained, tmp_path):
    run_dir, _ = trained
    state = torch.load(run_dir / "last.pt", weights_only=True)
    state["config"]["backbone"]["name"] = "resnet18"  # weights are resnet10t
    bad = tmp_path / "bad.pt"
    torch.save(state, bad)
    with pytest.raises(UserError, match="bad.pt: the model entry does not fit backbone resnet18"):
        load_model(bad)


def test_a_checkpoint_from_before_a_key_takes_its_default_from_conf(trained, tmp_path):
    """A checkpoint written before a key existed loads with the key's default from conf/ (the
    one source of defaults), keeps its own values, and evaluates to its training accuracy."""
    run_dir, summary = trained
    state = torch.load(run_dir / "best.pt", weights_only=True)
    for group, key in (("dataset", "pipeline"), ("dataset", "sampler"), ("trainer", "cuda_graphs"),
                       ("scn", "rr_scope")):  # fmt: skip
        del state["config"][group][key]
    state["config"]["dataset"]["retired"] = 1  # a key this release no longer has is kept
    old = tmp_path / "old.pt"
    torch.save(state, old)
    cfg = load_model(old).config
    assert (cfg.dataset.pipeline, cfg.dataset.sampler, cfg.trainer.cuda_graphs) == (
        "cached",
        "uniform",
        "auto",
    )
    assert cfg.scn.rr_scope == "global" and cfg.dataset.retired == 1
    assert cfg.dataset.synthetic.train_per_class == 6  # the run's value, not dataset=synthetic's
    # task=eval without a dataset override reads the checkpoint's own dataset config
    eval_cfg = compose_cfg(["task=eval", f"ckpt_path={old}", "logger=none"], tmp_path / "eval")
    assert run_task(eval_cfg) == summary["test/acc"]


def test_cli_writes_predictions_csv_in_the_current_directory(trained, tmp_path, tiny_synthetic):
    import subprocess
    import sys

    run_dir, _ = trained
    image = sorted((tiny_synthetic / "Image/aligned").glob("test_*"))[0]
    cmd = [sys.executable, "-m", "scn.predict", str(run_dir / "best.pt"), str(image)]
    proc = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert len((tmp_path / "predictions.csv").read_text().splitlines()) == 2
    proc = subprocess.run([*cmd[:3], str(tmp_path / "none.pt"), str(image)], cwd=tmp_path,
                          capture_output=True, text=True, timeout=300)  # fmt: skip
    assert proc.returncode == 2 and "checkpoint not found" in proc.stderr
