"""Memory and precision options: activation checkpointing of backbone stages, and bf16 autocast under SVF.

* ``finetune.checkpointing=true`` recomputes the stages backward passes through; the loss and every
  gradient equal the run without it (same kernels, BN in eval mode, no dropout in the backbone), fewer
  tensors are kept for backward, and BN running statistics stay put;
* the option is recorded in the strategy's options (so checkpoints re-apply it), lists the right
  stages for svf / part / full, and ``bn`` refuses it (BN in train mode would update twice);
* under ``torch.autocast(bfloat16)`` an SVF layer's merged weight stays float32 and equal to the
  float32 merge, while the conv that consumes it runs in bf16 (what ``trainer.precision=bf16-mixed``
  does); a bf16-mixed training step of SVF gives float32 gradients of ``s``.
"""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from svfseg.backbones import build_backbone
from svfseg.finetune import build_strategy
from svfseg.methods.registry import build_model
from svfseg.svf import apply_svf, svf_layers
from tests.helpers.hydra import compose_config

SMALL = {"reduce_dim": 32}


def _model(method: str = "baseline", shot: int = 2) -> nn.Module:
    backbone = build_backbone("resnet50", width_mult=0.125, warn_if_random=False)
    return build_model(method, backbone, shot=shot, **SMALL)


def _episode(b: int = 2, k: int = 2, size: int = 65) -> tuple[torch.Tensor, ...]:
    g = torch.Generator().manual_seed(3)
    q = torch.randn(b, 3, size, size, generator=g)
    s = torch.randn(b, k, 3, size, size, generator=g)
    sm = torch.randint(0, 2, (b, k, size, size), generator=g)
    qm = torch.randint(0, 2, (b, size, size), generator=g)
    return q, s, sm, qm


def _saved_bytes(fn) -> int:
    """Bytes of the distinct storages autograd keeps for backward while ``fn`` runs the forward."""
    storages: dict[int, int] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        if not isinstance(t, nn.Parameter):
            storages[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = fn()
    return sum(storages.values()), out


@pytest.mark.parametrize("method", ["baseline", "pfenet"])
@pytest.mark.parametrize("strategy", [{"name": "svf"}, {"name": "part", "stages": ["layer3", "layer4"]}])
def test_checkpointing_gives_the_same_loss_and_gradients(method: str, strategy: dict) -> None:
    torch.manual_seed(0)
    plain = _model(method)
    ckpt = copy.deepcopy(plain)
    opts = {k: v for k, v in strategy.items() if k != "name"}
    build_strategy(strategy["name"], **opts).apply(plain)
    build_strategy(strategy["name"], checkpointing=True, **opts).apply(ckpt)
    assert plain.checkpointed_stages == ()
    expected_stages = ("layer2", "layer3", "layer4") if strategy["name"] == "svf" else ("layer3", "layer4")
    assert ckpt.checkpointed_stages == expected_stages
    plain.train()
    ckpt.train()
    batch = _episode()
    torch.manual_seed(1)  # the head's dropout draws the same masks in both runs
    saved_plain, out_plain = _saved_bytes(lambda: plain(*batch))
    torch.manual_seed(1)
    saved_ckpt, out_ckpt = _saved_bytes(lambda: ckpt(*batch))
    torch.testing.assert_close(out_ckpt.loss, out_plain.loss, rtol=0, atol=0)
    out_plain.loss.backward()
    out_ckpt.loss.backward()
    grads_plain = {n: p.grad for n, p in plain.named_parameters() if p.requires_grad}
    grads_ckpt = {n: p.grad for n, p in ckpt.named_parameters() if p.requires_grad}
    assert grads_plain.keys() == grads_ckpt.keys()
    backbone_grads = [n for n in grads_plain if n.startswith("backbone.")]
    assert backbone_grads
    for n, g in grads_plain.items():
        torch.testing.assert_close(grads_ckpt[n], g, rtol=1e-5, atol=1e-7, msg=n)
    assert saved_ckpt < 0.75 * saved_plain, (saved_ckpt, saved_plain)


def test_checkpointing_leaves_bn_statistics_alone() -> None:
    model = _model()
    build_strategy("svf", checkpointing=True).apply(model)
    model.train()
    before = {k: v.clone() for k, v in model.backbone.state_dict().items() if "running" in k}
    model(*_episode()).loss.backward()
    after = model.backbone.state_dict()
    for key, value in before.items():
        assert torch.equal(after[key], value), key


def test_checkpointing_option_is_recorded_validated_and_refused_for_bn() -> None:
    assert build_strategy("svf", checkpointing=True).options()["checkpointing"] is True
    assert build_strategy("full", checkpointing=True).options()["checkpointing"] is True
    model = _model()
    build_strategy("full", checkpointing=True).apply(model)
    assert model.checkpointed_stages == ("layer0", "layer1", "layer2", "layer3", "layer4")
    model = _model()
    build_strategy("svf", stages=["layer4"], checkpointing=True).apply(model)
    assert model.checkpointed_stages == ("layer4",)
    with pytest.raises(ValueError, match=r"finetune=bn does not support checkpointing=true"):
        build_strategy("bn", checkpointing=True)
    with pytest.raises(ValueError, match=r"finetune=freeze does not take option\(s\) \['checkpointing'\]"):
        build_strategy("freeze", checkpointing=True)
    with pytest.raises(ValueError, match="checkpointing"):
        build_strategy("svf", checkpointing="maybe")
    cfg = compose_config("train", ["finetune=svf", "finetune.checkpointing=true"])
    assert cfg.finetune.checkpointing is True


def test_merged_weight_stays_float32_under_bf16_autocast() -> None:
    torch.manual_seed(0)
    conv = nn.Conv2d(8, 16, 3, padding=1)
    layer = nn.Sequential(conv)
    apply_svf(layer)
    (_, svf), *_ = svf_layers(layer)
    reference = svf.merged_weight().detach()
    x = torch.randn(2, 8, 9, 9)
    with torch.no_grad():
        svf.eval()
        with torch.autocast("cpu", dtype=torch.bfloat16):
            merged = svf.merged_weight()
            y = svf(x)
    assert merged.dtype == torch.float32
    torch.testing.assert_close(merged, reference, rtol=0, atol=0)
    assert y.dtype == torch.bfloat16  # the conv itself is autocast, as for a plain Conv2d
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        plain = conv(x)
    torch.testing.assert_close(y.float(), plain.float(), rtol=0.05, atol=0.05)


def test_bf16_autocast_training_step_keeps_s_and_its_gradient_float32() -> None:
    model = _model()
    build_strategy("svf").apply(model)
    model.train()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = model(*_episode())
    out.loss.backward()
    layers = list(svf_layers(model.backbone))
    assert layers
    for name, layer in layers:
        assert layer.s.dtype == torch.float32 and layer.u.dtype == torch.float32, name
        assert layer.s.grad is not None and layer.s.grad.dtype == torch.float32, name
        assert torch.isfinite(layer.s.grad).all(), name


def test_fused_svf_path_runs_under_bf16_autocast_and_matches_the_composed_graph(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """bf16-mixed SVF training uses the fused op (half the activations); dL/ds stays float32."""
    from svfseg.svf.fused import FactorisedConv2d

    torch.manual_seed(0)
    conv = nn.Conv2d(8, 16, 3, padding=1)
    x = torch.randn(2, 8, 9, 9, requires_grad=True)
    grads = {}
    for execution in ("auto", "three_op"):
        layer = nn.Sequential(copy.deepcopy(conv))
        apply_svf(layer, execution=execution)
        (_, svf), *_ = svf_layers(layer)
        calls = [0]
        original = FactorisedConv2d.apply

        def counted(*args, _original=original, _calls=calls):
            _calls[0] += 1
            return _original(*args)

        monkeypatch.setattr(FactorisedConv2d, "apply", counted)
        x.grad = None
        with torch.autocast("cpu", dtype=torch.bfloat16):
            y = layer(x)
        assert y.dtype == torch.bfloat16
        y.float().square().sum().backward()
        monkeypatch.setattr(FactorisedConv2d, "apply", original)
        assert calls[0] == (1 if execution == "auto" else 0), execution
        assert svf.s.grad.dtype == torch.float32 and x.grad.dtype == torch.float32
        grads[execution] = (svf.s.grad.clone(), x.grad.clone())
    # bf16 rounding differs between the two graphs; measured over 5 seeds and AVX-512 / AVX2 kernels:
    # max |diff| / max |ref| <= 0.002 for dL/ds and <= 0.011 for dL/dx. Bounds with room to spare:
    for (fused, composed), bound in zip(zip(grads["auto"], grads["three_op"]), (0.01, 0.03)):
        assert (fused - composed).abs().max() <= bound * composed.abs().max()


@pytest.mark.slow
def test_bf16_mixed_training_run_with_checkpointing(synthetic_pascal, tmp_path) -> None:
    from svfseg.tasks.train import train
    from tests.helpers.hydra import tiny_train_config

    root, min_pixels = synthetic_pascal
    cfg = tiny_train_config(
        root,
        tmp_path,
        min_pixels=min_pixels,
        extra=[
            "finetune=svf",
            "finetune.checkpointing=true",
            "trainer.precision=bf16-mixed",
            "trainer.max_epochs=1",
        ],
    )
    metrics = train(cfg)
    assert 0.0 <= metrics["miou"] <= 1.0
    ckpt = torch.load(tmp_path / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    assert ckpt["hyper_parameters"]["run"]["finetune"]["checkpointing"] is True
    s = {k: v for k, v in ckpt["state_dict"].items() if k.endswith(".s")}
    assert s and all(v.dtype == torch.float32 and torch.isfinite(v).all() for v in s.values())
    s0 = {k: ckpt["state_dict"][k + "0"] for k in s}
    assert any(not torch.equal(v, s0[k]) for k, v in s.items())  # the singular values trained
