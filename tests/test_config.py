"""Every option of every group composes, instantiates and keeps the interface keys."""

from pathlib import Path

import pytest
import timm
import torch
from hydra.errors import ConfigCompositionException
from omegaconf import OmegaConf
from omegaconf.errors import ValidationError

from scn.app import main as app_main
from scn.config import RelabelScope, instantiate, to_container
from scn.errors import UserError
from scn.models.backbones import create_backbone, feature_dim, resolve_preprocessing
from tests.conftest import CONF, compose_cfg

# `_base.yaml`: a group's abstract base, extended by its options and not one itself
GROUPS = {
    g.name: sorted(p.stem for p in g.glob("[!_]*.yaml")) for g in CONF.iterdir() if g.is_dir()
}
GROUPS.pop("local")
OPTIONS = [(g, o) for g, opts in sorted(GROUPS.items()) for o in opts]

INTERFACE = [
    "trainer.epochs",
    "trainer.batch_size",
    "trainer.device",
    "trainer.seed",
    "trainer.checkpoints",
    "optimizer.lr",
    "optimizer.weight_decay",
    "dataset.root",
    "dataset.image_size",
    "dataset.noise.rate",
    "dataset.noise.seed",
    "dataset.label_file",
    "dataset.val_fraction",
    "dataset.format",
    "dataset.sampler",
    "dataset.skip_unreadable",
    "method.name",
    "scn.beta",
    "scn.margin_1",
    "scn.margin_2",
    "scn.relabel_epoch",
    "scn.relabel_scope",
    "scn.rr_weight",
    "logger.mode",
    "paths.cache_dir",
    "ckpt_path",
]


def test_groups_hold_the_required_options():
    for group, options in {
        "dataset": ["rafdb", "synthetic", "affectnet", "ferplus", "fer2013", "folder"],
        "optimizer": ["adam", "sgd"],
        "scheduler": ["cosine", "exponential", "step"],
        "logger": ["none", "wandb"],
        "experiment": ["demo", "rafdb_original"],
        "backbone": ["resnet18"],
        "method": ["scn", "baseline", "ran", "scn_ran", "eac", "rul"],
    }.items():
        assert set(options) <= set(GROUPS[group]), group


def test_dataset_options_extend_the_abstract_base_and_repeat_none_of_its_defaults():
    """One source per default: an option sets its own keys and what it changes, nothing else
    (`class_names: null` excepted: each option says what null means for its format)."""
    base = OmegaConf.to_container(OmegaConf.load(CONF / "dataset" / "_base.yaml"))
    for option in GROUPS["dataset"]:
        node = OmegaConf.to_container(OmegaConf.load(CONF / "dataset" / f"{option}.yaml"))
        assert node.pop("defaults") == ["_base", "_self_"], option
        assert {"name", "format", "root"} <= set(node), option
        for key, value in node.items():
            if isinstance(value, dict) and isinstance(base.get(key), dict):
                same = [k for k, v in value.items() if base[key].get(k) == v]
                assert not same, f"dataset={option} repeats {key}.{same} of _base.yaml"
            elif key in base and key != "class_names":
                assert value != base[key], f"dataset={option} repeats {key}: {value} of _base.yaml"
    with pytest.raises(UserError, match="dataset.format, dataset.name, dataset.root must be set"):
        app_main(compose_cfg(["dataset=_base"]))  # abstract: refused before anything runs


@pytest.mark.parametrize("group,option", OPTIONS)
def test_every_option_composes_and_keeps_interface_keys(group, option, tmp_path):
    key = f"{group}={option}"
    cfg = compose_cfg([key], tmp_path)
    for k in INTERFACE:
        assert OmegaConf.select(cfg, k, default="<missing>") != "<missing>", (
            f"{k} missing with {key}"
        )
    to_container(cfg)  # every interpolation resolves


@pytest.mark.parametrize("option", GROUPS["optimizer"])
def test_optimizers_instantiate_with_lr_for_every_group(option, tmp_path):
    cfg = compose_cfg([f"optimizer={option}", "optimizer.lr=0.123"], tmp_path)
    opt = instantiate(cfg.optimizer)(params=torch.nn.Linear(2, 2).parameters())
    assert all(g["lr"] == 0.123 for g in opt.param_groups)


@pytest.mark.parametrize("option", GROUPS["scheduler"])
def test_schedulers_instantiate_and_step(option, tmp_path):
    cfg = compose_cfg([f"scheduler={option}"], tmp_path)
    opt = instantiate(cfg.optimizer)(params=torch.nn.Linear(2, 2).parameters())
    sched = instantiate(cfg.scheduler)(optimizer=opt)
    for _ in range(cfg.scheduler.get("step_size", 1)):  # StepLR decays after step_size epochs
        opt.step()
        sched.step()
    assert opt.param_groups[0]["lr"] < cfg.optimizer.lr


@pytest.mark.parametrize("option", GROUPS["backbone"])
def test_backbones_build_and_run_forward_backward(option, tmp_path):
    extra = ["backbone.name=convnext_atto"] if option == "timm" else []
    cfg = compose_cfg([f"backbone={option}", *extra], tmp_path)
    model = create_backbone(cfg.backbone)
    pre = resolve_preprocessing(cfg.backbone, None, model)
    native = timm.data.resolve_model_data_config(model)
    assert pre.input_size == native["input_size"][-1] and pre.mean == tuple(native["mean"])
    size = max(32, getattr(model, "min_input_size", 0))  # inception_resnet_v1 needs 75 px
    assert resolve_preprocessing(cfg.backbone, size, model).input_size == size  # explicit wins
    feats = model(torch.randn(2, 3, size, size))
    assert feats.shape == (2, feature_dim(model))
    feats.sum().backward()


def test_original_recipe_defaults(tmp_path):
    cfg = compose_cfg([], tmp_path)
    assert cfg.optimizer.lr == 0.001 and cfg.optimizer.weight_decay == 0.0001
    assert cfg.scheduler.gamma == 0.9 and cfg.trainer.batch_size == 64 and cfg.trainer.epochs == 70
    assert (cfg.scn.beta, cfg.scn.margin_1, cfg.scn.margin_2, cfg.scn.relabel_epoch) == (
        0.7,
        0.07,
        0.2,
        10,
    )
    assert cfg.scn.relabel_scope == RelabelScope.all and cfg.scn.rr_weight == 1.0
    assert cfg.dataset.name == "rafdb" and cfg.logger.backend == "wandb"
    assert Path(cfg.dataset.root).name == "raf-basic"
    demo = compose_cfg(["experiment=demo"], tmp_path)
    assert demo.dataset.noise.rate == 0.2 and demo.scn.relabel_epoch <= demo.trainer.epochs / 2


def test_scn_schema_rejects_typos_and_wrong_types(tmp_path):
    with pytest.raises(ConfigCompositionException):
        compose_cfg(["scn.margn_1=0.1"], tmp_path)
    with pytest.raises((ConfigCompositionException, ValidationError)):
        compose_cfg(["scn.relabel_scope=some"], tmp_path)
    with pytest.raises((ConfigCompositionException, ValidationError)):
        compose_cfg(["scn.relabel_epoch=soon"], tmp_path)


def test_feature_sizes_come_from_the_model(tmp_path):
    sizes = {}
    for option in ("resnet18", "vgg16", "iresnet18"):
        sizes[option] = feature_dim(
            create_backbone(compose_cfg([f"backbone={option}"], tmp_path).backbone)
        )
    assert sizes == {"resnet18": 512, "vgg16": 4096, "iresnet18": 512}


def test_timm_option_needs_a_name(tmp_path):
    from scn.errors import UserError

    with pytest.raises(UserError, match="backbone.name is not set"):
        create_backbone(compose_cfg(["backbone=timm"], tmp_path).backbone)


@pytest.mark.parametrize("recipe", GROUPS["hparams_search"])
def test_sweep_recipes_name_keys_that_exist(recipe, tmp_path):
    cfg = compose_cfg([f"hparams_search={recipe}"], tmp_path)
    params = cfg.hydra.sweeper.params
    assert params, recipe
    for key in params:
        assert OmegaConf.select(cfg, key, default="<missing>") != "<missing>", f"{recipe}: {key}"
    if recipe == "optuna":
        assert "optuna" in cfg.hydra.sweeper._target_ and cfg.optimized_metric == "val/acc"
        assert cfg.dataset.val_fraction > 0  # searches select on validation, never on test


def test_noise_study_grid_is_the_papers_comparison(tmp_path):
    params = compose_cfg(["hparams_search=noise_study"], tmp_path).hydra.sweeper.params
    assert params["dataset.noise.rate"] == "0.0,0.1,0.2,0.3"
    assert params["method"] == "scn,baseline" and len(params["trainer.seed"].split(",")) >= 3


def test_methods_recipe_runs_every_method_over_three_seeds(tmp_path):
    from scn.methods import METHODS

    params = compose_cfg(["hparams_search=methods"], tmp_path).hydra.sweeper.params
    assert sorted(params["method"].split(",")) == sorted(METHODS)
    assert params["trainer.seed"] == "0,1,2"


def test_slurm_launcher_composes(tmp_path):
    cfg = compose_cfg(["launcher=slurm"], tmp_path)
    assert "submitit" in cfg.hydra.launcher._target_ and cfg.hydra.launcher.gpus_per_node == 1


@pytest.mark.parametrize(
    "sweep", sorted((CONF.parent / "sweeps").glob("*.yaml")), ids=lambda p: p.stem
)
def test_wandb_sweep_files_pass_existing_keys_to_run_py(sweep, tmp_path):
    import yaml

    spec = yaml.safe_load(sweep.read_text())
    assert spec["program"] == "run.py" and "${args_no_hyphens}" in spec["command"]
    assert spec["metric"]["name"] in ("test/acc", "val/acc")
    cfg = compose_cfg([], tmp_path)
    for key, values in spec["parameters"].items():
        if key in GROUPS:  # a config group: its values are option names (method: [scn, ...])
            assert set(values["values"]) <= set(GROUPS[key]), f"{sweep.name}: {key}"
            continue
        assert OmegaConf.select(cfg, key, default="<missing>") != "<missing>", (
            f"{sweep.name}: {key}"
        )
        assert all(not isinstance(v, str) for v in values["values"])  # 0.001, not '1e-3''


def test_pretrain_group_is_typed_and_the_demo_pretrains(tmp_path):
    cfg = compose_cfg(["experiment=pretrain_demo"], tmp_path)
    assert cfg.task == "pretrain" and cfg.dataset.format == "identities"
    assert cfg.dataset.image_size == compose_cfg(["experiment=demo"], tmp_path).dataset.image_size
    defaults = compose_cfg(["dataset=identities"], tmp_path)
    assert defaults.pretrain.loss.value == "arcface" and defaults.pretrain.scale == 64
    assert defaults.pretrain.margin is None and defaults.pretrain.embedding_dim == 512
    assert (
        defaults.dataset.min_images_per_identity == 2 and defaults.dataset.verify_identities == 0.1
    )
    with pytest.raises(ConfigCompositionException):
        compose_cfg(["pretrain.margn=0.3"], tmp_path)
    with pytest.raises((ConfigCompositionException, ValidationError)):
        compose_cfg(["pretrain.loss=triplet"], tmp_path)
