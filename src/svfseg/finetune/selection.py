"""Structural parameter selection inside backbone stages (by module type, not by name patterns)."""

from __future__ import annotations

from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

NamedParams = list[tuple[str, nn.Parameter]]

KERNELS = {"3x3": (3, 3), "1x1": (1, 1)}


def _own_params(prefix: str, module: nn.Module) -> NamedParams:
    return [(f"{prefix}.{n}" if prefix else n, p) for n, p in module.named_parameters(recurse=False)]


def bn_affine(backbone: nn.Module, stages: tuple[str, ...]) -> NamedParams:
    """Affine weight and bias of every BatchNorm (incl. SyncBatchNorm) in ``stages``."""
    out: NamedParams = []
    for stage in stages:
        for name, m in getattr(backbone, stage).named_modules(prefix=stage):
            if isinstance(m, _BatchNorm):
                out += _own_params(name, m)
    return out


def conv_params(backbone: nn.Module, stages: tuple[str, ...], conv_type: str) -> NamedParams:
    """Weights (and biases) of the Conv2d layers of ``stages`` whose kernel matches ``conv_type``.

    ``all`` takes every conv (including a 7x7 stem and the 1x1 downsample projections); ``3x3`` and
    ``1x1`` take exactly that kernel size. A stage with no conv of the requested kind is an error,
    so ``conv_type='1x1'`` on VGG (all 3x3) fails loudly instead of training nothing.
    """
    out: NamedParams = []
    for stage in stages:
        convs = [
            (n, m)
            for n, m in getattr(backbone, stage).named_modules(prefix=stage)
            if isinstance(m, nn.Conv2d)
        ]
        chosen = [
            (n, m) for n, m in convs if conv_type == "all" or tuple(m.kernel_size) == KERNELS[conv_type]
        ]
        if not chosen:
            kernels = sorted({"x".join(map(str, m.kernel_size)) for _, m in convs}) or ["no convs at all"]
            raise ValueError(
                f"conv_type={conv_type!r} selects no conv in backbone stage {stage} "
                f"({type(backbone).__name__} {getattr(backbone, 'name', '')}): its kernels are {kernels}. "
                "Use conv_type='all' or a kernel that exists (VGG has 3x3 convs only)."
            )
        for name, m in chosen:
            out += _own_params(name, m)
    return out


def stage_params(backbone: nn.Module, stages: tuple[str, ...]) -> NamedParams:
    """Every parameter of ``stages``: convs, linears, norms, position embeddings (any architecture)."""
    return [(f"{stage}.{n}", p) for stage in stages for n, p in getattr(backbone, stage).named_parameters()]


def weight_layer_params(backbone: nn.Module, stages: tuple[str, ...]) -> NamedParams:
    """Weights and biases of every Conv2d and Linear of ``stages`` (no norm layers, no embeddings)."""
    out: NamedParams = []
    for stage in stages:
        for name, m in getattr(backbone, stage).named_modules(prefix=stage):
            if isinstance(m, (nn.Conv2d, nn.Linear)):
                out += _own_params(name, m)
    return out
