"""Fine-tune strategies: exact trainable sets, optimizer groups, BN policy and gradient flow."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from omegaconf import OmegaConf
from torch import Tensor, nn
from torch.nn.modules.batchnorm import _BatchNorm

from svfseg.backbones import build_backbone
from svfseg.finetune import STRATEGIES, build_strategy, check_param_groups
from svfseg.finetune.base import backbone_stages
from svfseg.lightning.optim import OptimConfig, build_optimizer
from svfseg.methods.base import FewShotModel, FewShotOutput
from svfseg.svf import SVFSelectionError, svf_layers

SMALL = 0.125
L234 = ("layer2", "layer3", "layer4")


def trainable_summary(model: nn.Module) -> dict[str, int]:
    """Trainable elements per optimizer-group name (``head``, ``backbone.<stage>``) plus totals."""
    stages = backbone_stages(model)
    stage_of = {
        id(p): f"backbone.{stage}" for stage in stages for p in getattr(model.backbone, stage).parameters()
    }
    counts = {"head": 0, **{f"backbone.{s}": 0 for s in stages}, "trainable": 0, "frozen": 0}
    for p in model.parameters():
        if not p.requires_grad:
            counts["frozen"] += p.numel()
            continue
        counts[stage_of.get(id(p), "head")] += p.numel()
        counts["trainable"] += p.numel()
    return counts


class TinyModel(FewShotModel):
    """A real backbone, a 1x1 head and a frozen side module (like BAM's base learner)."""

    def __init__(self, backbone: str = "resnet50", width_mult: float = SMALL) -> None:
        super().__init__()
        self.backbone = build_backbone(backbone, width_mult=width_mult)
        self.head = nn.Conv2d(self.backbone.channels["layer4"], 2, 1)
        self.base = nn.Sequential(nn.Conv2d(3, 4, 1), nn.BatchNorm2d(4))

    def frozen_modules(self) -> list[nn.Module]:
        return [self.base]

    def features(self, x: Tensor) -> dict[str, Tensor]:
        with self.backbone_grad():
            return self.backbone(x)

    def forward(self, query_img, support_img=None, support_mask=None, query_mask=None, class_idx=None,
                query_base_label=None) -> FewShotOutput:  # fmt: skip
        logits = self.head(self.features(query_img)["layer4"])
        logits = F.interpolate(logits, size=query_img.shape[-2:], mode="bilinear", align_corners=True)
        loss = None if query_mask is None else F.cross_entropy(logits, query_mask, ignore_index=255)
        return FewShotOutput(logits, loss)


def meta_model(backbone: str) -> TinyModel:
    with torch.device("meta"):
        return TinyModel(backbone, width_mult=1.0)


def backbone_trainable(model: FewShotModel) -> int:
    return sum(p.numel() for p in model.backbone.parameters() if p.requires_grad)


def group_summary(groups: list[dict]) -> list[tuple[str, float, int]]:
    return [(g["name"], g["lr_mult"], sum(p.numel() for p in g["params"])) for g in groups]


def assert_groups_exact(model: nn.Module, groups: list[dict]) -> None:
    """No frozen parameter, no duplicate, no trainable parameter missing."""
    ids = [id(p) for g in groups for p in g["params"]]
    assert len(ids) == len(set(ids))
    assert all(p.requires_grad for g in groups for p in g["params"])
    assert set(ids) == {id(p) for p in model.parameters() if p.requires_grad}
    check_param_groups(model, groups)


def bn_modes(module: nn.Module) -> set[bool]:
    return {m.training for m in module.modules() if isinstance(m, _BatchNorm)}


# ---------------------------------------------------------------------------------------------- options
@pytest.mark.parametrize(
    ("name", "options", "match"),
    [
        ("loha", {}, "'loha' is unknown: choose one of"),
        ("svf", {"stage": ["layer4"]}, r"does not take option\(s\) \['stage'\]; allowed: \['stages'"),
        (
            "freeze",
            {"backbone_lr_mult": 0.1},
            r"does not take option\(s\) \['backbone_lr_mult'\]; allowed: none",
        ),
        ("part", {"stages": ["layer5"]}, r"stages contains 'layer5', which is not a backbone stage"),
        ("part", {"stages": []}, r"stages=\[\] is empty"),
        ("svf", {"stages": []}, r"stages=\[\] is empty"),
        ("part", {"conv_type": "5x5"}, r"conv_type='5x5' is invalid: choose one of \['all', '3x3', '1x1'\]"),
        ("svf", {"train": "sx"}, r"train='sx' is invalid: .*unknown \['x'\]"),
        ("svf", {"train": []}, r"train=\[\] is invalid: use a non-empty subset"),
        ("svf", {"parametrization": "log"}, r"parametrization='log' is invalid"),
        (
            "svf",
            {"convert_stages": ["layer4"]},
            r"must contain every trained stage .* add \['layer2', 'layer3'\]",
        ),
        ("svf", {"svd_dtype": "float16"}, r"svd_dtype='float16' is invalid"),
        ("svf", {"execution": "fast"}, r"execution='fast' is invalid"),
        ("bn", {"backbone_lr_mult": 0}, r"backbone_lr_mult=0 is invalid: use a positive number"),
        ("full", {"train_bn": "yes"}, r"train_bn='yes' is invalid: use true or false"),
    ],
)
def test_invalid_options_fail_at_construction(name: str, options: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        build_strategy(name, **options)


def test_options_are_normalised() -> None:
    svf = build_strategy("svf", stages=OmegaConf.create([4, "layer3", 3]), train="u+s")
    assert svf.options() == {
        "stages": ["layer3", "layer4"],
        "train": ["u", "s"],
        "parametrization": "direct",
        "train_bn": False,
        "convert_stages": ["layer3", "layer4"],
        "execution": "auto",
        "svd_dtype": "float64",
        "backbone_lr_mult": 0.1,
        "checkpointing": False,
    }
    assert build_strategy("part", stages="layer4").stages == ("layer4",)
    assert set(STRATEGIES) == {"freeze", "full", "part", "bn", "svf", "lora", "dora", "bitfit"}


# ---------------------------------------------------------------------------------------------- full width
R50_HEAD = 2048 * 2 + 2


@pytest.mark.parametrize(
    ("name", "options", "expected"),
    [
        ("freeze", {}, {}),
        ("full", {}, {"layer0": 112_320 + 512, "layer1": 233_472 + 2_816, "layer2": 1_212_416 + 7_168,
                      "layer3": 7_077_888 + 20_480, "layer4": 14_942_208 + 22_528}),
        ("full", {"train_bn": False}, {"layer0": 112_320, "layer1": 233_472, "layer2": 1_212_416,
                                       "layer3": 7_077_888, "layer4": 14_942_208}),
        ("part", {"stages": ["layer4"]}, {"layer4": 14_942_208}),
        ("part", {"stages": [4], "train_bn": True}, {"layer4": 14_942_208 + 22_528}),
        ("part", {"conv_type": "3x3"}, {"layer2": 589_824, "layer3": 3_538_944, "layer4": 7_077_888}),
        ("part", {"conv_type": "1x1"}, {"layer2": 622_592, "layer3": 3_538_944, "layer4": 7_864_320}),
        ("bn", {}, {"layer0": 512, "layer1": 2_816, "layer2": 7_168, "layer3": 20_480, "layer4": 22_528}),
    ],
)  # fmt: skip
def test_resnet50_full_width_counts(name: str, options: dict, expected: dict[str, int]) -> None:
    model = meta_model("resnet50")
    groups = build_strategy(name, **options).apply(model)
    assert group_summary(groups) == [("head", 1.0, R50_HEAD)] + [
        (f"backbone.{s}", 0.1, n) for s, n in expected.items()
    ]
    assert_groups_exact(model, groups)
    assert model.backbone_trainable is (name != "freeze")
    assert model.frozen_bn is (name != "bn")
    assert not any(p.requires_grad for p in model.base.parameters())


def test_full_width_totals() -> None:
    r50 = meta_model("resnet50")
    build_strategy("full").apply(r50)  # "all the parameters in the backbone"
    assert backbone_trainable(r50) == sum(p.numel() for p in r50.backbone.parameters()) == 23_631_808
    build_strategy("bn").apply(r50)
    assert backbone_trainable(r50) == 53_504
    vgg = meta_model("vgg16_bn")
    build_strategy("full").apply(vgg)
    assert backbone_trainable(vgg) == sum(p.numel() for p in vgg.backbone.parameters()) == 14_723_136
    build_strategy("full", train_bn=False).apply(vgg)
    assert backbone_trainable(vgg) == 14_714_688  # conv weights + biases, no BN
    build_strategy("bn").apply(vgg)
    assert backbone_trainable(vgg) == 8_448
    build_strategy("part", conv_type="3x3").apply(vgg)
    three = backbone_trainable(vgg)
    build_strategy("part", conv_type="all").apply(vgg)
    assert three == backbone_trainable(vgg)


def test_vgg_has_no_1x1_convs() -> None:
    with pytest.raises(
        ValueError, match=r"conv_type='1x1' selects no conv in backbone stage layer2 .*\['3x3'\]"
    ):
        build_strategy("part", conv_type="1x1").apply(meta_model("vgg16_bn"))


@pytest.fixture(scope="module")
def svf_r50_full() -> TinyModel:
    model = TinyModel("resnet50", width_mult=1.0)
    model.groups = build_strategy("svf", svd_dtype="float32").apply(model)  # counts do not depend on dtype
    return model


@pytest.fixture(scope="module")
def svf_vgg_full() -> TinyModel:
    model = TinyModel("vgg16_bn", width_mult=1.0)
    model.groups = build_strategy("svf", svd_dtype="float32").apply(model)
    return model


def test_svf_full_width_counts(svf_r50_full: TinyModel, svf_vgg_full: TinyModel) -> None:
    assert group_summary(svf_r50_full.groups) == [
        ("head", 1.0, R50_HEAD),
        ("backbone.layer2", 0.1, 1_792),
        ("backbone.layer3", 0.1, 5_120),
        ("backbone.layer4", 0.1, 5_632),
    ]
    assert backbone_trainable(svf_r50_full) == 12_544
    assert sum(1 for _ in svf_layers(svf_r50_full.backbone)) == 4 * 3 + 1 + 6 * 3 + 1 + 3 * 3 + 1
    assert {n.split(".")[0] for n, _ in svf_layers(svf_r50_full.backbone)} == set(L234)
    assert trainable_summary(svf_vgg_full) == {
        "head": 512 * 2 + 2,
        "backbone.layer0": 0,
        "backbone.layer1": 0,
        "backbone.layer2": 768,
        "backbone.layer3": 1_536,
        "backbone.layer4": 1_536,
        "trainable": 1_026 + 3_840,
        "frozen": sum(p.numel() for p in svf_vgg_full.parameters()) - 1_026 - 3_840,
    }
    trainable = [n for n, p in svf_r50_full.backbone.named_parameters() if p.requires_grad]
    assert trainable and all(n.endswith(".s") for n in trainable)


# ---------------------------------------------------------------------------------------------- small width
@pytest.fixture(scope="module")
def small_template() -> TinyModel:
    return TinyModel("resnet50", width_mult=SMALL)


@pytest.fixture
def small(small_template: TinyModel) -> TinyModel:
    return copy.deepcopy(small_template)


def svf_tensor_count(model: FewShotModel, stages: tuple[str, ...], factors: str) -> int:
    return sum(
        p.numel()
        for name, layer in svf_layers(model.backbone)
        if name.split(".")[0] in stages
        for t, p in layer.svf_tensors()
        if t[0] in factors
    )


@pytest.mark.parametrize(
    ("options", "stages", "factors"),
    [
        ({"train": "u"}, L234, "u"),
        ({"train": ["u", "s"]}, L234, "us"),
        ({"train": "usv"}, L234, "usv"),
        ({"train": "v", "stages": [4]}, ("layer4",), "v"),
        ({"stages": [3, 4]}, ("layer3", "layer4"), "s"),
        ({"stages": [1, 2, 3, 4]}, ("layer1", *L234), "s"),
    ],
)
def test_svf_subspaces_and_stages(
    small: TinyModel, options: dict, stages: tuple[str, ...], factors: str
) -> None:
    groups = build_strategy("svf", **options).apply(small)
    assert_groups_exact(small, groups)
    assert backbone_trainable(small) == svf_tensor_count(small, stages, factors) > 0
    assert [g["name"] for g in groups] == ["head"] + [f"backbone.{s}" for s in stages]


def test_svf_exp_parametrization_and_bn(small: TinyModel) -> None:
    groups = build_strategy("svf", parametrization="exp", train_bn=True).apply(small)
    assert_groups_exact(small, groups)
    names = [n for n, p in small.backbone.named_parameters() if p.requires_grad]
    n_bn = sum(isinstance(m, nn.BatchNorm2d) for s in L234 for m in small.backbone.stage(s).modules())
    assert sum(n.endswith(".s_delta") for n in names) == sum(1 for _ in svf_layers(small.backbone))
    assert sum(n.endswith((".bn1.weight", ".bn2.bias", "downsample.1.weight")) for n in names) > 0
    assert len(names) == sum(1 for _ in svf_layers(small.backbone)) + 2 * n_bn
    assert small.frozen_bn and bn_modes(small.backbone) == {False}


def test_svf_converting_frozen_stages_is_equivalent(small: TinyModel) -> None:
    reference = copy.deepcopy(small).eval()
    all_five = copy.deepcopy(small)
    default_groups = build_strategy("svf").apply(small)
    all_groups = build_strategy("svf", convert_stages=[0, 1, 2, 3, 4]).apply(all_five)
    assert group_summary(default_groups) == group_summary(all_groups)
    assert {n.split(".")[0] for n, _ in svf_layers(all_five.backbone)} == set(small.backbone.stage_names)
    assert not any(
        p.requires_grad for s in ("layer0", "layer1") for p in all_five.backbone.stage(s).parameters()
    )
    x = torch.randn(2, 3, 33, 33)
    with torch.no_grad():
        want = reference.backbone(x)["layer4"]
        for model in (small.eval(), all_five.eval()):
            torch.testing.assert_close(model.backbone(x)["layer4"], want, rtol=1e-4, atol=1e-5)


def test_svf_twice_is_an_error(small: TinyModel) -> None:
    strategy = build_strategy("svf")
    strategy.apply(small)
    with pytest.raises(SVFSelectionError, match=r"already holds 42 SVF layers .* freshly built model"):
        strategy.apply(small)


def test_reapplying_other_strategies_is_idempotent(small: TinyModel) -> None:
    first = group_summary(build_strategy("part", stages=[4]).apply(small))
    assert group_summary(build_strategy("part", stages=[4]).apply(small)) == first
    build_strategy("freeze").apply(small)
    assert backbone_trainable(small) == 0 and not small.backbone_trainable


ALL_STRATEGIES = [
    ("freeze", {}),
    ("full", {}),
    ("part", {"stages": [3, 4], "conv_type": "1x1"}),
    ("bn", {}),
    ("svf", {}),
    ("svf", {"train": "us", "train_bn": True}),
]


@pytest.mark.parametrize(("name", "options"), ALL_STRATEGIES)
def test_bn_mode_survives_train_calls(small: TinyModel, name: str, options: dict) -> None:
    small.eval()
    build_strategy(name, **options).apply(small)
    for _ in range(2):
        small.train()
        assert bn_modes(small.backbone) == {name == "bn"}
        assert not small.base.training and bn_modes(small.base) == {False}
        assert small.head.training
        small.eval()
        assert bn_modes(small.backbone) == {False}


def _batch(seed: int = 0) -> tuple[Tensor, Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(2, 3, 33, 33, generator=g), torch.randint(0, 2, (2, 33, 33), generator=g)


@pytest.mark.parametrize(("name", "options"), ALL_STRATEGIES)
def test_sgd_step_changes_exactly_the_selection(small: TinyModel, name: str, options: dict) -> None:
    groups = build_strategy(name, **options).apply(small)
    small.train()
    before = {n: p.detach().clone() for n, p in small.named_parameters()}
    stats_before = {
        n: b.clone() for n, b in small.backbone.named_buffers() if "running" in n or "batches" in n
    }
    trainable = {n for n, p in small.named_parameters() if p.requires_grad}
    optimizer = torch.optim.SGD([{"params": g["params"], "lr": 0.1 * g["lr_mult"]} for g in groups], lr=0.1)
    for seed in range(2):
        img, mask = _batch(seed)
        optimizer.zero_grad()
        small(img, query_mask=mask).loss.backward()
        optimizer.step()
    changed = {n for n, p in small.named_parameters() if not torch.equal(p, before[n])}
    assert changed == trainable
    assert {"head.weight", "head.bias"} <= changed
    stats = dict(small.backbone.named_buffers())
    moved = {n for n, b in stats_before.items() if not torch.equal(stats[n], b)}
    n_bn = sum(isinstance(m, nn.BatchNorm2d) for m in small.backbone.modules())
    assert len(moved) == (3 * n_bn if name == "bn" else 0)  # mean, var, counter of every BN


def test_freeze_runs_backbone_without_graph(small: TinyModel) -> None:
    build_strategy("freeze").apply(small)
    small.train()
    feats = small.features(_batch()[0])
    assert all(f.grad_fn is None and not f.requires_grad for f in feats.values())
    build_strategy("svf").apply(small)
    assert small.features(_batch()[0])["layer4"].grad_fn is not None


def test_trainable_summary_and_lightning_optimizer(small: TinyModel) -> None:
    groups = build_strategy("svf", stages=[4], backbone_lr_mult=0.5).apply(small)
    summary = trainable_summary(small)
    layer4 = svf_tensor_count(small, ("layer4",), "s")
    total = sum(p.numel() for p in small.parameters())
    assert summary == {
        "head": 256 * 2 + 2,
        "backbone.layer0": 0,
        "backbone.layer1": 0,
        "backbone.layer2": 0,
        "backbone.layer3": 0,
        "backbone.layer4": layer4,
        "trainable": 514 + layer4,
        "frozen": total - 514 - layer4,
    }
    optimizer = build_optimizer(groups, OptimConfig(lr=0.015))
    assert [(g["name"], g["lr"]) for g in optimizer.param_groups] == [
        ("head", 0.015),
        ("backbone.layer4", 0.0075),
    ]


def test_model_without_backbone_contract_is_refused() -> None:
    class NoStages(FewShotModel):
        def __init__(self) -> None:
            super().__init__()
            self.backbone = nn.Conv2d(3, 3, 1)

    with pytest.raises(TypeError, match="breaks the Backbone contract"):
        build_strategy("freeze").apply(NoStages())
