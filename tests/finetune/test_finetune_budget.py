"""python -m svfseg.finetune.budget: its per-stage counts are the trainable parameters of the built model
(every strategy file in conf/finetune), and the full-width numbers docs/peft.md quotes."""

from __future__ import annotations

import json

import pytest
from torch import nn

from svfseg.backbones import build_backbone
from svfseg.finetune import build_strategy
from svfseg.finetune.budget import compose_train, config_budget, main
from svfseg.tasks.builders import build_module
from svfseg.tasks.resolve import TrainRun
from tests.helpers.hydra import CONF_DIR

STRATEGY_FILES = sorted(p.stem for p in (CONF_DIR / "finetune").glob("*.yaml"))
L234 = ("layer2", "layer3", "layer4")


def built_counts(overrides: list[str]) -> dict[str, int]:
    """Trainable elements per group of the model train.py builds: real weights, the strategy's full apply."""
    cfg = compose_train(overrides)
    module = build_module(TrainRun.from_config(cfg), load_pretrained=False)
    options = dict(module.spec.finetune)
    build_strategy(options.pop("name"), **options).apply(module.model)
    counts = {"head": 0, **{s: 0 for s in module.model.backbone.stage_names}}
    stage_of = {
        id(p): s
        for s in module.model.backbone.stage_names
        for p in module.model.backbone.stage(s).parameters()
    }
    for p in module.model.parameters():
        if p.requires_grad:
            counts[stage_of.get(id(p), "head")] += p.numel()
    return counts


@pytest.mark.parametrize("stem", STRATEGY_FILES)
def test_budget_counts_equal_the_trainable_parameters_of_the_built_model(stem: str) -> None:
    overrides = ["debug=tiny", f"finetune={stem}"]
    budget = config_budget(compose_train(overrides))
    assert budget.trainable == built_counts(overrides)
    assert budget.finetune["name"] == compose_train(overrides).finetune.name


@pytest.mark.parametrize(
    "overrides",
    [
        ["backbone=vgg16", "finetune=bitfit"],
        ["method=pfenet", "finetune=dora", "finetune.target=1x1", "finetune.rank=match_svf"],
        ["backbone=dinov2_vits14", "+backbone.depth=4", "finetune=lora", "finetune.target=linear"],
        ["backbone=efficientnet_lite0", "finetune=lora", "finetune.rank=3"],
    ],
)
def test_budget_counts_on_other_backbones_and_methods(overrides: list[str]) -> None:
    overrides = ["debug=tiny", *overrides]
    assert config_budget(compose_train(overrides)).trainable == built_counts(overrides)


def _lora_expected(backbone: nn.Module, rank: int, *, dora: bool) -> dict[str, int]:
    """r (C_in k k + C_out) (+ C_out for DoRA) over the dense convs of layer2-4, from the shapes."""
    out = {}
    for stage in L234:
        total = 0
        for m in getattr(backbone, stage).modules():
            if type(m) is nn.Conv2d and m.groups == 1:
                co, ci, kh, kw = m.weight.shape
                total += rank * (ci * kh * kw + co) + (co if dora else 0)
        out[stage] = total
    return out


def test_full_width_resnet50_numbers_of_the_docs(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["backbone=resnet50", "finetune=svf", "--json"]) == 0
    svf = json.loads(capsys.readouterr().out)
    assert {s: svf["trainable"][s] for s in L234} == {"layer2": 1_792, "layer3": 5_120, "layer4": 5_632}
    assert svf["backbone_trainable"] == 12_544  # the paper's count (README)

    meta = build_backbone("resnet50", warn_if_random=False).to("meta")
    for rank, name in ((8, "lora"), (1, "dora")):
        assert main(["backbone=resnet50", f"finetune={name}", f"finetune.rank={rank}", "--json"]) == 0
        got = json.loads(capsys.readouterr().out)
        assert {s: got["trainable"][s] for s in L234} == _lora_expected(meta, rank, dora=name == "dora")
    assert got["svf_same_stages"] == 12_544 and got["rank"] == 1

    assert main(["backbone=resnet50", "finetune=lora", "finetune.rank=match_svf"]) == 0
    text = capsys.readouterr().out
    assert "backbone" in text and "75,264" in text
    assert "rank 1 (rank=match_svf); finetune=svf on the same stages trains 12,544" in text
    assert main(["backbone=resnet50", "finetune=bitfit", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["backbone_trainable"] == 50_176


def test_full_width_efficientnet_lite0_numbers_of_the_docs(capsys: pytest.CaptureFixture[str]) -> None:
    expected = {"svf": 11_880, "lora": 164_544, "dora": 31_000, "bitfit": 38_240}
    for name, count in expected.items():
        rank = ["finetune.rank=match_svf"] if name == "dora" else []
        assert main(["backbone=efficientnet_lite0", f"finetune={name}", *rank, "--json"]) == 0
        assert json.loads(capsys.readouterr().out)["backbone_trainable"] == count, name


def test_bad_overrides_and_options_fail_naming_them(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["finetune=lora", "finetune.rank=zero"]) == 2
    assert "rank='zero' is invalid" in capsys.readouterr().err
    assert main(["finetune=nope"]) == 2
    assert "finetune" in capsys.readouterr().err
