"""FoldSpec / RunSpec: one validated description of a run, and the one identity check."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from svfseg.data.fold import FoldSpec
from svfseg.data.splits import base_classes, novel_classes
from svfseg.run_spec import RunMismatchError, RunSpec, check_identity
from svfseg.svf import SVFOptions

METHOD = {"name": "baseline", "reduce_dim": 32}
BACKBONE = {"name": "resnet50", "pretrained": None, "width_mult": 0.125}


@pytest.mark.parametrize(
    ("dataset", "split_dataset", "coco_split"),
    [
        ("pascal", "pascal", "interleaved"),
        ("synthetic", "pascal", "interleaved"),
        ("coco", "coco", "contiguous"),
    ],
)
@pytest.mark.parametrize("fold", [0, 1, 2, 3])
def test_fold_spec_classes_are_the_split_definitions(
    dataset: str, split_dataset: str, coco_split: str, fold: int
) -> None:
    spec = FoldSpec(dataset, fold, shot=5, coco_split=coco_split)
    assert spec.split_dataset == split_dataset
    assert list(spec.novel_classes) == novel_classes(split_dataset, fold, coco_split)
    assert list(spec.base_classes) == base_classes(split_dataset, fold, coco_split)
    assert spec.classes("train") == spec.base_classes and spec.classes("val") == spec.novel_classes
    assert FoldSpec(**spec.to_dict()) == spec


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        (
            {"dataset": "voc", "fold": 0},
            r"dataset='voc' is invalid: choose one of \['pascal', 'coco', 'folder', 'synthetic'\]",
        ),
        ({"dataset": "pascal", "fold": 4}, r"fold=4 is invalid: choose one of \[0, 1, 2, 3\]"),
        ({"dataset": "pascal", "fold": True}, r"fold=True is invalid"),
        ({"dataset": "pascal", "fold": 0, "shot": 0}, r"shot=0 is invalid: the number of support images"),
        ({"dataset": "coco", "fold": 0, "coco_split": "random"}, r"coco_split='random' is invalid"),
    ],
)
def test_fold_spec_refuses_bad_values_naming_them(kwargs: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        FoldSpec(**kwargs)
    with pytest.raises(ValueError, match="split='test'"):
        FoldSpec("pascal", 0).classes("test")


def test_run_spec_round_trip_identity_and_validation() -> None:
    spec = RunSpec(FoldSpec("coco", 2, shot=5, coco_split="contiguous"), METHOD, BACKBONE, {"name": "svf"})
    assert spec.identity() == {
        "method": "baseline",
        "backbone": "resnet50",
        "dataset": "coco",
        "coco_split": "contiguous",
        "fold": 2,
        "shot": 5,
    }
    assert RunSpec.from_dict(spec.to_dict()) == spec
    plain = spec.to_dict()
    plain["method"]["reduce_dim"] = 64  # a copy: the spec does not change
    assert spec.method["reduce_dim"] == 32
    with pytest.raises(
        ValueError, match=r"method='lora' is invalid: choose one of \['bam', 'baseline', 'pfenet'\]"
    ):
        RunSpec(spec.fold, {"name": "lora"}, BACKBONE)
    with pytest.raises(ValueError, match=r"backbone.name='resnet18' is invalid"):
        RunSpec(spec.fold, METHOD, {"name": "resnet18"})
    with pytest.raises(ValueError, match=r"finetune=svf: train='w' is invalid: unknown \['w'\]"):
        RunSpec(spec.fold, METHOD, BACKBONE, {"name": "svf", "train": "w"})
    with pytest.raises(ValueError, match=r"finetune.name is missing"):
        RunSpec(spec.fold, METHOD, BACKBONE, {"stages": [4]})


def test_check_identity_compares_shared_keys_and_names_the_fix() -> None:
    saved = {"method": "baseline", "fold": 0, "shot": 1}  # an older record without coco_split
    check_identity(saved, {"fold": 0, "coco_split": "contiguous"}, source="s", target="t", fix="f")
    with pytest.raises(
        RunMismatchError,
        match=r"^the checkpoint was trained for method=baseline, fold=0 but eval asks "
        r"method_name=bam, fold=3; pick another$",
    ):
        check_identity(
            saved,
            {"method": "bam", "fold": 3, "shot": 1},
            source="the checkpoint",
            target="eval asks",
            fix="pick another",
            names={"method": "method_name"},
        )


def test_svf_options_normalise_and_refuse() -> None:
    assert SVFOptions(train="u+s").train == ("u", "s") == SVFOptions(train=["s", "u"]).train
    assert SVFOptions(train=()).train == ()
    assert SVFOptions(svd_dtype=torch.float32).svd_dtype == "float32"
    assert SVFOptions().torch_svd_dtype is torch.float64
    assert SVFOptions.of(SVFOptions(train="v"), parametrization="exp") == SVFOptions(
        train="v", parametrization="exp"
    )
    assert SVFOptions.of({"execution": "three_op"}).to_dict() == {
        "train": ["s"],
        "parametrization": "direct",
        "execution": "three_op",
        "svd_dtype": "float64",
    }
    with pytest.raises(
        TypeError, match=r"unknown SVF option\(s\) \['rank'\]; allowed: \['train', 'parametrization'"
    ):
        SVFOptions.of(rank=4)
    for kwargs, match in (
        (
            {"execution": "materialize"},
            r"execution='materialize' is invalid: choose one of \['auto', 'three_op'\]",
        ),
        ({"parametrization": "log"}, r"parametrization='log' is invalid"),
        ({"svd_dtype": torch.float16}, r"svd_dtype=torch.float16 is invalid"),
        ({"train": [1]}, r"train=\[1\] is invalid"),
    ):
        with pytest.raises(ValueError, match=match):
            SVFOptions(**kwargs)


def test_load_run_checks_the_expected_identity(tmp_path: Path) -> None:
    """The analysis helper refuses another run's checkpoint with the same identity check."""
    import pytorch_lightning as pl

    from svfseg.analysis import load_run
    from svfseg.lightning.module import FewShotSegModule

    spec = RunSpec(FoldSpec("pascal", 1), METHOD, BACKBONE, {"name": "svf"})
    module = FewShotSegModule(run=spec.to_dict(), load_pretrained=False)
    module.apply_finetune()
    checkpoint = {
        "state_dict": module.state_dict(),
        "hyper_parameters": dict(module.hparams),
        "pytorch-lightning_version": pl.__version__,
    }
    module.on_save_checkpoint(checkpoint)
    path = tmp_path / "run.ckpt"
    torch.save(checkpoint, path)
    loaded, _ = load_run(path, expect={"fold": 1, "method": "baseline"})
    assert loaded.spec == spec
    with pytest.raises(
        RunMismatchError, match=rf"checkpoint {path} was trained for fold=1 but the analysis asks for fold=0"
    ):
        load_run(path, expect={"fold": 0})
    with pytest.raises(KeyError, match=r"unknown key\(s\) \['folds'\]"):
        load_run(path, expect={"folds": 1})
