"""Shared components, the baseline and PFENet: reference parameter counts, shapes, gradients, k-shot."""

from __future__ import annotations

import pytest
import torch

from svfseg.models.backbones import build_backbone
from svfseg.models.components import ASPP, extract_features, masked_average_pool, prior_mask
from svfseg.models.registry import build_model, registered_models

SMALL = {"reduce_dim": 32}
REL_BINS = {"bins": (1.0, 0.5, 0.25, 0.125)}


@pytest.fixture(scope="module")
def tiny_backbones():
    return {
        name: build_backbone(name, width_mult=0.125, warn_if_random=False)
        for name in ("resnet50", "vgg16_bn")
    }


def _episode(b: int, k: int, size: int = 65):
    g = torch.Generator().manual_seed(1)
    q = torch.randn(b, 3, size, size, generator=g)
    s = torch.randn(b, k, 3, size, size, generator=g)
    sm = torch.randint(0, 2, (b, k, size, size), generator=g)
    sm[..., :3, :] = 255
    qm = torch.randint(0, 2, (b, size, size), generator=g)
    return q, s, sm, qm


def test_registry_lists_every_method() -> None:
    assert set(registered_models()) >= {"baseline", "pfenet", "bam"}
    with pytest.raises(ValueError, match="method='fem' is unknown"):
        build_model("fem", torch.nn.Identity(), shot=1)


@pytest.mark.parametrize(
    ("backbone", "method", "expected"),
    [
        ("resnet50", "baseline", 4_917_250),
        ("resnet50", "pfenet", 10_817_034),
        ("vgg16_bn", "baseline", 4_524_034),
        ("vgg16_bn", "pfenet", 10_423_818),
    ],
)
def test_head_parameter_counts_match_the_reference(backbone: str, method: str, expected: int) -> None:
    model = build_model(method, build_backbone(backbone, warn_if_random=False), shot=1)
    assert sum(p.numel() for _, p in model.head_named_parameters()) == expected


def test_masked_average_pool_golden_value() -> None:
    feat = torch.arange(8.0).view(1, 2, 2, 2)
    mask = torch.tensor([[[[1.0, 0.0], [1.0, 0.0]]]])
    # channel 0: (0 + 2) / (2 + 0.0005); channel 1: (4 + 6) / 2.0005
    expected = torch.tensor([2 / 2.0005, 10 / 2.0005]).view(1, 2, 1, 1)
    torch.testing.assert_close(masked_average_pool(feat, mask), expected)


def test_prior_mask_matches_a_naive_loop() -> None:
    g = torch.Generator().manual_seed(0)
    q = torch.randn(2, 5, 3, 4, generator=g)
    s = torch.randn(2, 5, 3, 4, generator=g) * (torch.rand(2, 1, 3, 4, generator=g) > 0.4)
    out = prior_mask(q, s)
    for n in range(2):
        qv, sv = q[n].flatten(1).T, s[n].flatten(1).T  # (hw, C)
        sims = torch.empty(qv.shape[0])
        for i in range(qv.shape[0]):
            best = -float("inf")
            for j in range(sv.shape[0]):
                cos = float(qv[i] @ sv[j]) / (float(qv[i].norm() * sv[j].norm()) + 1e-7)
                best = max(best, cos)
            sims[i] = best
        sims = (sims - sims.min()) / (sims.max() - sims.min() + 1e-7)
        torch.testing.assert_close(out[n, 0].flatten(), sims, rtol=1e-5, atol=1e-6)


def test_aspp_has_five_branches_of_256() -> None:
    aspp = ASPP(256, 256)
    assert aspp(torch.randn(1, 256, 9, 9)).shape == (1, 1280, 9, 9)
    assert sum(p.numel() for p in aspp.parameters()) == 2 * (256 * 256 + 256) + 3 * (256 * 256 * 9 + 256)


def test_features_use_the_masked_support_layer3(tiny_backbones) -> None:
    bb = tiny_backbones["resnet50"].eval()
    q, s, sm, _ = _episode(1, 2)
    with torch.no_grad():
        f = extract_features(bb, q, s, sm)
        mid3 = bb.layer3(bb.layer2(bb.layer1(bb.layer0(s[0, 1:2]))))
        fg = torch.nn.functional.interpolate(
            (sm[0, 1:2] == 1).float().unsqueeze(1), size=mid3.shape[-2:], mode="bilinear", align_corners=True
        )
        high = bb.layer4(mid3 * fg) * fg
    # batched vs single-image convs differ only by float rounding, relative to the activation scale
    torch.testing.assert_close(
        f.support_high_masked[0, 1:2], high, rtol=1e-4, atol=1e-5 * float(high.abs().max())
    )
    assert f.query_mid.shape[1] == bb.channels["layer2"] + bb.channels["layer3"]


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


def test_identical_supports_give_the_one_shot_output(tiny_backbones) -> None:
    bb = tiny_backbones["resnet50"]
    one = build_model("baseline", bb, shot=1, **SMALL).eval()
    five = build_model("baseline", bb, shot=5, **SMALL).eval()
    five.load_state_dict(one.state_dict())
    q, s, sm, _ = _episode(1, 1)
    with torch.no_grad():
        a = one(q, s, sm).logits
        b = five(q, s.expand(1, 5, -1, -1, -1), sm.expand(1, 5, -1, -1)).logits
    torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)


def test_backbone_trainable_switch_controls_autograd(tiny_backbones) -> None:
    model = build_model("baseline", tiny_backbones["resnet50"], shot=1, **SMALL)
    q, s, sm, _ = _episode(1, 1)
    with model.backbone_grad():
        assert not torch.is_grad_enabled()
        f = extract_features(model.backbone, q, s, sm)
    assert f.query_high.grad_fn is None
    model.backbone_trainable = True
    with model.backbone_grad():
        f = extract_features(model.backbone, q, s, sm)
    assert f.query_high.grad_fn is not None
