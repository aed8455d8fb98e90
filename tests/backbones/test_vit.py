"""Vision Transformer backbones (timm): the stage split, strict weights, SVF on every Linear, runs."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import save_file
from torch import nn

from svfseg.backbones import build_backbone
from svfseg.backbones.vit import backbone_from_vit, create_timm_vit, split_blocks
from svfseg.config_checks import ConfigError, check_train_config
from svfseg.run_spec import RunMismatchError
from svfseg.svf import SVFSelectionError, apply_svf, mark_only_svf_trainable, merge_svf, svf_layers
from svfseg.tasks.evaluate import evaluate
from svfseg.tasks.train import train
from tests.helpers.hydra import compose_config, tiny_train_config

TINY = {"embed_dim": 32, "depth": 4, "num_heads": 2}


def _relative(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).abs().max() / b.abs().max())


def test_stages_split_the_blocks_and_return_stride_p_maps() -> None:
    bb = build_backbone("dinov2_vits14", **TINY)
    feats = bb(torch.randn(2, 3, 100, 71))  # resized to 98 x 70: a 7 x 5 token grid
    assert {k: tuple(v.shape) for k, v in feats.items()} == {f"layer{k}": (2, 32, 7, 5) for k in range(5)}
    assert bb.stage_blocks == {"layer1": (0, 1), "layer2": (1, 2), "layer3": (2, 3), "layer4": (3, 4)}
    assert bb.channels["layer3"] == 32 and bb.strides["layer4"] == 14 and bb.family == "vit"
    assert split_blocks(12, None) == [(0, 3), (3, 6), (6, 9), (9, 12)]
    assert split_blocks(12, [2, 2, 4, 4]) == [(0, 2), (2, 4), (4, 8), (8, 12)]
    with pytest.raises(
        ValueError, match=r"stage_blocks=\[2, 2, 2\] is invalid: give 4 positive block counts"
    ):
        split_blocks(12, [2, 2, 2])


def test_stages_compute_the_timm_model_on_patch_tokens() -> None:
    """layer4 equals timm's own blocks + norm on the patch tokens with the interpolated position embedding."""
    torch.manual_seed(0)
    vit = create_timm_vit("dinov2_vits14", **TINY).eval()
    bb = backbone_from_vit("dinov2_vits14", vit).eval()
    x = torch.randn(1, 3, 56, 42)
    with torch.no_grad():
        tokens = vit.patch_embed(x).reshape(1, 12, 32)
        pos = vit.pos_embed[:, 1:].reshape(1, 37, 37, 32).permute(0, 3, 1, 2)
        pos = torch.nn.functional.interpolate(pos, size=(4, 3), mode="bicubic", antialias=True)
        tokens = vit.norm(vit.blocks(tokens + pos.flatten(2).transpose(1, 2)))
        want = tokens.transpose(1, 2).reshape(1, 32, 4, 3)
        got = bb(x)["layer4"]
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("suffix", [".safetensors", ".pth"])
def test_weights_load_strictly_from_timm_files(tmp_path: Path, suffix: str) -> None:
    torch.manual_seed(1)
    source = create_timm_vit("dinov2_vits14", **TINY)
    path = tmp_path / f"vit{suffix}"
    state = {k: v.contiguous() for k, v in source.state_dict().items()}
    save_file(state, str(path)) if suffix == ".safetensors" else torch.save({"model": state}, path)
    bb = build_backbone("dinov2_vits14", pretrained=str(path), **TINY)
    assert torch.equal(bb.layer1.blocks[0].attn.qkv.weight, source.blocks[0].attn.qkv.weight)
    assert torch.equal(bb.layer0.pos_embed, source.pos_embed[:, 1:])
    del state["blocks.0.attn.qkv.weight"]
    state["extra.weight"] = torch.zeros(1)
    bad = tmp_path / "bad.safetensors"
    save_file(state, str(bad))
    with pytest.raises(ValueError, match=r"missing blocks\.0\.attn\.qkv\.weight; unexpected extra\.weight"):
        build_backbone("dinov2_vits14", pretrained=str(bad), **TINY)


def test_svf_on_a_vit_is_exact_trains_only_singular_values_and_merges_back() -> None:
    torch.manual_seed(2)
    bb = build_backbone("dinov2_vits14", **TINY).double().eval()
    x = torch.randn(2, 3, 56, 56, dtype=torch.float64)
    with torch.no_grad():
        before = bb(x)["layer4"]
    linears = {n: m for n, m in bb.named_modules() if isinstance(m, (nn.Linear, nn.Conv2d))}
    converted = apply_svf(bb, svd_dtype="float64")
    assert sorted(converted) == sorted(linears)  # qkv, proj, fc1, fc2 of every block + the patch conv
    kinds = {n.rsplit(".", 1)[-1] for n in converted}
    assert kinds == {"qkv", "proj", "fc1", "fc2"}
    with torch.no_grad():
        after = bb(x)["layer4"]
    assert _relative(after, before) < 1e-5
    mark_only_svf_trainable(bb)  # freezes norms, LayerScale, position embedding, biases
    expected = sum(
        min(m.out_features, m.in_features)
        if isinstance(m, nn.Linear)
        else min(m.out_channels, m.weight[0].numel())
        for m in linears.values()
    )
    assert sum(p.numel() for p in bb.parameters() if p.requires_grad) == expected
    merged = merge_svf(bb)
    assert sorted(merged) == sorted(converted) and next(svf_layers(bb), None) is None
    with torch.no_grad():
        assert _relative(bb(x)["layer4"], before) < 1e-5


def test_torchvision_multihead_attention_is_refused_naming_the_module() -> None:
    model = nn.Sequential(nn.Linear(8, 8), nn.MultiheadAttention(8, 2))
    with pytest.raises(
        SVFSelectionError, match=r"apply_svf: \[1\] \(1 in all\) is an nn.MultiheadAttention, whose fused"
    ):
        apply_svf(model)
    assert apply_svf(model, exclude=["1.*"]) == ["0"]


# ----------------------------------------------------------------------------------------- runs
def _vit_cfg(synthetic_pascal: Any, out: Path, extra: list[str] | None = None):
    root, min_pixels = synthetic_pascal
    return tiny_train_config(
        root,
        out,
        min_pixels=min_pixels,
        extra=[
            "backbone=dinov2_vits14",
            "backbone.pretrained=null",
            "+backbone.depth=4",  # width_mult 0.125 (debug=tiny): 1 head of 64 channels
            "trainer.max_epochs=1",
            *(extra or []),
        ],
    )


@pytest.fixture(scope="module")
def vit_run(synthetic_pascal: Any, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    out = tmp_path_factory.mktemp("vit_run")
    return {"out": out, "result": train(_vit_cfg(synthetic_pascal, out))}


@pytest.mark.parametrize(
    ("method", "finetune"), [("pfenet", "svf"), ("baseline", "full"), ("baseline", "freeze")]
)
def test_vit_backbones_train_validate_and_test(
    synthetic_pascal: Any, tmp_path: Path, method: str, finetune: str
) -> None:
    """Baseline + SVF runs in the vit_run fixture; these cover PFENet and the other strategies."""
    result = train(_vit_cfg(synthetic_pascal, tmp_path, [f"method={method}", f"finetune={finetune}"]))
    assert result["n_episodes"] == 12 and 0.0 <= result["miou"] <= 1.0


def test_vit_svf_run_writes_metrics_and_its_checkpoint_has_svf_linears(vit_run: dict[str, Any]) -> None:
    result = vit_run["result"]
    assert result["n_episodes"] == 12 and result["run"]["backbone"] == "dinov2_vits14"
    state = torch.load(result["checkpoint"], map_location="cpu", weights_only=True)["state_dict"]
    assert any(k.endswith("attn.qkv.s") for k in state), sorted(state)[:5]


def test_a_vit_checkpoint_refuses_a_resnet_run_and_vice_versa(
    synthetic_pascal: Any, vit_run: dict[str, Any], tmp_path: Path
) -> None:
    ckpt = vit_run["result"]["checkpoint"]
    root, min_pixels = synthetic_pascal
    resnet = tiny_train_config(root, tmp_path / "r", min_pixels=min_pixels, extra=[f"ckpt_path={ckpt}"])
    with pytest.raises((ConfigError, RunMismatchError), match=r"backbone") as info:
        train(resnet)  # resume
    assert "dinov2_vits14" in str(info.value) and "resnet50" in str(info.value)
    with pytest.raises((ConfigError, RunMismatchError, ValueError), match=r"dinov2_vits14"):
        evaluate(
            compose_config(
                "eval", [f"ckpt_path={ckpt}", f"paths.output_dir={tmp_path / 'e'}", "backbone_name=resnet50"]
            )
        )
    resnet_ckpt = train(
        tiny_train_config(root, tmp_path / "r2", min_pixels=min_pixels, extra=["trainer.max_epochs=1"])
    )["checkpoint"]
    vit = _vit_cfg(synthetic_pascal, tmp_path / "v", [f"ckpt_path={resnet_ckpt}"])
    with pytest.raises((ConfigError, RunMismatchError), match=r"backbone"):
        train(vit)


def test_bam_on_a_vit_is_refused_at_start(tmp_path: Path) -> None:
    cfg = compose_config(
        "train",
        [
            "method=bam",
            "backbone=dinov2_vits14",
            "dataset=synthetic",
            "debug=tiny",
            f"paths.output_dir={tmp_path}",
        ],
    )
    with pytest.raises(ConfigError, match=r"backbone=dinov2_vits14: method=bam needs a dilated CNN backbone"):
        check_train_config(cfg)
