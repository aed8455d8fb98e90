"""Shared model components, checked against independent (naive or functional) computations."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from svfseg.backbones import build_backbone
from svfseg.methods.base import FewShotModel
from svfseg.methods.components import (
    ASPP,
    classifier,
    cross_entropy,
    episode_cues,
    extract_features,
    masked_average_pool,
    mid_channels,
    prior_mask,
    reduction_block,
)


@pytest.fixture(scope="module")
def tiny_backbones() -> dict[str, nn.Module]:
    return {
        name: build_backbone(name, width_mult=0.125, warn_if_random=False).eval()
        for name in ("resnet50", "vgg16_bn")
    }


def _support(b: int, k: int, size: int = 65, seed: int = 1) -> tuple[torch.Tensor, ...]:
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(b, 3, size, size, generator=g)
    s = torch.randn(b, k, 3, size, size, generator=g)
    sm = torch.zeros(b, k, size, size, dtype=torch.long)
    sm[..., 10:50, 15:55] = 1
    sm[..., :4, :] = 255  # ignored pixels count as background
    return q, s, sm


def _up(x: torch.Tensor, size: torch.Size) -> torch.Tensor:
    return F.interpolate(x, size=tuple(size), mode="bilinear", align_corners=True)


def _naive_prior(q: torch.Tensor, s: torch.Tensor, eps: float = 1e-7) -> torch.Tensor:
    """PFENet's prior, one query pixel and one support pixel at a time."""
    out = torch.empty(q.shape[0], q.shape[2] * q.shape[3], dtype=q.dtype)
    for n in range(q.shape[0]):
        qv, sv = q[n].flatten(1).T, s[n].flatten(1).T  # (pixels, C)
        for i in range(qv.shape[0]):
            out[n, i] = max(
                float(qv[i] @ sv[j]) / (float(qv[i].norm() * sv[j].norm()) + eps) for j in range(len(sv))
            )
        out[n] = (out[n] - out[n].min()) / (out[n].max() - out[n].min() + eps)
    return out.view(q.shape[0], 1, *q.shape[2:])


def _dense_prior(q: torch.Tensor, s: torch.Tensor, eps: float = 1e-7) -> torch.Tensor:
    """The reference's dense formulation (full similarity matrix), differentiable."""
    qf, sf = q.flatten(2), s.flatten(2)
    cos = torch.einsum("ncs,ncq->nsq", sf, qf) / (
        sf.norm(dim=1)[:, :, None] * qf.norm(dim=1)[:, None, :] + eps
    )
    sim = cos.max(dim=1).values
    lo, hi = sim.min(1, keepdim=True).values, sim.max(1, keepdim=True).values
    return ((sim - lo) / (hi - lo + eps)).view(q.shape[0], 1, *q.shape[2:])


# ----------------------------------------------------------------------------- prototype
def test_masked_average_pool_golden_value() -> None:
    feat = torch.arange(8.0).view(1, 2, 2, 2)
    mask = torch.tensor([[[[1.0, 0.0], [1.0, 0.0]]]])
    # channel 0: (0 + 2) / (2 + 0.0005); channel 1: (4 + 6) / 2.0005
    expected = torch.tensor([2 / 2.0005, 10 / 2.0005]).view(1, 2, 1, 1)
    torch.testing.assert_close(masked_average_pool(feat, mask), expected)


def test_masked_average_pool_of_an_empty_mask_is_zero_and_resizes_the_mask() -> None:
    feat = torch.randn(2, 3, 5, 5)
    assert masked_average_pool(feat, torch.zeros(2, 1, 5, 5)).abs().max() == 0
    # an all-ones mask at another resolution stays all ones after the bilinear resize
    got = masked_average_pool(feat, torch.ones(2, 1, 9, 9))
    torch.testing.assert_close(got, feat.sum(dim=(2, 3), keepdim=True) / (25 + 0.0005))


# ----------------------------------------------------------------------------- prior
@pytest.mark.parametrize("block_elements", [1, 7, 1 << 26])
def test_prior_mask_matches_a_naive_loop(block_elements: int) -> None:
    g = torch.Generator().manual_seed(0)
    q = torch.randn(2, 5, 3, 4, generator=g, dtype=torch.float64)
    keep = torch.rand(2, 1, 3, 4, generator=g) > 0.4
    s = torch.randn(2, 5, 3, 4, generator=g, dtype=torch.float64) * keep  # masked support pixels are 0
    out = prior_mask(q, s, block_elements=block_elements)
    assert out.shape == (2, 1, 3, 4) and out.dtype == torch.float64
    torch.testing.assert_close(out, _naive_prior(q, s), rtol=1e-10, atol=1e-12)


def test_prior_mask_handles_different_support_size_and_half_inputs() -> None:
    g = torch.Generator().manual_seed(3)
    q = torch.rand(1, 4, 3, 3, generator=g)
    s = torch.rand(1, 4, 2, 5, generator=g)
    torch.testing.assert_close(prior_mask(q, s), _naive_prior(q, s).float(), rtol=1e-5, atol=1e-6)
    half = prior_mask(q.bfloat16(), s.bfloat16())
    assert half.dtype == torch.bfloat16
    assert float(half.min()) == 0.0 and 0.99 <= float(half.max()) <= 1.0


def test_prior_mask_gradient_equals_the_dense_max_gradient() -> None:
    g = torch.Generator().manual_seed(2)
    q0 = torch.randn(3, 6, 4, 4, generator=g, dtype=torch.float64)
    s0 = torch.randn(3, 6, 5, 5, generator=g, dtype=torch.float64) * (
        torch.rand(3, 1, 5, 5, generator=g) > 0.3
    )
    weight = torch.randn(3, 1, 4, 4, generator=g, dtype=torch.float64)
    grads = []
    for fn in (lambda a, b: prior_mask(a, b, block_elements=5), _dense_prior):
        q, s = q0.clone().requires_grad_(), s0.clone().requires_grad_()
        out = fn(q, s)
        (out * weight).sum().backward()
        grads.append((out.detach(), q.grad, s.grad))
    for mine, dense in zip(grads[0], grads[1], strict=True):
        torch.testing.assert_close(mine, dense, rtol=1e-9, atol=1e-12)
    assert grads[0][2].abs().sum() > 0


# ----------------------------------------------------------------------------- head blocks
def test_aspp_matches_functional_branches_and_reference_init() -> None:
    torch.manual_seed(0)
    aspp = ASPP(256, 256)
    assert aspp.out_channels == 1280
    assert sum(p.numel() for p in aspp.parameters()) == 2 * (256 * 256 + 256) + 3 * (256 * 256 * 9 + 256)
    assert all(m.bias is not None for m in aspp.modules() if isinstance(m, nn.Conv2d))
    # kaiming_normal_ defaults: std = sqrt(2 / fan_in); fan_in = 64 * 9 for a 64 -> 256 dilated branch
    wide = ASPP(64, 256).branches[-1][0].weight.detach()
    assert abs(float(wide.std()) / math.sqrt(2 / (64 * 9)) - 1) < 0.02

    small = ASPP(4, 3).eval()
    x = torch.randn(2, 4, 7, 8)
    pool_conv, conv1, *dilated = (m for m in small.modules() if isinstance(m, nn.Conv2d))
    pooled = F.relu(F.conv2d(x.mean(dim=(2, 3), keepdim=True), pool_conv.weight, pool_conv.bias))
    expected = [pooled.expand(-1, -1, 7, 8), F.relu(F.conv2d(x, conv1.weight, conv1.bias))]
    for conv, rate in zip(dilated, (6, 12, 18), strict=True):
        expected.append(F.relu(F.conv2d(x, conv.weight, conv.bias, padding=rate, dilation=rate)))
    torch.testing.assert_close(small(x), torch.cat(expected, dim=1))


def test_reduction_block_and_classifier_layout() -> None:
    block = reduction_block(1536, 256, dropout=0.5)
    conv, relu, drop = block
    assert conv.kernel_size == (1, 1) and conv.bias is None and isinstance(relu, nn.ReLU)
    assert isinstance(drop, nn.Dropout2d) and drop.p == 0.5
    assert sum(p.numel() for p in block.parameters()) == 1536 * 256
    x = torch.randn(1, 1536, 3, 3)
    torch.testing.assert_close(block.eval()(x), F.relu(F.conv2d(x, conv.weight)))

    cls = classifier(256)
    assert sum(p.numel() for p in cls.parameters()) == 256 * 256 * 9 + 256 * 2 + 2
    assert cls[0].bias is None and cls[3].bias is not None and cls[2].p == 0.1


def test_cross_entropy_upsamples_logits_and_ignores_255() -> None:
    g = torch.Generator().manual_seed(4)
    logits = torch.randn(2, 2, 5, 5, generator=g)
    target = torch.randint(0, 2, (2, 17, 17), generator=g)
    target[:, :5] = 255
    up = _up(logits, target.shape[-2:])
    logp = up.log_softmax(dim=1)
    valid = target != 255
    picked = logp.gather(1, target.clamp(max=1).unsqueeze(1)).squeeze(1)
    expected = -picked[valid].mean()
    torch.testing.assert_close(cross_entropy(logits, target), expected)


# ----------------------------------------------------------------------------- features
def _single_image_features(
    bb: nn.Module, img: torch.Tensor, mask: torch.Tensor | None
) -> dict[str, torch.Tensor]:
    low = bb.layer2(bb.layer1(bb.layer0(img)))
    mid3 = bb.layer3(low)
    out = {"mid": torch.cat([mid3, _up(low, mid3.shape[-2:])], 1), "low": low}
    if mask is None:
        out["high"] = bb.layer4(mid3)
    else:
        fg = (mask == 1).float().unsqueeze(1)
        out["mask3"] = _up(fg, mid3.shape[-2:])
        high = bb.layer4(mid3 * out["mask3"])
        out["high"] = high * _up(fg, high.shape[-2:])
    return out


@pytest.mark.parametrize("name", ["resnet50", "vgg16_bn"])
def test_batched_features_match_per_image_features(tiny_backbones, name: str) -> None:
    bb = tiny_backbones[name]
    q, s, sm = _support(2, 2)
    with torch.no_grad():
        f = extract_features(bb, q, s, sm)
        query = _single_image_features(bb, q[1:2], None)
        supp = _single_image_features(bb, s[1, 0:1], sm[1, 0:1])
    assert f.query_mid.shape[1] == mid_channels(bb) == bb.channels["layer2"] + bb.channels["layer3"]
    assert f.support_mid.shape[:2] == (2, 2) and f.support_mask_mid.shape[:3] == (2, 2, 1)

    def close(a: torch.Tensor, b: torch.Tensor) -> None:
        # batched vs single-image convs differ only by float rounding, relative to the activation scale
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5 * float(b.abs().max()))

    close(f.query_mid[1:2], query["mid"])
    close(f.query_high[1:2], query["high"])
    close(f.query_low[1:2], query["low"])
    close(f.support_mid[1, 0:1], supp["mid"])
    close(f.support_high_masked[1, 0:1], supp["high"])
    torch.testing.assert_close(f.support_mask_mid[1, 0:1], supp["mask3"])


def test_vgg_mid_features_resize_layer2_to_layer3(tiny_backbones) -> None:
    bb = tiny_backbones["vgg16_bn"]
    q, s, sm = _support(1, 1)
    with torch.no_grad():
        f = extract_features(bb, q, s, sm)
    assert f.query_low.shape[-1] == 2 * f.query_mid.shape[-1] - 1  # 33 -> 17 (ceil-mode pool)
    assert f.query_mid.shape[1] == 3 * bb.channels["layer2"]  # 512 + 256 at full width


class _Cues(FewShotModel):
    """Minimal model with the attributes episode_cues needs."""

    def __init__(self, backbone: nn.Module) -> None:
        super().__init__()
        self.backbone = backbone
        self.down_query = reduction_block(mid_channels(backbone), 8)
        self.down_supp = reduction_block(mid_channels(backbone), 8)


def test_episode_cues_are_per_shot_prototypes_and_priors(tiny_backbones) -> None:
    model = _Cues(tiny_backbones["resnet50"]).eval()
    q, s, sm = _support(2, 3)
    sm[1, 2] = 0
    sm[1, 2, 20:30, 20:30] = 1
    with torch.no_grad():
        cues = episode_cues(model, q, s, sm)
        f = cues.features
        supp = model.down_supp(f.support_mid[1, 2:3])
        proto = masked_average_pool(supp, f.support_mask_mid[1, 2:3])
        prior = prior_mask(f.query_high[1:2], f.support_high_masked[1, 2:3])
    assert cues.prototypes.shape == (2, 3, 8, 1, 1)
    assert cues.priors.shape == (2, 3, 1, *cues.query_feat.shape[-2:])
    torch.testing.assert_close(cues.prototypes[1, 2], proto[0], rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(
        cues.priors[1, 2:3], _up(prior, cues.query_feat.shape[-2:]), rtol=1e-5, atol=1e-6
    )


def test_backbone_grad_switch_controls_autograd(tiny_backbones) -> None:
    model = _Cues(tiny_backbones["resnet50"])
    q, s, sm = _support(1, 1)
    cues = episode_cues(model, q, s, sm)  # frozen (the default): no graph through the backbone
    assert cues.features.query_high.grad_fn is None and cues.features.support_high_masked.grad_fn is None
    assert cues.query_feat.grad_fn is not None  # the head still trains
    model.backbone_trainable = True
    cues = episode_cues(model, q, s, sm)
    assert cues.features.query_high.grad_fn is not None
    cues.priors.sum().backward()  # the prior alone reaches layer4 through both branches
    assert model.backbone.layer4[0].conv1.weight.grad.abs().sum() > 0


def test_the_former_models_package_says_where_its_names_went() -> None:
    import importlib

    for old in ("svfseg.models", "svfseg.models.registry", "svfseg.models.backbones"):
        with pytest.raises(
            ImportError, match=r"svfseg\.backbones.*svfseg\.methods\.registry\.register_model"
        ):
            importlib.import_module(old)
