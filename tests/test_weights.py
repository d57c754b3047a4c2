"""Pretrained files in each format users bring: built here with the exact layout, shapes and
serialization, loaded, and compared tensor by tensor; and the errors for files that do not fit."""

import logging

import pytest
import timm
import torch
from omegaconf import OmegaConf
from safetensors.torch import save_file

import scn.models.iresnet  # noqa: F401
from scn.checkpoints import save_checkpoint
from scn.errors import UserError
from scn.methods.scn import SCNModel
from scn.models.backbones import resolve_preprocessing
from scn.models.weights import load_pretrained


def backbone_state(name: str, seed: int = 123) -> dict[str, torch.Tensor]:
    torch.manual_seed(seed)
    return timm.create_model(name, num_classes=0).state_dict()


def fresh_model(name: str, num_classes: int = 7) -> SCNModel:
    torch.manual_seed(0)
    return SCNModel(timm.create_model(name, num_classes=0), num_classes)


def assert_loaded(model: SCNModel, expected: dict[str, torch.Tensor], heads_before: dict):
    got = model.backbone.state_dict()
    assert got.keys() == expected.keys()
    for k, v in expected.items():
        assert torch.equal(got[k], v), k
    for k, v in model.head.state_dict().items():
        assert torch.equal(v, heads_before[k]), f"head {k} changed"


def heads_of(model: SCNModel) -> dict:
    return {k: v.clone() for k, v in model.head.state_dict().items()}


def bcfg(**kw):
    return OmegaConf.create({"input_size": None, "mean": None, "std": None, **kw})


def test_original_scn_msceleb_tar_legacy_pickle(tmp_path):
    src = backbone_state("resnet18")
    sd = {f"module.{k}": v for k, v in src.items()}
    sd |= {
        "module.feature.weight": torch.randn(256, 512),
        "module.feature.bias": torch.randn(256),
        "module.fc.weight": torch.randn(87020, 256),
        "module.fc.bias": torch.randn(87020),
    }
    path = tmp_path / "ijba_res18_naive.pth.tar"
    torch.save({"epoch": 30, "arch": "resnet18", "state_dict": sd, "best_prec1": 95.1}, path,
               _use_new_zipfile_serialization=False)  # fmt: skip
    model = fresh_model("resnet18")
    before = heads_of(model)
    report = load_pretrained(model, path)
    assert report.format == "scn_msceleb" and report.loaded == report.total == len(src)
    assert sorted(report.dropped) == ["fc.bias", "fc.weight", "feature.bias", "feature.weight"]
    assert_loaded(model, src, before)
    # the file was trained on [0, 1] inputs without mean/std; an explicit value still wins
    pre = resolve_preprocessing(bcfg(), None, model.backbone, report.preprocessing)
    assert (pre.input_size, pre.mean, pre.std) == (224, (0.0,) * 3, (1.0,) * 3)
    pre = resolve_preprocessing(bcfg(mean=[0.5] * 3), 112, model.backbone, report.preprocessing)
    assert (pre.input_size, pre.mean, pre.std) == (112, (0.5,) * 3, (1.0,) * 3)


def test_resnet18_msceleb_pth(tmp_path):
    src = backbone_state("resnet18")
    path = tmp_path / "resnet18_msceleb.pth"
    torch.save(
        {"state_dict": src | {"fc.weight": torch.randn(1000, 512), "fc.bias": torch.randn(1000)}},
        path,
    )
    model = fresh_model("resnet18")
    before = heads_of(model)
    report = load_pretrained(model, path)
    assert report.format == "msceleb" and report.dropped == ["fc.weight", "fc.bias"]
    assert_loaded(model, src, before)
    assert report.preprocessing == {}  # ImageNet statistics from the model config apply


@pytest.mark.parametrize("name", ["iresnet18", "iresnet34"])
def test_arcface_backbone_pth_loads_strictly_into_iresnet(tmp_path, name):
    src = backbone_state(name)
    assert {
        "prelu.weight",
        "features.weight",
        "fc.weight",
        "layer1.0.downsample.0.weight",
    } <= src.keys()
    assert src["fc.weight"].shape == (512, 512 * 7 * 7)
    path = tmp_path / "backbone.pth"
    torch.save(src, path)
    model = fresh_model(name)
    before = heads_of(model)
    report = load_pretrained(model, path)
    assert report.format == "arcface" and report.dropped == []
    assert_loaded(model, src, before)
    pre = resolve_preprocessing(bcfg(), None, model.backbone, report.preprocessing)
    assert (pre.input_size, pre.mean, pre.std) == (112, (0.5,) * 3, (0.5,) * 3)
    # any other input size still runs: layer4 is pooled to 7x7 before fc
    model.eval()
    assert model(torch.randn(2, 3, 64, 64)).logits.shape == (2, 7)


def test_arcface_file_is_refused_by_resnet18(tmp_path):
    path = tmp_path / "backbone.pth"
    torch.save(backbone_state("iresnet18"), path)
    with pytest.raises(UserError) as e:
        load_pretrained(fresh_model("resnet18"), path)
    msg = str(e.value)
    assert "format 'arcface'" in msg and "unexpected: " in msg and "prelu.weight" in msg
    assert "mis-shaped: " in msg and "backbone.weights_strict=false" in msg


@pytest.mark.parametrize("suffix", [".pth", ".safetensors"])
def test_imagenet_weights_torchvision_and_timm(tmp_path, suffix):
    src = backbone_state("resnet10t")
    full = src | {"fc.weight": torch.randn(1000, 512), "fc.bias": torch.randn(1000)}
    path = tmp_path / f"resnet10t{suffix}"
    save_file(full, str(path)) if suffix == ".safetensors" else torch.save(full, path)
    model = fresh_model("resnet10t")
    before = heads_of(model)
    report = load_pretrained(model, path)
    assert report.format == "imagenet" and sorted(report.dropped) == ["fc.bias", "fc.weight"]
    assert_loaded(model, src, before)


def test_own_checkpoint_loads_backbone_and_matching_heads(tmp_path):
    trained = fresh_model("resnet10t")
    torch.nn.init.normal_(trained.head.fc.weight)
    path = tmp_path / "best.pt"
    pre = {"input_size": 48, "mean": [0.1, 0.2, 0.3], "std": [0.4, 0.5, 0.6]}
    save_checkpoint(path, {"model": trained.state_dict(), "config": {}, "preprocessing": pre})
    model = fresh_model("resnet10t")
    report = load_pretrained(model, path)
    assert report.format == "scn" and report.heads_loaded
    for k, v in trained.state_dict().items():
        assert torch.equal(model.state_dict()[k], v), k
    assert report.preprocessing == pre
    # a different number of classes: backbone only, heads stay fresh
    other = fresh_model("resnet10t", num_classes=6)
    before = heads_of(other)
    report = load_pretrained(other, path)
    assert not report.heads_loaded
    assert_loaded(
        other,
        {k[9:]: v for k, v in trained.state_dict().items() if k.startswith("backbone.")},
        before,
    )


def test_unknown_keys_missing_keys_and_non_strict(tmp_path, caplog):
    src = backbone_state("resnet10t")
    path = tmp_path / "w.pth"
    broken = dict(src) | {"extra.weight": torch.zeros(3)}
    del broken["layer1.0.conv1.weight"]
    torch.save(broken, path)
    with pytest.raises(
        UserError, match=r"missing: layer1\.0\.conv1\.weight; unexpected: extra\.weight"
    ):
        load_pretrained(fresh_model("resnet10t"), path)
    model = fresh_model("resnet10t")
    with caplog.at_level(logging.WARNING):
        report = load_pretrained(model, path, strict=False)
    assert "does not fit" in caplog.text
    assert report.loaded == len(src) - 1
    assert torch.equal(
        model.backbone.state_dict()["layer2.0.conv1.weight"], src["layer2.0.conv1.weight"]
    )


def test_truncated_missing_and_foreign_pickles(tmp_path):
    path = tmp_path / "w.pth"
    torch.save(backbone_state("resnet10t"), path)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(UserError, match="cannot load weights file .*w.pth"):
        load_pretrained(fresh_model("resnet10t"), path)
    with pytest.raises(UserError, match="weights file not found"):
        load_pretrained(fresh_model("resnet10t"), tmp_path / "nope.pth")
    pickled = tmp_path / "pickled.pth"
    torch.save({"state_dict": backbone_state("resnet10t"), "args": Opaque()}, pickled)
    with pytest.raises(UserError, match="backbone.weights_unsafe=true"):
        load_pretrained(fresh_model("resnet10t"), pickled)
    assert load_pretrained(fresh_model("resnet10t"), pickled, unsafe=True).loaded > 0


class Opaque:
    """Stands in for the argparse namespaces and other objects some training scripts pickle."""


def test_training_starts_from_a_weights_file_and_records_its_preprocessing(
    tiny_cfg, tmp_path, caplog
):
    from scn.app import train
    from scn.checkpoints import load_checkpoint

    src = backbone_state("iresnet18")
    path = tmp_path / "backbone.pth"
    torch.save(src, path)
    cfg = tiny_cfg("backbone=iresnet18", f"backbone.weights={path}", "trainer.epochs=1",
                   "trainer.checkpoints=last", "dataset.image_size=null")  # fmt: skip
    with caplog.at_level(logging.INFO):
        train(cfg)
    assert f"loaded {len(src)} of {len(src)} tensors" in caplog.text
    state = load_checkpoint(tmp_path / "run/last.pt")
    assert state["preprocessing"] == {"input_size": 112, "mean": [0.5] * 3, "std": [0.5] * 3}


def test_torchvision_vgg16_layout_maps_onto_timm_vgg16():
    from scn.models.weights import filter_imagenet

    model = timm.create_model("vgg16", num_classes=0)
    target = model.state_dict()
    tv = {k: torch.empty(v.shape) for k, v in target.items() if k.startswith("features.")}
    tv |= {
        "classifier.0.weight": torch.empty(4096, 25088), "classifier.0.bias": torch.empty(4096),
        "classifier.3.weight": torch.empty(4096, 4096), "classifier.3.bias": torch.empty(4096),
        "classifier.6.weight": torch.empty(1000, 4096), "classifier.6.bias": torch.empty(1000),
    }  # fmt: skip
    fc1 = tv["classifier.0.weight"]
    sd, dropped = filter_imagenet(tv, model)
    assert sorted(dropped) == ["classifier.6.bias", "classifier.6.weight"]
    assert sd.keys() == target.keys()
    assert all(sd[k].shape == target[k].shape for k in target)
    # torchvision flattens the 512x7x7 map channel-first, as the conv kernel's layout does
    assert torch.equal(sd["pre_logits.fc1.weight"].reshape(4096, -1), fc1)
