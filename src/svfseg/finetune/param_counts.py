"""Trainable-parameter counts that the strategies and the budget tool share, computed from shapes only.

Counting SVF's singular values converts a structure-only copy of the backbone on the ``meta`` device
(no SVD, no memory), so ``rank=match_svf`` costs nothing even for a full-width ResNet-101.
"""

from __future__ import annotations

import copy
import itertools
import math
import warnings
from collections.abc import Sequence

from torch import nn

from svfseg.svf import apply_svf, svf_layers


def meta_copy(module: nn.Module) -> nn.Module:
    """A copy of ``module`` whose parameters and buffers live on the ``meta`` device (shapes only)."""
    memo: dict[int, object] = {}
    for t in itertools.chain(module.parameters(), module.buffers()):
        meta = t.detach().to("meta")
        memo[id(t)] = (
            nn.Parameter(meta, requires_grad=t.requires_grad) if isinstance(t, nn.Parameter) else meta
        )
    return copy.deepcopy(module, memo)


def svf_singular_values(backbone: nn.Module, stages: Sequence[str]) -> int:
    """How many singular values ``finetune=svf stages=<stages>`` trains on this backbone (train=[s])."""
    structure = meta_copy(backbone)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # skipped layers are SVF's own rule, warned about when SVF runs
        apply_svf(
            structure,
            include=[f"{stage}.*" for stage in stages],
            from_shapes=True,
            depthwise=bool(getattr(backbone, "svf_depthwise", False)),
        )
    return sum(layer.s.numel() for _, layer in svf_layers(structure))


def lora_terms(layer: nn.Module, *, dora: bool) -> tuple[int, int]:
    """(elements per unit of rank, elements independent of the rank) of LoRA on one Conv2d / Linear.

    Conv C_out x C_in x k_h x k_w: ``lora_A`` is r x C_in x k_h x k_w and ``lora_B`` C_out x r, so
    r (C_in k_h k_w + C_out); Linear: r (in + out). DoRA adds one magnitude per output channel.
    """
    if isinstance(layer, nn.Conv2d):
        per_rank = layer.in_channels * math.prod(layer.kernel_size) + layer.out_channels
        outputs = layer.out_channels
    elif isinstance(layer, nn.Linear):
        per_rank = layer.in_features + layer.out_features
        outputs = layer.out_features
    else:
        raise TypeError(f"LoRA counts cover nn.Conv2d and nn.Linear, not {type(layer).__name__}")
    return per_rank, outputs if dora else 0


def lora_count(layers: Sequence[nn.Module], rank: int, *, dora: bool) -> int:
    """Trainable elements of LoRA (DoRA) with ``rank`` on ``layers``."""
    terms = [lora_terms(m, dora=dora) for m in layers]
    return rank * sum(a for a, _ in terms) + sum(b for _, b in terms)


def closest_rank(layers: Sequence[nn.Module], target: int, *, dora: bool) -> int:
    """The rank >= 1 whose LoRA count on ``layers`` is closest to ``target`` (ties: the smaller rank)."""
    per_rank = sum(lora_terms(m, dora=dora)[0] for m in layers)
    fixed = sum(lora_terms(m, dora=dora)[1] for m in layers)
    if per_rank <= 0:
        raise ValueError("no LoRA target layer: nothing to match")
    low = max(1, (target - fixed) // per_rank)
    candidates = (low, low + 1)
    return min(candidates, key=lambda r: (abs(lora_count(layers, r, dora=dora) - target), r))
