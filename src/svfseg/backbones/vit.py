"""Vision Transformers (DINOv2, ViT) from timm as five-stage backbones for the few-shot heads.

``layer0`` embeds the patches (with the position embedding interpolated to the token grid) and
``layer1``..``layer4`` are four consecutive groups of transformer blocks (an equal split by default,
``stage_blocks`` otherwise); ``layer4`` ends with the model's final norm. Every stage takes and returns a
feature map (B, C, H/p, W/p), because the heads call stages one by one (the support's ``layer4`` runs on
its masked ``layer3`` map), so ``layer2``/``layer3``/``layer4`` play the part of the ResNet stages of
the same names at stride p (14 or 16) instead of 8.

Two choices, both documented for users: the input is resized (bilinear) to the nearest lower multiple of
the patch size (473 px -> 462 px, a 33 x 33 grid with patch 14); and the blocks run on the patch tokens
only. The class and register tokens are dropped, since a feature map cannot carry them between stages,
so the pretrained blocks see no class token.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import timm
import torch.nn.functional as F
from timm.layers import resample_abs_pos_embed
from torch import Tensor, nn

from svfseg.backbones.base import STAGE_NAMES, Backbone
from svfseg.backbones.weights import read_state_dict
from svfseg.messages import preview

# svfseg backbone name -> (timm architecture, pretraining image size, embed_dim, num_heads)
VIT_MODELS: dict[str, tuple[str, int, int, int]] = {
    "dinov2_vits14": ("vit_small_patch14_dinov2", 518, 384, 6),
    "dinov2_vitb14": ("vit_base_patch14_dinov2", 518, 768, 12),
    "vit_b16": ("vit_base_patch16_224", 224, 768, 12),
}


class PatchStem(nn.Module):
    """Image -> patch-token map with the (interpolated) absolute position embedding added."""

    def __init__(self, vit: nn.Module) -> None:
        super().__init__()
        self.patch_embed = vit.patch_embed
        self.patch = int(vit.patch_embed.patch_size[0])
        grid = tuple(int(g) for g in vit.patch_embed.grid_size)
        pos = vit.pos_embed.detach()
        if not getattr(vit, "no_embed_class", False):
            pos = pos[:, vit.num_prefix_tokens :]  # the class/register tokens' positions are not used
        self.pos_embed = nn.Parameter(pos.clone())
        self.grid = grid
        self.norm_pre = vit.norm_pre

    def forward(self, x: Tensor) -> Tensor:
        h, w = x.shape[-2:]
        size = (max(self.patch, h // self.patch * self.patch), max(self.patch, w // self.patch * self.patch))
        if size != (h, w):
            x = F.interpolate(x, size=size, mode="bilinear", align_corners=False)
        tokens = self.patch_embed(x)  # (B, gh, gw, C)
        b, gh, gw, c = tokens.shape
        pos = self.pos_embed
        if (gh, gw) != self.grid:
            pos = resample_abs_pos_embed(pos, [gh, gw], list(self.grid), num_prefix_tokens=0)
        tokens = self.norm_pre(tokens.reshape(b, gh * gw, c) + pos)
        return tokens.transpose(1, 2).reshape(b, c, gh, gw)


class TokenStage(nn.Module):
    """A group of transformer blocks applied to a feature map's tokens (optionally the final norm)."""

    def __init__(self, blocks: Sequence[nn.Module], norm: nn.Module | None = None) -> None:
        super().__init__()
        self.blocks = nn.Sequential(*blocks)
        self.norm = norm if norm is not None else nn.Identity()

    def forward(self, x: Tensor) -> Tensor:
        b, c, h, w = x.shape
        tokens = self.norm(self.blocks(x.flatten(2).transpose(1, 2)))
        return tokens.transpose(1, 2).reshape(b, c, h, w)


def split_blocks(depth: int, stage_blocks: Sequence[int] | None) -> list[tuple[int, int]]:
    """Block ranges of layer1..layer4: ``stage_blocks`` = the 4 group sizes (default: an equal split)."""
    if stage_blocks is None:
        if depth < 4:
            raise ValueError(f"a ViT backbone needs at least 4 blocks for layer1-4, got depth={depth}")
        base, extra = divmod(depth, 4)
        sizes = [base + (1 if k < extra else 0) for k in range(4)]
    else:
        sizes = [int(n) for n in stage_blocks]
        if len(sizes) != 4 or min(sizes) < 1 or sum(sizes) != depth:
            raise ValueError(
                f"backbone.stage_blocks={list(stage_blocks)} is invalid: give 4 positive block counts for "
                f"layer1-4 that sum to the model's depth {depth}, e.g. {[depth // 4] * 4}"
            )
    ranges, start = [], 0
    for n in sizes:
        ranges.append((start, start + n))
        start += n
    return ranges


def create_timm_vit(
    name: str, *, timm_name: str | None = None, width_mult: float = 1.0, **overrides: Any
) -> nn.Module:
    """The timm model of svfseg backbone ``name`` (random init).

    ``overrides``: ``embed_dim``, ``depth``, ``num_heads``. ``width_mult`` (CPU smoke runs) scales the
    number of heads and keeps the head width, so ``embed_dim = heads * head_dim`` stays divisible.
    """
    if name not in VIT_MODELS:
        raise ValueError(f"unknown ViT backbone {name!r}: choose one of {sorted(VIT_MODELS)}")
    arch, img_size, dim, heads = VIT_MODELS[name]
    arch = (timm_name or arch).split(".")[0]  # a pretrained tag (".lvd142m") names weights, not a shape
    kwargs = {k: v for k, v in overrides.items() if v is not None}
    if width_mult != 1.0:
        if "embed_dim" in kwargs or "num_heads" in kwargs:
            raise ValueError("set either backbone.width_mult or backbone.embed_dim/num_heads, not both")
        scaled = max(1, round(heads * width_mult))
        kwargs.update(num_heads=scaled, embed_dim=scaled * (dim // heads))
    return timm.create_model(
        arch, pretrained=False, num_classes=0, dynamic_img_size=True, img_size=img_size, **kwargs
    )


def backbone_from_vit(name: str, vit: nn.Module, stage_blocks: Sequence[int] | None = None) -> Backbone:
    """Split a timm VisionTransformer into svfseg's five stages (the modules are shared, not copied)."""
    blocks = list(vit.blocks)
    ranges = split_blocks(len(blocks), stage_blocks)
    stages: dict[str, nn.Module] = {"layer0": PatchStem(vit)}
    for k, (start, stop) in enumerate(ranges, start=1):
        stages[f"layer{k}"] = TokenStage(blocks[start:stop], norm=vit.norm if k == 4 else None)
    dim = int(vit.embed_dim)
    patch = int(vit.patch_embed.patch_size[0])
    backbone = Backbone(
        name,
        "vit",
        stages,
        channels={s: dim for s in STAGE_NAMES},
        strides={s: patch for s in STAGE_NAMES},
        width_mult=float(getattr(vit, "svfseg_width_mult", 1.0)),
    )
    backbone.stage_blocks = {f"layer{k}": r for k, r in enumerate(ranges, start=1)}
    return backbone


def load_vit_weights(vit: nn.Module, path: str | Path) -> None:
    """Load a timm-format file into ``vit`` strictly: every key used once, every shape equal."""
    state = read_state_dict(path)
    own = vit.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    shapes = [
        f"{k}: file {tuple(state[k].shape)} vs model {tuple(own[k].shape)}"
        for k in own
        if k in state and state[k].shape != own[k].shape
    ]
    if missing or unexpected or shapes:
        raise ValueError(
            f"{path} does not fit {type(vit).__name__} ({len(own)} tensors): missing {preview(missing) or 'none'}; "
            f"unexpected {preview(unexpected) or 'none'}; shape mismatches {preview(shapes) or 'none'}. Use the "
            "timm file of the architecture in the backbone config (timm_name), with its own image size"
        )
    vit.load_state_dict(state, strict=True)


def build_vit(
    name: str,
    *,
    pretrained: str | Path | None = None,
    timm_name: str | None = None,
    stage_blocks: Sequence[int] | None = None,
    embed_dim: int | None = None,
    depth: int | None = None,
    num_heads: int | None = None,
    width_mult: float = 1.0,
) -> Backbone:
    """A ViT backbone; ``pretrained`` (timm ``.safetensors`` / ``.pth``) is loaded strictly before the split."""
    vit = create_timm_vit(
        name,
        timm_name=timm_name,
        width_mult=width_mult,
        embed_dim=embed_dim,
        depth=depth,
        num_heads=num_heads,
    )
    if pretrained is not None:
        load_vit_weights(vit, pretrained)
    vit.svfseg_width_mult = width_mult
    return backbone_from_vit(name, vit, stage_blocks)
