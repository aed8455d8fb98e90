"""SVF variants on the SVF layers: top-k / bottom-k directions (svf_top, svf_bottom) and SALT (salt):
trainable counts from the conv shapes, exactness at initialisation, the merge round trip, frozen singular
values bit-identical under SGD with weight decay and momentum, strict checkpoint loads into the structure
built from shapes, the adapter artifact, the budget tool, option errors, and one tiny train.py run each."""

from __future__ import annotations

import copy
import json
import math
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import Tensor, nn

from svfseg.backbones import build_backbone
from svfseg.finetune import build_strategy, check_param_groups
from svfseg.finetune.budget import main as budget_main
from svfseg.inference import Predictor
from svfseg.lightning.checkpointing import svf_artifact_path
from svfseg.lightning.module import FewShotSegModule
from svfseg.svf import (
    SVFConv2d,
    SVFStateError,
    adapter_state_dict,
    load_adapter_state_dict,
    merge_svf,
    svf_layers,
)
from svfseg.svf.convert import apply_svf
from svfseg.tasks.builders import build_datamodule
from svfseg.tasks.resolve import TrainRun
from svfseg.tasks.train import train
from tests.helpers.hydra import CONF_DIR, compose_config, tiny_train_config
from tests.helpers.models import Net, train_steps

WIDTH = 0.125
L234 = ("layer2", "layer3", "layer4")
# The three config files, as the options the strategy receives (conf/finetune/<name>.yaml).
VARIANTS: dict[str, dict[str, Any]] = {
    "svf_top": {"directions": "top", "k": 0.25},
    "svf_bottom": {"directions": "bottom", "k": 0.25},
    "salt": {"directions": "top", "k": 0.25, "parametrization": "scale_shift", "residual_rank": 4},
}
CASES = [
    *VARIANTS.items(),
    ("top_int_exp", {"directions": "top", "k": 3, "parametrization": "exp"}),
    ("bottom_residual", {"directions": "bottom", "k": 2, "residual_rank": 2}),
]


def net(name: str = "resnet50", seed: int = 0) -> Net:
    torch.manual_seed(seed)
    kwargs = {} if name.startswith("efficientnet") else {"width_mult": WIDTH}
    return Net(build_backbone(name, warn_if_random=False, **kwargs))


def strategy(options: dict[str, Any], **extra: Any) -> Any:
    return build_strategy("svf", **options, **extra)


# ------------------------------------------------------------------------------- counts from shapes
def expected_layer_count(conv: nn.Conv2d, options: dict[str, Any]) -> int:
    """Trained elements of one conv, from its shape: per group R = min(C_out/G, C_in/G k k) values,
    k of them selected (a fraction f: ceil(f R)); direct / exp train k values, scale_shift 2 k; a residual
    of rank r on the m = R - k other directions adds B (m x r) and A (r x m), r capped at m."""
    g = conv.groups
    rank = min(conv.out_channels // g, conv.in_channels // g * conv.kernel_size[0] * conv.kernel_size[1])
    k = options.get("k")
    chosen = rank if k is None else min(rank, math.ceil(k * rank) if isinstance(k, float) else k)
    per_value = 2 if options.get("parametrization") == "scale_shift" else 1
    rest = rank - chosen
    r = min(options.get("residual_rank", 0), rest)
    return g * (per_value * chosen + 2 * r * rest)


def expected_counts(backbone: nn.Module, options: dict[str, Any]) -> dict[str, int]:
    """Per stage over the convs SVF converts (exact nn.Conv2d; depthwise ones only where the backbone
    asks for them)."""
    depthwise = bool(getattr(backbone, "svf_depthwise", False))
    out = {}
    for stage in L234:
        convs = [
            m
            for m in getattr(backbone, stage).modules()
            if type(m) is nn.Conv2d and (depthwise or not (m.groups > 1 and m.in_channels == m.groups))
        ]
        out[stage] = sum(expected_layer_count(m, options) for m in convs)
    return out


def trainable_per_stage(model: Net) -> dict[str, int]:
    return {
        s: sum(p.numel() for p in getattr(model.backbone, s).parameters() if p.requires_grad) for s in L234
    }


@pytest.mark.parametrize("backbone", ["resnet50", "vgg16_bn", "efficientnet_lite0"])
@pytest.mark.parametrize(("label", "options"), CASES, ids=[c[0] for c in CASES])
def test_trainable_count_equals_the_count_from_the_conv_shapes(
    backbone: str, label: str, options: dict[str, Any]
) -> None:
    model = net(backbone)
    expected = expected_counts(model.backbone, options)
    groups = strategy(options).apply(model)
    check_param_groups(model, groups)
    assert trainable_per_stage(model) == expected and all(v > 0 for v in expected.values())
    assert [g["name"] for g in groups] == ["head", *(f"backbone.{s}" for s in L234)]
    assert all(g["lr_mult"] == (1.0 if g["name"] == "head" else 0.1) for g in groups)
    assert model.backbone_trainable and model.frozen_bn
    # the frozen directions are no parameters at all: only the selection (and A, B) can train
    for _, layer in svf_layers(model.backbone):
        assert not layer.u.requires_grad and not layer.v.requires_grad and not layer.s0.requires_grad


def test_k_fraction_rounds_up_and_an_integer_is_capped_at_the_rank() -> None:
    conv = nn.Conv2d(6, 10, 1)  # rank 6
    assert SVFConv2d.from_conv(conv, directions="top", k=0.1).s.numel() == 1  # ceil(0.6)
    assert SVFConv2d.from_conv(conv, directions="top", k=0.5).s.numel() == 3
    assert SVFConv2d.from_conv(conv, directions="bottom", k=1.0).s.numel() == 6
    assert SVFConv2d.from_conv(conv, directions="top", k=50).s.numel() == 6
    grouped = SVFConv2d.from_conv(nn.Conv2d(8, 12, 3, groups=2), directions="bottom", k=2, residual_rank=9)
    assert grouped.s.numel() == 4 and tuple(grouped.s_lora_b.shape) == (2, 4, 4)  # r capped at R - k = 4


# ------------------------------------------------------------------------------- exactness and merging
@pytest.mark.parametrize(("label", "options"), CASES, ids=[c[0] for c in CASES])
def test_exact_at_initialisation_and_merged_equals_unmerged(label: str, options: dict[str, Any]) -> None:
    model = net().double().eval()
    x = torch.randn(2, 3, 41, 41, dtype=torch.float64)
    with torch.no_grad():
        before = model.backbone(x)
    strategy(options).apply(model)
    model.eval()
    with torch.no_grad():
        init = model.backbone(x)
    for key, value in before.items():
        torch.testing.assert_close(init[key], value, rtol=1e-10, atol=1e-10)
    with torch.no_grad():
        for p in model.backbone.parameters():
            if p.requires_grad:
                p.add_(0.1 * torch.randn_like(p) * (p.abs().mean() + 0.1))
    model.train()  # grad mode + train: the factorised path ...
    factorised = model.backbone(x)
    model.eval()
    with torch.no_grad():
        unmerged = model.backbone(x)  # ... and the cached merged conv
    assert len(merge_svf(model.backbone)) > 0 and next(svf_layers(model.backbone), None) is None
    with torch.no_grad():
        merged = model.backbone(x)
    for key in L234:
        assert not torch.allclose(unmerged[key], before[key], rtol=1e-6, atol=1e-6)  # the update acts
        torch.testing.assert_close(factorised[key].detach(), unmerged[key], rtol=1e-9, atol=1e-9)
        torch.testing.assert_close(merged[key], unmerged[key], rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize("name", list(VARIANTS))
def test_float32_merge_round_trip_within_1e5(name: str) -> None:
    model = net().eval()
    strategy(VARIANTS[name]).apply(model)
    with torch.no_grad():
        for p in model.backbone.parameters():
            if p.requires_grad:
                p.add_(0.05 * torch.randn_like(p))
    x = torch.randn(1, 3, 33, 33)
    model.eval()
    with torch.no_grad():
        unmerged = model(x).logits
        merge_svf(model.backbone)
        merged = model(x).logits
    torch.testing.assert_close(merged, unmerged, rtol=1e-5, atol=1e-5)


def test_salt_update_stays_in_its_blocks() -> None:
    """W' - W = U_top diag(changed top values) V_top^T + U_rest B A V_rest^T: no top/rest cross terms."""
    conv = nn.Conv2d(6, 9, 3).double()
    layer = SVFConv2d.from_conv(conv, **{**VARIANTS["salt"], "k": 3, "residual_rank": 2})
    with torch.no_grad():
        for _, p in layer.core_tensors():
            p.add_(0.3 * torch.randn_like(p))
        delta = (layer.merged_weight() - conv.weight).reshape(9, -1)
    u, v = layer.u, layer.v  # (9, 9), (9, 54): rank 9, top 3
    core = u.T @ delta @ v.T  # the update in singular coordinates
    assert core[:3, 3:].abs().max() < 1e-12 and core[3:, :3].abs().max() < 1e-12
    assert torch.allclose(core[:3, :3], torch.diag(torch.diagonal(core[:3, :3])), atol=1e-12)
    expected_rest = layer.s_lora_b[0] @ layer.s_lora_a[0]
    torch.testing.assert_close(core[3:, 3:], expected_rest, rtol=1e-10, atol=1e-12)


def test_salt_a_init_depends_on_the_weights_only() -> None:
    """A is drawn from a generator seeded by the layer fingerprint: the same weights give the same A
    whatever the global RNG did (every DDP rank, every re-conversion), other weights another A."""
    conv = nn.Conv2d(6, 9, 3)
    torch.manual_seed(1)
    first = SVFConv2d.from_conv(conv, **VARIANTS["salt"]).s_lora_a
    torch.manual_seed(2)
    torch.randn(100)
    again = SVFConv2d.from_conv(conv, **VARIANTS["salt"]).s_lora_a
    other = SVFConv2d.from_conv(nn.Conv2d(6, 9, 3), **VARIANTS["salt"]).s_lora_a
    assert torch.equal(first, again) and not torch.equal(first, other)
    assert first.abs().max() <= 1 / math.sqrt(first.shape[2])  # LoRA's U(-1/sqrt(m), 1/sqrt(m))


# ------------------------------------------------------------------------------- frozen values under SGD
def _frozen_and_trained(layer: Any) -> tuple[Tensor, Tensor]:
    s = layer.effective_s().detach().reshape(layer.groups, layer.group_rank)
    return layer._split(s)[1].clone(), layer._split(s)[0].clone()


@pytest.mark.parametrize(("label", "options"), CASES, ids=[c[0] for c in CASES])
def test_frozen_singular_values_stay_bit_identical_under_weight_decay_and_momentum(
    label: str, options: dict[str, Any]
) -> None:
    model = net()
    groups = strategy(options).apply(model)
    layers = dict(svf_layers(model.backbone))
    frozen = {n: _frozen_and_trained(layer)[0] for n, layer in layers.items()}
    selected = {n: _frozen_and_trained(layer)[1] for n, layer in layers.items()}
    fixed = {n: (layer.u.clone(), layer.v.clone(), layer.s0.clone()) for n, layer in layers.items()}
    before = {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}
    optimizer = torch.optim.SGD(
        [{"params": g["params"], "lr": 0.5 * g["lr_mult"]} for g in groups], momentum=0.9, weight_decay=0.05
    )
    model.train()
    train_steps(model, optimizer, 3)
    for name, layer in layers.items():
        now_frozen, now_selected = _frozen_and_trained(layer)
        assert torch.equal(now_frozen, frozen[name]), name  # bitwise
        assert all(torch.equal(a, b) for a, b in zip((layer.u, layer.v, layer.s0), fixed[name])), name
        assert not torch.equal(now_selected, selected[name]), name
    changed = {n for n, p in model.named_parameters() if p.requires_grad and not torch.equal(p, before[n])}
    assert changed == set(before)  # every trained tensor moved (weight decay alone moves them)


# ------------------------------------------------------------------------------- checkpoints and artifact
def _same(a: Any, b: Any) -> bool:
    """Tensors bitwise, the SVF layers' extra state (metadata dicts) by value."""
    return torch.equal(a, b) if isinstance(a, Tensor) else a == b


@pytest.mark.parametrize("name", list(VARIANTS))
def test_checkpoint_loads_strictly_into_the_structure_built_from_shapes(name: str) -> None:
    trained_model = net(seed=0)
    strategy(VARIANTS[name]).apply(trained_model)
    with torch.no_grad():
        for p in trained_model.parameters():
            if p.requires_grad:
                p.add_(0.05 * torch.randn_like(p))
    state = trained_model.state_dict()
    fresh = net(seed=1)  # other random weights: only the state dict makes them equal
    strategy(VARIANTS[name]).apply(fresh, from_checkpoint=True)  # no SVD, zero factors
    assert all(not layer.fingerprint for _, layer in svf_layers(fresh.backbone))
    fresh.load_state_dict(state, strict=True)
    assert all(_same(v, state[k]) for k, v in fresh.state_dict().items())
    x = torch.randn(1, 3, 33, 33)
    trained_model.eval(), fresh.eval()
    with torch.no_grad():
        assert torch.equal(fresh(x).logits, trained_model(x).logits)


def test_a_checkpoint_of_another_variant_is_refused() -> None:
    source = net()
    strategy(VARIANTS["svf_top"]).apply(source)
    state = source.state_dict()
    other = net()
    strategy(VARIANTS["svf_bottom"]).apply(other, from_checkpoint=True)  # same shapes, other directions
    with pytest.raises(SVFStateError, match=r"mismatch for 'directions': checkpoint has 'top'.*'bottom'"):
        other.load_state_dict(state, strict=True)
    plain = net()
    strategy({}).apply(plain, from_checkpoint=True)  # finetune=svf: every value trains
    with pytest.raises(SVFStateError, match=r"'directions': checkpoint has 'top', this layer has 'all'"):
        plain.load_state_dict(state, strict=True)


@pytest.mark.parametrize("name", list(VARIANTS))
def test_adapter_artifact_restores_the_fine_tune_exactly(name: str) -> None:
    model = net()
    strategy(VARIANTS[name]).apply(model)
    with torch.no_grad():
        for p in model.parameters():
            if p.requires_grad:
                p.add_(0.05 * torch.randn_like(p))
    artifact = adapter_state_dict(model.backbone)
    names = {n for n, p in model.backbone.named_parameters() if p.requires_grad}
    assert set(artifact["tensors"]) == names and not artifact["modules"]
    layer_meta = next(iter(artifact["layers"].values()))
    assert layer_meta["directions"] == VARIANTS[name]["directions"]
    x = torch.randn(1, 3, 33, 33)
    model.eval()
    with torch.no_grad():
        ref = model.backbone(x)["layer4"]
    # the same pretrained weights, converted again (SVD), then the artifact
    target = net()
    strategy(VARIANTS[name]).apply(target)
    load_adapter_state_dict(target.backbone, artifact)
    target.eval()
    with torch.no_grad():
        assert torch.equal(target.backbone(x)["layer4"], ref)
    wrong = net()
    strategy({**VARIANTS[name], "k": 0.5}).apply(wrong)
    with pytest.raises(SVFStateError, match="'group_k' differs"):
        load_adapter_state_dict(wrong.backbone, artifact)


# ------------------------------------------------------------------------------- options
@pytest.mark.parametrize(
    ("options", "match"),
    [
        ({"directions": "top"}, r"k=None is invalid: use an integer >= 1 .* \(directions='top' needs k\)"),
        ({"directions": "top", "k": 0}, r"k=0 is invalid"),
        ({"directions": "bottom", "k": 1.5}, r"k=1.5 is invalid: .* fraction in \(0, 1\]"),
        ({"directions": "top", "k": "half"}, r"k='half' is invalid"),
        ({"k": 8}, r"k=8 is set but directions='all' .* set directions=top or directions=bottom"),
        ({"directions": "middle", "k": 2}, r"directions='middle' is invalid: choose one of"),
        ({"residual_rank": 4}, r"residual_rank=4 needs frozen directions .* set directions=top"),
        ({"directions": "top", "k": 2, "residual_rank": -1}, r"residual_rank=-1 is invalid: use an integer"),
        (
            {"directions": "top", "k": 2, "train": ["u", "s"]},
            r"train=\['u', 's'\] is invalid with directions",
        ),
        ({"parametrization": "scale"}, r"parametrization='scale' is invalid: choose one of"),
    ],
)
def test_invalid_options_name_the_key_the_value_and_the_fix(options: dict[str, Any], match: str) -> None:
    with pytest.raises(ValueError, match=match):
        strategy(options)


def test_apply_svf_takes_the_variant_options_too() -> None:
    model = nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU(), nn.Conv2d(8, 4, 1))
    names = apply_svf(model, directions="bottom", k=1)
    assert names == ["0", "2"] and [model[0].s.numel(), model[2].s.numel()] == [1, 1]


# ------------------------------------------------------------------------------- budget tool
def test_budget_tool_counts_the_variants(capsys: pytest.CaptureFixture[str]) -> None:
    meta = build_backbone("resnet50", warn_if_random=False).to("meta")
    docs = {"svf_top": 3_136, "svf_bottom": 3_136, "salt": 81_536}  # the numbers docs/peft.md quotes
    for name, options in VARIANTS.items():
        assert (CONF_DIR / "finetune" / f"{name}.yaml").is_file()
        assert budget_main(["backbone=resnet50", f"finetune={name}", "--json"]) == 0
        got = json.loads(capsys.readouterr().out)
        assert {s: got["trainable"][s] for s in L234} == expected_counts(meta, options), name
        assert got["backbone_trainable"] == docs[name] and got["svf_same_stages"] == 12_544
        assert got["finetune"]["directions"] == options["directions"]
    assert (
        budget_main(["backbone=resnet50", "finetune=salt", "finetune.k=8", "finetune.residual_rank=1"]) == 0
    )
    text = capsys.readouterr().out
    assert "finetune=svf (every singular value) on the same stages trains 12,544" in text
    assert budget_main(["finetune=svf_top", "finetune.k=0"]) == 2
    assert "k=0 is invalid" in capsys.readouterr().err


# ------------------------------------------------------------------------------- one tiny run each
def _load(path: Path) -> FewShotSegModule:
    return FewShotSegModule.load_from_checkpoint(
        path, map_location="cpu", weights_only=True, strict=True, load_pretrained=False
    ).eval()


@pytest.mark.parametrize("name", list(VARIANTS))
def test_tiny_train_run_checkpoint_artifact_and_merged_prediction(
    name: str, synthetic_pascal: Any, tmp_path: Path
) -> None:
    root, min_pixels = synthetic_pascal
    extra = [f"finetune={name}", "trainer.deterministic=true", "optim.schedule=constant"]
    cfg = tiny_train_config(root, tmp_path / name, min_pixels=min_pixels, extra=extra)
    result = train(cfg)
    assert math.isfinite(result["miou"])
    best = Path(result["checkpoint"])
    module = _load(best)  # the strategy from the stored spec (structure only), then a strict load
    state = torch.load(best, map_location="cpu", weights_only=True)
    assert state["hyper_parameters"]["run"]["finetune"]["directions"] == VARIANTS[name]["directions"]
    assert all(_same(v, state["state_dict"][k]) for k, v in module.state_dict().items())
    layers = dict(svf_layers(module.model.backbone))
    assert layers and all(layer.directions == VARIANTS[name]["directions"] for layer in layers.values())
    # the frozen directions of the trained model are still the pretrained singular values, bit for bit
    for layer in layers.values():
        s = layer.effective_s().detach().reshape(layer.groups, layer.group_rank)
        s0 = layer.s0.reshape(layer.groups, layer.group_rank)
        assert torch.equal(layer._split(s)[1], layer._split(s0)[1])

    artifact = torch.load(svf_artifact_path(best), map_location="cpu", weights_only=True)
    names = {n for n, p in module.model.backbone.named_parameters() if p.requires_grad}
    assert names == set(artifact["tensors"]) and artifact["finetune"]["name"] == "svf"
    saved = {n: p.detach().clone() for n, p in module.model.backbone.named_parameters() if n in names}
    with torch.no_grad():
        for n, p in module.model.backbone.named_parameters():
            if n in names:
                p.zero_()
    load_adapter_state_dict(module.model.backbone, artifact)
    assert all(torch.equal(p, saved[n]) for n, p in module.model.backbone.named_parameters() if n in names)

    datamodule = build_datamodule(TrainRun.from_config(cfg))
    datamodule.setup("test")
    batch = next(iter(datamodule.eval_dataloader(int(cfg.dataset.eval_seeds[0]))))
    merged = Predictor(_load(best), device="cpu")
    unmerged = Predictor(copy.deepcopy(module), device="cpu", merge=False)
    assert next(svf_layers(merged.model), None) is None
    args = (batch["query_img"], batch["support_img"][0], batch["support_mask"][0])
    torch.testing.assert_close(merged.logits(*args), unmerged.logits(*args), rtol=1e-5, atol=1e-5)


def test_variant_config_files_compose_to_the_documented_options() -> None:
    for name, options in VARIANTS.items():
        cfg = compose_config("train", [f"finetune={name}"])
        assert cfg.finetune.name == "svf"
        assert {k: cfg.finetune[k] for k in options} == options
