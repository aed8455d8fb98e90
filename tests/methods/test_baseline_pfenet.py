"""The baseline and PFENet: reference parameter counts, shapes, losses, gradients, k-shot averaging."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from svfseg.backbones import build_backbone
from svfseg.data.fold import FoldSpec
from svfseg.methods import registry
from svfseg.methods.baseline import BaselineASPP
from svfseg.methods.factory import build_fewshot_model
from svfseg.methods.pfenet import PFENet, bin_size, check_bins
from svfseg.methods.registry import build_model, method_options, register_model, registered_models

SMALL = {"reduce_dim": 32}
REL_BINS = {"bins": (1.0, 0.5, 0.25, 0.125)}


@pytest.fixture(scope="module")
def full_backbones() -> dict[str, nn.Module]:
    return {name: build_backbone(name, warn_if_random=False) for name in ("resnet50", "vgg16_bn")}


@pytest.fixture(scope="module")
def tiny_backbones() -> dict[str, nn.Module]:
    return {
        name: build_backbone(name, width_mult=0.125, warn_if_random=False)
        for name in ("resnet50", "vgg16_bn")
    }


def _episode(b: int, k: int, size: int = 65, seed: int = 1) -> tuple[torch.Tensor, ...]:
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(b, 3, size, size, generator=g)
    s = torch.randn(b, k, 3, size, size, generator=g)
    sm = torch.randint(0, 2, (b, k, size, size), generator=g)
    sm[..., :3, :] = 255
    qm = torch.randint(0, 2, (b, size, size), generator=g)
    qm[:, -3:] = 255
    return q, s, sm, qm


def _head_count(model: nn.Module) -> int:
    return sum(p.numel() for _, p in model.head_named_parameters())


# ----------------------------------------------------------------------------- registry
def test_registry_lists_every_method_and_rejects_unknown_names() -> None:
    assert set(registered_models()) >= {"baseline", "pfenet", "bam"}
    with pytest.raises(ValueError, match="method='fem' is unknown"):
        build_model("fem", nn.Identity(), shot=1)
    with pytest.raises(ValueError, match="already registered"):
        register_model("pfenet")(BaselineASPP)
    assert register_model("baseline")(BaselineASPP) is BaselineASPP  # re-registering the same is a no-op


def test_a_method_of_ones_own_joins_the_table_and_runs_through_the_run_factory(monkeypatch) -> None:
    monkeypatch.setattr(registry, "_REGISTRY", dict(registry._REGISTRY))  # leave the table as it was

    def mine(backbone: nn.Module, *, shot: int, reduce_dim: int = 8, extra: float = 0.0) -> BaselineASPP:
        return BaselineASPP(backbone, shot=shot, reduce_dim=reduce_dim)

    assert register_model("mine")(mine) is mine
    assert "mine" in registered_models() and method_options("mine") == ("extra", "reduce_dim")
    fold = FoldSpec(dataset="pascal", fold=0, shot=2)
    spec = {"name": "resnet50", "width_mult": 0.125, "pretrained": None}
    model = build_fewshot_model({"name": "mine", "reduce_dim": 16}, spec, fold=fold, load_pretrained=False)
    assert isinstance(model, BaselineASPP) and model.backbone.width_mult == 0.125


def test_the_method_modules_do_not_import_the_table() -> None:
    code = (
        "import sys, svfseg.methods.bam, svfseg.methods.baseline, svfseg.methods.pfenet; "
        "print('svfseg.methods.registry' in sys.modules)"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert proc.stdout.strip() == "False"


# ----------------------------------------------------------------------------- parameter counts
@pytest.mark.parametrize(
    ("backbone", "method", "expected"),
    [
        ("resnet50", "baseline", 4_917_250),
        ("resnet50", "pfenet", 10_817_034),
        ("vgg16_bn", "baseline", 4_524_034),
        ("vgg16_bn", "pfenet", 10_423_818),
    ],
)
@pytest.mark.parametrize("shot", [1, 5])
def test_head_parameter_counts_match_the_reference(full_backbones, backbone, method, expected, shot) -> None:
    model = build_model(method, full_backbones[backbone], shot=shot)
    assert _head_count(model) == expected
    # down_query (never optimised by the reference baseline) is part of the head here
    names = {n for n, _ in model.head_named_parameters()}
    assert "down_query.0.weight" in names
    assert model.down_query[0].weight.numel() == 256 * (1536 if backbone == "resnet50" else 768)


def test_pfenet_head_breakdown(full_backbones) -> None:
    model = PFENet(full_backbones["resnet50"])
    d = 256
    sizes = {
        "down": 2 * 1536 * d,
        "init_merge": 4 * 513 * d,
        "alpha_conv": 3 * 512 * d,
        "beta_conv": 4 * 2 * d * d * 9,
        "inner_cls": 4 * (d * d * 9 + 2 * d + 2),
        "res1": 4 * d * d,
        "res2": 2 * d * d * 9,
        "cls": d * d * 9 + 2 * d + 2,
    }
    got = {
        "down": _count(model.down_query) + _count(model.down_supp),
        **{k: _count(getattr(model, k)) for k in sizes if k != "down"},
    }
    assert got == sizes and sum(sizes.values()) == 10_817_034


def _count(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


# ----------------------------------------------------------------------------- forward and gradients
@pytest.mark.parametrize("backbone", ["resnet50", "vgg16_bn"])
@pytest.mark.parametrize("method", ["baseline", "pfenet"])
@pytest.mark.parametrize("shot", [1, 5])
def test_shapes_losses_and_every_head_parameter_learns(tiny_backbones, backbone, method, shot) -> None:
    opts = {**SMALL, **(REL_BINS if method == "pfenet" else {})}
    model = build_model(method, tiny_backbones[backbone], shot=shot, **opts)
    q, s, sm, qm = _episode(2, shot)
    out = model(q, s, sm, qm)
    assert out.logits.shape == (2, 2, 65, 65)
    assert torch.isfinite(out.loss)
    assert set(out.losses) == ({"main"} if method == "baseline" else {"main", "aux"})
    out.loss.backward()
    missing = [n for n, p in model.head_named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    assert missing == []  # down_query included (the reference forgets it)
    assert all(p.grad is None for p in model.backbone.parameters())  # frozen by default: no_grad backbone


def test_full_width_resnet50_forward(full_backbones) -> None:
    model = BaselineASPP(full_backbones["resnet50"], shot=1).eval()
    q, s, sm, qm = _episode(1, 1)
    with torch.no_grad():
        out = model(q, s, sm, qm)
    assert out.logits.shape == (1, 2, 65, 65) and torch.isfinite(out.logits).all()
    torch.testing.assert_close(out.loss, F.cross_entropy(out.logits, qm, ignore_index=255))


def test_pfenet_absolute_bins_and_weighted_aux_loss(tiny_backbones) -> None:
    model = PFENet(tiny_backbones["vgg16_bn"], reduce_dim=16, bins=(12, 6, 3, 1), aux_weight=0.5).eval()
    q, s, sm, qm = _episode(1, 2)
    with torch.no_grad():
        out = model(q, s, sm, qm)
    assert out.logits.shape == (1, 2, 65, 65)
    torch.testing.assert_close(out.losses["main"], F.cross_entropy(out.logits, qm, ignore_index=255))
    torch.testing.assert_close(out.loss, out.losses["main"] + 0.5 * out.losses["aux"])


def test_pfenet_bin_rules() -> None:
    assert [bin_size(b, 9) for b in (1.0, 0.5, 0.25, 0.125)] == [9, 4, 2, 1]  # relative, at least 1
    assert [bin_size(b, 9) for b in (60, 30, 15, 8)] == [60, 30, 15, 8]
    assert bin_size(1, 17) == 17  # the reference's rule: a bin <= 1 is relative
    for bad in ((), (60, 0), (2.5,), (True,), ("8",)):
        with pytest.raises(ValueError, match="bin"):
            check_bins(bad)


def test_backbone_trains_when_the_strategy_says_so() -> None:
    bb = build_backbone("resnet50", width_mult=0.125, warn_if_random=False)
    model = build_model("pfenet", bb, shot=2, **SMALL, **REL_BINS)
    model.backbone_trainable = True
    q, s, sm, qm = _episode(1, 2)
    model(q, s, sm, qm).loss.backward()
    for stage in ("layer0", "layer2", "layer4"):
        grads = [p.grad for p in getattr(model.backbone, stage).parameters()]
        assert all(g is not None for g in grads), stage


# ----------------------------------------------------------------------------- k-shot
@pytest.mark.parametrize("method", ["baseline", "pfenet"])
def test_identical_supports_give_the_one_shot_output(tiny_backbones, method) -> None:
    opts = {**SMALL, **(REL_BINS if method == "pfenet" else {})}
    bb = tiny_backbones["resnet50"]
    one = build_model(method, bb, shot=1, **opts).eval()
    five = build_model(method, bb, shot=5, **opts).eval()
    five.load_state_dict(one.state_dict())
    q, s, sm, _ = _episode(1, 1)
    with torch.no_grad():
        a = one(q, s, sm).logits
        b = five(q, s.expand(1, 5, -1, -1, -1), sm.expand(1, 5, -1, -1)).logits
    torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)  # a sum over shots (reference baseline) fails


def test_shot_order_does_not_matter(tiny_backbones) -> None:
    model = build_model("baseline", tiny_backbones["vgg16_bn"], shot=3, **SMALL).eval()
    q, s, sm, _ = _episode(1, 3)
    order = torch.tensor([2, 0, 1])
    with torch.no_grad():
        a = model(q, s, sm).logits
        b = model(q, s[:, order], sm[:, order]).logits
    torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)
