"""Every experiment file composes, validates and instantiates; the tables follow the paper's design.

Each ``conf/experiment/<table>/<row>.yaml`` is composed through ``train.yaml`` like the CLI would, checked
with :func:`check_train_config` (weights set to null or to an existing stand-in file, so only the
combination logic is judged) and turned into its DataModule (no setup), LightningModule (tiny widths, the
fine-tune strategy applied) and Trainer. The per-table checks encode what each paper table compares.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import pytorch_lightning as pl
import torch
from omegaconf import DictConfig, OmegaConf, open_dict
from pytorch_lightning.callbacks import ModelCheckpoint

from svfseg.config_checks import ConfigError, check_train_config
from svfseg.data.datamodule import FewShotDataModule
from svfseg.data.fold import FoldSpec
from svfseg.lightning.callbacks import FinetuneCallback
from svfseg.lightning.module import FewShotSegModule
from svfseg.methods.pspnet import PSPNet, backbone_shell, save_base_learner
from svfseg.tasks.builders import build_callbacks, build_datamodule, build_module, build_trainer, plain
from svfseg.tasks.resolve import TrainRun
from tests.helpers.base_learner import write_base_learner_record
from tests.helpers.hydra import CONF_DIR, compose_config

EXPERIMENT_DIR = CONF_DIR / "experiment"
FILES = sorted(EXPERIMENT_DIR.rglob("*.yaml"))
NAMES = [p.relative_to(EXPERIMENT_DIR).with_suffix("").as_posix() for p in FILES]
# Recipes of the runs without SVF: poly 0.9 at the method's own lr.
FREEZE_LR = {"baseline": 0.15, "pfenet": 0.025, "bam": 0.05}
TINY = ["backbone.width_mult=0.125", "method.reduce_dim=32"]


def _compose(name: str, out: Path, extra: list[str] | None = None) -> DictConfig:
    return compose_config(
        "train",
        [
            f"experiment={name}",
            f"paths.output_dir={out}",
            "paths.weights_dir=/nonexistent/weights",
            "paths.data_dir=/nonexistent/data",
            *(extra or []),
        ],
    )


def _for_checks(cfg: DictConfig, stand_in: Path) -> DictConfig:
    """No ImageNet file; BAM's base learner points to a stand-in with the record stage 1 writes for the
    row (the checks read only the record), the dataset root to an existing folder (no Pascal or COCO
    here; the lists are not built)."""
    cfg = cfg.copy()
    stand_in.parent.mkdir(parents=True, exist_ok=True)
    with open_dict(cfg):
        cfg.backbone.pretrained = None
        cfg.dataset.root = str(stand_in.parent)
        if cfg.method.name == "bam":
            cfg.method.base_learner = str(write_base_learner_record(stand_in, cfg))
    return cfg


@dataclass
class Built:
    cfg: DictConfig
    resolved: dict[str, Any]
    datamodule: FewShotDataModule
    module: FewShotSegModule
    trainer: pl.Trainer
    trained: dict[str, list[tuple[str, torch.Size]]]  # param group name -> (parameter name, shape)


@pytest.fixture(scope="module")
def experiments(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Built]:
    tmp = tmp_path_factory.mktemp("experiments")
    built: dict[str, Built] = {}
    for name in NAMES:
        cfg = _compose(name, tmp / name, TINY)
        check_cfg = _for_checks(cfg, tmp / name.replace("/", "_") / "pspnet.pt")
        check_train_config(check_cfg)
        run = TrainRun.from_config(check_cfg)
        datamodule = build_datamodule(run)
        module = build_module(run, load_pretrained=False)
        module.apply_finetune()
        names = {id(p): n for n, p in module.named_parameters()}
        trained = {
            g["name"]: [(names[id(p)], p.shape) for p in g["params"]] for g in module.param_groups or []
        }
        trainer = build_trainer(run, build_callbacks(run), [])
        resolved = OmegaConf.to_container(_compose(name, Path("/out")), resolve=True)
        built[name] = Built(cfg, resolved, datamodule, module, trainer, trained)  # type: ignore[arg-type]
    return built


def _rows(experiments: dict[str, Built], table: str) -> dict[str, Built]:
    return {n.split("/", 1)[1]: b for n, b in experiments.items() if n.startswith(f"{table}/")}


def _without(resolved: dict[str, Any], *keys: str) -> dict[str, Any]:
    """A deep copy without the dotted ``keys`` (absent ones are skipped)."""
    out = OmegaConf.to_container(OmegaConf.create(resolved))
    assert isinstance(out, dict)
    for key in keys:
        *parents, last = key.split(".")
        node = out
        for p in parents:
            node = node[p]
        node.pop(last, None)
    return out


def _backbone_trained(b: Built) -> list[tuple[str, torch.Size]]:
    return [entry for name, params in b.trained.items() if name.startswith("backbone.") for entry in params]


def _trained_stages(b: Built) -> set[str]:
    return {name.split(".", 1)[1] for name in b.trained if name.startswith("backbone.")}


# ----------------------------------------------------------------------------------------- every file
def test_every_experiment_file_composes_validates_and_instantiates(experiments: dict[str, Built]) -> None:
    assert len(FILES) >= 60
    assert len(experiments) == len(FILES) == len(set(NAMES))
    for name, b in experiments.items():
        cfg = b.cfg
        assert cfg.table == name.split("/")[0], name
        assert isinstance(cfg.row, str) and cfg.row.strip(), name
        assert cfg.seed == 321 and cfg.stage == "meta" and cfg.fold == 0 and cfg.shot == 1, name
        dm = b.datamodule
        assert isinstance(dm, FewShotDataModule)
        assert (dm.dataset, dm.fold, dm.shot) == (cfg.dataset.name, 0, 1), name
        assert dm.n_episodes == cfg.dataset.n_episodes and dm.filter_novel == cfg.dataset.filter_novel
        assert dm.batch_size == cfg.dataset.batch_size == 8, name  # the paper's batch of 8, one device
        assert dm.with_base_label == (cfg.method.name == "bam"), name
        assert dm.train_list is None  # nothing read yet
        module = b.module
        assert module.finetune_spec == plain(cfg.finetune), name
        assert module.hparams["run"]["method"]["name"] == module.spec.method_name == cfg.method.name
        assert module.model.backbone.name == cfg.backbone.name, name
        assert b.trained.get("head"), name
        trainer = b.trainer
        assert trainer.max_epochs == cfg.dataset.epochs, name
        finetune_cb = trainer.callbacks[0]
        # the strategy built once with the run's spec: the callback injects that very object
        assert isinstance(finetune_cb, FinetuneCallback) and finetune_cb.strategy is module.spec.strategy
        ckpt = [c for c in trainer.callbacks if isinstance(c, ModelCheckpoint)]
        assert len(ckpt) == 1 and ckpt[0].monitor == "val/miou" and ckpt[0].mode == "max", name


def test_rows_of_a_table_are_distinct_and_recipes_match_the_strategy(experiments: dict[str, Built]) -> None:
    tables: dict[str, list[str]] = {}
    for b in experiments.values():
        tables.setdefault(b.cfg.table, []).append(b.cfg.row)
        optim, method = b.cfg.optim, b.cfg.method.name
        # Table 9's frozen "(ours)" rows take SVF's recipe on purpose, and so does every row of the PEFT
        # comparison (docs/peft-comparison.md: one recipe for all its rows, set on the command line).
        svf_recipe_on_frozen = (
            b.cfg.table == "table9" and b.cfg.row.endswith("(ours)")
        ) or b.cfg.table == "peft"
        if b.cfg.finetune.name == "freeze" and not svf_recipe_on_frozen:
            assert (optim.schedule, optim.lr) == ("poly", FREEZE_LR[method]), b.cfg.row
        else:  # paper section 4.1: SGD, lr 0.015, cosine decay whenever the backbone is fine-tuned
            assert (optim.schedule, optim.lr) == ("cosine", 0.015), b.cfg.row
    for table, rows in tables.items():
        assert len(rows) == len(set(rows)), (table, rows)
    tables_with_rows = {f"table{i}" for i in (1, 2, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13)}
    beyond_the_paper = {"vit", "peft"}
    assert set(tables) == tables_with_rows | {"figure2", "figure3"} | beyond_the_paper
    assert sorted(tables["table9"]) == sorted(
        f"{m} ({v})" for m in ("baseline", "PFENet", "BAM") for v in ("original recipe", "ours")
    )


def test_strategies_train_exactly_what_the_row_says(experiments: dict[str, Built]) -> None:
    for name, b in experiments.items():
        ft = b.cfg.finetune
        backbone = _backbone_trained(b)
        if ft.name == "freeze":
            assert not backbone, name
            continue
        assert backbone, name
        leaves = {n.rsplit(".", 1)[1] for n, _ in backbone}
        if ft.name == "svf":
            expected = {
                "direct": set(ft.train),
                "exp": {"s_delta"},
                "scale_shift": {"s_scale", "s_shift"},  # SALT
            }[ft.parametrization]
            if ft.get("residual_rank"):  # SALT's low-rank update of the other directions
                expected |= {"s_lora_a", "s_lora_b"}
            if ft.train_bn:
                expected |= {"weight", "bias"}
            assert leaves == expected, name
            assert _trained_stages(b) == set(ft.stages), name
        elif ft.name == "bn":
            assert leaves == {"weight", "bias"} and all(len(s) == 1 for _, s in backbone), name
        elif ft.name == "part":
            assert _trained_stages(b) == set(ft.stages), name
            kernels = {tuple(s[-2:]) for n, s in backbone if n.endswith("weight") and len(s) == 4}
            want = {"1x1": {(1, 1)}, "3x3": {(3, 3)}, "all": {(1, 1), (3, 3)}}[ft.conv_type]
            assert kernels == want, name
        elif ft.name == "full":
            assert {"layer1", "layer2", "layer3", "layer4"} <= _trained_stages(b), name


# ----------------------------------------------------------------------------------------- per table
def test_table1_and_table2_pair_each_method_with_and_without_svf(experiments: dict[str, Built]) -> None:
    for table, dataset in (("table1", "pascal"), ("table2", "coco")):
        rows = _rows(experiments, table)
        stems = {r.rsplit("_", 1)[0] for r in rows}
        assert stems == {f"{b}_{m}" for b in ("resnet50", "vgg16") for m in ("baseline", "pfenet", "bam")}
        assert len(rows) == 12
        for stem in stems:
            freeze, svf = rows[f"{stem}_freeze"], rows[f"{stem}_svf"]
            assert (freeze.cfg.finetune.name, svf.cfg.finetune.name) == ("freeze", "svf")
            assert "+ SVF" in svf.cfg.row
            assert svf.cfg.row.replace(" + SVF", "") == freeze.cfg.row
            # the pair differs in the strategy (and its recipe) only
            drop = ("finetune", "optim", "row", "tags")
            assert _without(freeze.resolved, *drop) == _without(svf.resolved, *drop), stem
            assert freeze.cfg.dataset.name == dataset and freeze.cfg.backbone.name.startswith(stem[:5])
    # Table 2 repeats Table 1's rows on COCO
    t1, t2 = _rows(experiments, "table1"), _rows(experiments, "table2")
    assert set(t1) == set(t2)
    for key in t1:
        assert t1[key].cfg.row == t2[key].cfg.row
        drop = ("dataset", "table", "tags", "trainer.max_epochs", "method.base_learner")
        assert _without(t1[key].resolved, *drop) == _without(t2[key].resolved, *drop), key


def test_ablation_tables_use_the_baseline_on_pascal(experiments: dict[str, Built]) -> None:
    for table in ("table4", "table5", "table6", "table7", "table8", "table13"):
        for row, b in _rows(experiments, table).items():
            assert (b.cfg.method.name, b.cfg.backbone.name, b.cfg.dataset.name) == (
                "baseline",
                "resnet50",
                "pascal",
            ), (table, row)
            assert b.cfg.dataset.filter_novel is True
    # Table 13 is Table 4 per fold (appendix): the same runs
    t4, t13 = _rows(experiments, "table4"), _rows(experiments, "table13")
    assert set(t4) == set(t13) == {"freeze", "bn", "svf", "svf_bn"}
    for key in t4:
        assert _without(t4[key].resolved, "table") == _without(t13[key].resolved, "table")
    assert t4["svf_bn"].cfg.finetune.train_bn is True and t4["bn"].cfg.finetune.name == "bn"


def test_table5_to_8_vary_the_stages_convs_and_factors(experiments: dict[str, Built]) -> None:
    t5 = _rows(experiments, "table5")
    for key, stages in (("part_4", {"layer4"}), ("part_34", {"layer3", "layer4"}), ("svf", None)):
        if stages:
            assert _trained_stages(t5[key]) == stages
    assert _trained_stages(t5["part_234"]) == {"layer2", "layer3", "layer4"}
    assert _trained_stages(t5["svf"]) == {"layer2", "layer3", "layer4"}
    t6 = _rows(experiments, "table6")
    assert {k: b.cfg.finetune.get("conv_type") for k, b in t6.items() if k.startswith("part")} == {
        "part_1x1": "1x1",
        "part_3x3": "3x3",
        "part_all": "all",
    }
    t7 = _rows(experiments, "table7")
    assert len(t7) == 7
    for key, b in t7.items():
        factors = set(key.split("_")[1])
        assert set(b.cfg.finetune.train) == factors, key
        assert {n.rsplit(".", 1)[1] for n, _ in _backbone_trained(b)} == factors, key
    t8 = _rows(experiments, "table8")
    for key, b in t8.items():
        assert _trained_stages(b) == {f"layer{d}" for d in key.split("_")[1]}, key
    # SVF trains few parameters: the singular values only (one per rank direction)
    svf = t5["svf"]
    n_svf = sum(s.numel() for _, s in _backbone_trained(svf))
    n_full = sum(s.numel() for _, s in _backbone_trained(t5["full"]))
    assert 0 < n_svf < n_full / 50


def test_table10_11_12_data_settings(experiments: dict[str, Built]) -> None:
    t10 = _rows(experiments, "table10")
    assert len(t10) == 6
    for key, b in t10.items():
        method, flag = key.split("_")
        assert b.cfg.method.name == method and b.cfg.dataset.name == "pascal"
        assert b.cfg.dataset.filter_novel is (flag == "filtered"), key
        assert b.datamodule.filter_novel is (flag == "filtered")
    t11 = _rows(experiments, "table11")
    assert len(t11) == 6
    for key, b in t11.items():
        ft, episodes = key.split("_")
        assert b.cfg.finetune.name == ft and b.cfg.dataset.name == "coco"
        assert b.cfg.dataset.n_episodes == int(episodes) == b.datamodule.n_episodes, key
    for key, b in _rows(experiments, "table12").items():
        assert b.cfg.dataset.filter_novel is False and b.cfg.dataset.name == "pascal", key


# ----------------------------------------------------------------------------------------- one full command
def test_bam_svf_on_coco_fold2_resolves_the_paper_setting(tmp_path: Path) -> None:
    """The README's example command, composed at full size."""
    cfg = compose_config(
        "train",
        [
            "method=bam",
            "backbone=resnet50",
            "finetune=svf",
            "dataset=coco",
            "fold=2",
            f"paths.output_dir={tmp_path}",
            "paths.weights_dir=/w",
            "paths.data_dir=/d",
        ],
    )
    assert (cfg.dataset.train_size, cfg.dataset.eval_size, cfg.dataset.epochs) == (641, 641, 50)
    assert cfg.trainer.max_epochs == 50 and cfg.dataset.batch_size == 8
    assert cfg.dataset.root == "/d/coco2014" and cfg.backbone.pretrained == "/w/resnet50_v2.pth"
    assert cfg.method.base_learner == "/w/base_learner/coco/fold2/resnet50/pspnet.pt"
    assert list(cfg.tags) == ["bam", "resnet50", "svf", "coco", "fold2", "1shot"]
    # the stage-1 file is missing: the error names the key and the command that makes it
    with pytest.raises(ConfigError) as err:
        check_train_config(_no_imagenet(cfg))
    msg = str(err.value)
    assert "method.base_learner=/w/base_learner/coco/fold2/resnet50/pspnet.pt does not exist" in msg
    assert "python train.py stage=base method=bam dataset=coco fold=2 backbone=resnet50" in msg
    assert "=null" not in msg  # BAM cannot run without its base learner

    ok = _for_checks(cfg, tmp_path / "pspnet.pt")
    check_train_config(ok)
    dm = build_datamodule(TrainRun.from_config(ok))
    assert dm.novel_classes == [2 + 1 + 4 * k for k in range(20)]  # interleaved: 3, 7, ..., 79
    assert len(dm.base_classes) == 60 and not set(dm.base_classes) & set(dm.novel_classes)
    assert dm.with_base_label and (dm.train_size, dm.eval_size) == (641, 641)
    module = build_module(TrainRun.from_config(ok), load_pretrained=False)
    assert module.val_iou.num_classes == 20 and module.train_episode_iou.num_classes == 60
    # the base learner classifies background + 60 base classes
    assert module.model.base_learner.num_classes == 61
    module.apply_finetune()
    names = {id(p): n for n, p in module.named_parameters()}
    backbone = [
        p for g in module.param_groups or [] if g["name"].startswith("backbone.") for p in g["params"]
    ]
    assert all(names[id(p)].endswith(".s") for p in backbone)
    # ResNet-50 layer2-4 hold 1,792 + 5,120 + 5,632 = 12,544 singular values
    per_stage = {
        g["name"]: sum(p.numel() for p in g["params"])
        for g in module.param_groups or []
        if g["name"].startswith("backbone.")
    }
    assert per_stage == {"backbone.layer2": 1792, "backbone.layer3": 5120, "backbone.layer4": 5632}
    # the frozen base learner is in no optimizer group
    grouped = {id(p) for g in module.param_groups or [] for p in g["params"]}
    assert not any(id(p) in grouped for p in module.model.base_learner.parameters())


def _no_imagenet(cfg: DictConfig) -> DictConfig:
    cfg = cfg.copy()
    with open_dict(cfg):
        cfg.backbone.pretrained = None
    return cfg


# ----------------------------------------------------------------------------------------- validation errors
def _tiny(tmp_path: Path, extra: list[str]) -> DictConfig:
    """Checks only: an existing folder stands in for the synthetic data's root unless ``extra`` sets one."""
    root = [] if any(o.startswith("dataset.root=") for o in extra) else [f"dataset.root={tmp_path}"]
    cfg = compose_config(
        "train",
        ["dataset=synthetic", "debug=tiny", f"paths.output_dir={tmp_path}", *root, *extra],
    )
    return cfg


@pytest.mark.parametrize(
    ("overrides", "multirun", "pattern"),
    [
        (["shot=0"], False, r"^shot=0 is invalid: the number of support images must be an integer >= 1$"),
        (["fold=4"], False, r"^fold=4 is invalid: choose one of \[0, 1, 2, 3\]$"),
        # read at fit start before, after the model was built and the run folder claimed
        (
            ["dataset.root=/nowhere/data"],
            False,
            r"^dataset root /nowhere/data \(dataset=synthetic\) does not exist; create it with: python -m ",
        ),
        # Lightning's seed_everything refused these only after the run folder was claimed
        (["seed=-1"], False, r"^seed=-1 is invalid: the training seed is an integer from 0 to 4294967295"),
        (["seed=4294967296"], False, r"^seed=4294967296 is invalid: the training seed is an integer"),
        (["seed=null"], False, r"^seed=None is invalid: the training seed is an integer"),
        (
            ["stage=base"],
            False,
            r"^stage=base trains BAM's base learner; it needs method=bam \(got method=baseline\)",
        ),
        (
            ["trainer.devices=3", "dataset.batch_size=8"],
            False,
            r"^dataset\.batch_size=8 is the total training batch over 3 processes .*positive multiple of 3: ",
        ),
        (
            ["trainer=ddp", "trainer.devices=4", "dataset.batch_size=8"],
            True,
            r"^hydra multirun \(-m\) cannot drive multi-process DDP \(trainer\.strategy=ddp, trainer\.devices=4\)",
        ),
        (["finetune.train=[s,w]"], False, r"^finetune=svf: .*\bw\b"),
        (
            ["backbone.pretrained=/nowhere/r50.pth"],
            False,
            r"^backbone\.pretrained=/nowhere/r50\.pth does not exist",
        ),
        (
            ["ckpt_path=/nowhere/last.ckpt"],
            False,
            r"^ckpt_path=/nowhere/last\.ckpt does not exist \(use a checkpoint file, 'last', 'auto' or null\)",
        ),
        # BAM's stage 1 used to ignore a ckpt_path; it resumes its own folder's last.ckpt (last / auto) only
        (
            ["method=bam", "stage=base", "ckpt_path=/nowhere/x.ckpt"],
            False,
            r"^ckpt_path=/nowhere/x\.ckpt: BAM's stage 1 \(stage=base\) resumes only its own run folder's "
            r"last\.ckpt; use ckpt_path=last \(or auto\)",
        ),
        (
            ["method=bam", "method.base_learner=null"],
            False,
            r"^method\.base_learner is null: .*python train\.py stage=base method=bam dataset=synthetic fold=0",
        ),
        (
            ["+dataset.n_episode=5"],
            False,
            r"^dataset\.n_episode: not an argument of FewShotDataModule nor a run-level dataset key; "
            r"allowed: .*'n_episodes'",
        ),
        (
            ["method=pfenet", "+method.aux_wieght=0.5"],
            False,
            r"^method\.aux_wieght: not an option of method=pfenet; allowed: .*'aux_weight'",
        ),
    ],
)
def test_invalid_settings_raise_config_errors_naming_the_keys(
    tmp_path: Path, overrides: list[str], multirun: bool, pattern: str
) -> None:
    cfg = _tiny(tmp_path, overrides)
    with pytest.raises(ConfigError, match="(?m)" + pattern):  # one line per problem
        check_train_config(cfg, multirun=multirun)


def test_the_same_settings_pass_when_valid(tmp_path: Path) -> None:
    check_train_config(_tiny(tmp_path, ["shot=5", "fold=3", "seed=0"]))
    check_train_config(_tiny(tmp_path, ["seed=4294967295"]))
    check_train_config(_tiny(tmp_path, ["ckpt_path=auto"]))  # a fresh folder: the run starts
    check_train_config(_tiny(tmp_path, ["ckpt_path=last"]))  # resolving looks for the file, not the checks
    check_train_config(_tiny(tmp_path, ["trainer=ddp", "trainer.devices=4", "dataset.batch_size=8"]))
    # multirun with one device per job is fine
    check_train_config(_tiny(tmp_path, []), multirun=True)
    # a multirun over spawn-based DDP does not re-run the script per rank, so the multirun check lets it
    # pass; spawn-based DDP is refused for its own reason (its ranks' results never come back)
    spawn = ["trainer=ddp", "trainer.devices=2", "trainer.strategy=ddp_spawn", "dataset.batch_size=8"]
    with pytest.raises(ConfigError) as info:
        check_train_config(_tiny(tmp_path, spawn), multirun=True)
    assert str(info.value).startswith("trainer.strategy=ddp_spawn runs every rank in a child process")
    assert "hydra multirun" not in str(info.value) and len(str(info.value).splitlines()) == 1


def test_every_datamodule_argument_can_be_set_from_the_dataset_config(tmp_path: Path) -> None:
    """conf/dataset keys reach the DataModule by name (no hand mapping): also the loader options."""
    tables = tmp_path / "tables"
    cfg = _tiny(
        tmp_path,
        [f"dataset.table_dir={tables}", "dataset.pin_memory=true", "dataset.persistent_workers=true"],
    )
    check_train_config(cfg)
    dm = build_datamodule(TrainRun.from_config(cfg))
    assert dm.table_dir == tables and dm.pin_memory is True and dm.persistent_workers is True
    assert dm.batch_size == cfg.dataset.batch_size and dm.seed == cfg.seed


def test_paper_rows_use_the_reference_network_layout(experiments: dict[str, Built]) -> None:
    """Baseline / PFENet ResNet rows: torchvision dilation (the SVF code); BAM and VGG: uniform (PSPNet)."""
    layouts = {}
    for name, b in experiments.items():
        method, backbone = b.cfg.method.name, b.cfg.backbone.name
        if b.cfg.table == "vit":  # beyond the paper: ViTs have no dilation layout
            assert "dilation" not in b.cfg.backbone and backbone == "dinov2_vits14", name
            continue
        if b.cfg.table == "peft":  # the backbone (and its layout) comes from the command line
            continue
        expected = (
            "torchvision" if method in ("baseline", "pfenet") and backbone.startswith("resnet") else "uniform"
        )
        assert b.cfg.backbone.dilation == expected, name
        layouts[expected] = layouts.get(expected, 0) + 1
        if expected == "torchvision":  # the built network: layer3's first block keeps dilation 1
            layer3 = b.module.model.backbone.layer3
            assert layer3[0].conv2.dilation == (1, 1) and layer3[1].conv2.dilation == (2, 2), name
    assert layouts == {"torchvision": 61, "uniform": 20}


def test_a_base_learner_of_another_fold_is_refused_at_start(tmp_path: Path) -> None:
    """The file's record was read only when the model was built, after the run folder was claimed (a
    traceback); now its dataset / fold / backbone are held to the run with the other start-up checks."""
    fold0 = FoldSpec("synthetic", 0)
    net = PSPNet(backbone_shell("resnet50", 0.125), num_classes=fold0.num_base_labels)
    path = save_base_learner(net, tmp_path / "psp.pt", {"dataset": fold0.split_dataset, "fold": 0})
    check_train_config(_tiny(tmp_path, ["method=bam", f"method.base_learner={path}"]))  # its own fold
    with pytest.raises(
        ConfigError,
        match=r"^method\.base_learner: base learner .*psp\.pt was trained for other settings "
        r"\(fold: file has 0, run needs 1\)\. .*python train\.py stage=base method=bam dataset=synthetic fold=1",
    ):
        check_train_config(_tiny(tmp_path, ["method=bam", f"method.base_learner={path}", "fold=1"]))
