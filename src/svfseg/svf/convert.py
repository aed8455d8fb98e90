"""Turning a model's Conv2d / Linear layers into SVF layers and back, selected by glob patterns.

Rules that users rely on:

* Candidates are modules whose type is exactly ``nn.Conv2d`` or ``nn.Linear``. Subclasses are skipped
  with a warning (their forward may not be the plain op, e.g. attention's ``out_proj`` whose weight is
  read directly by ``nn.MultiheadAttention``). Depthwise convs (groups == in_channels > 1) are skipped
  with a warning by default: each group is a single-input-channel filter, so SVF can only scale it (one
  singular value per channel). ``depthwise=True`` converts them anyway (the timm CNN backbones ask for
  it: EfficientNet-Lite does most of its spatial filtering in depthwise convs); the conversion is exact
  like any grouped conv's.
* Every include / exclude pattern must match at least one layer name, so a typo fails loudly.
* Re-conversion is an error: a selection that contains an SVF layer raises :class:`SVFSelectionError`
  (exclude it, or ``merge_svf`` first). This keeps one SVD per layer and avoids SVF-of-SVF stacks.
* Conversion touches only the converted layers' own tensors: ``u``/``s``/``v`` train as ``train``
  says, the bias is frozen. Whether the rest of the model trains is the caller's decision
  (:func:`mark_only_svf_trainable` freezes everything else, as the SVF repo does).
* Full rank: R = min(C_out/G, C_in/G * k * k) per group. The SVF repo rounds R down to a multiple of 4,
  which drops 3 singular values of the 3-channel stem conv (27 -> 24) and makes the converted stem
  inexact; we keep all of them, so a fresh conversion reproduces the original outputs.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from fnmatch import fnmatchcase
from typing import Any

from torch import nn

from svfseg.messages import preview
from svfseg.svf.errors import NoSVFLayerError, SVFSelectionError
from svfseg.svf.layers import SVFConv2d, SVFLayer, SVFLinear
from svfseg.svf.options import EXECUTIONS, SVFOptions, check_choice


@dataclass
class _Site:
    """One module and every (parent, attribute) slot it occupies (shared modules occupy several)."""

    name: str
    module: nn.Module
    slots: list[tuple[nn.Module, str]] = field(default_factory=list)


def _slots(parent: nn.Module, prefix: str) -> Iterator[tuple[nn.Module, str, str, nn.Module]]:
    """(parent, attribute, qualified name, child) for every child slot, preorder, shared slots included."""
    for attr, child in parent._modules.items():
        if child is None:
            continue
        name = f"{prefix}.{attr}" if prefix else attr
        yield parent, attr, name, child
        yield from _slots(child, name)


def _sites(module: nn.Module, types: tuple[type[nn.Module], ...]) -> list[_Site]:
    """Children of ``types`` (isinstance) under ``module`` in module order: first name and all slots."""
    sites: dict[int, _Site] = {}
    seen_slots: set[tuple[int, str]] = set()
    for parent, attr, name, child in _slots(module, ""):
        if not isinstance(child, types) or (id(parent), attr) in seen_slots:
            continue
        seen_slots.add((id(parent), attr))
        sites.setdefault(id(child), _Site(name, child)).slots.append((parent, attr))
    return list(sites.values())


def _patterns(value: str | Sequence[str] | None, key: str) -> tuple[str, ...]:
    if value is None:
        return ()
    items = (value,) if isinstance(value, str) else tuple(value)
    bad = [p for p in items if not isinstance(p, str)]
    if bad:
        raise SVFSelectionError(f"{key}={value!r}: patterns must be strings, got {bad}")
    return items


def _matches(name: str, patterns: tuple[str, ...]) -> bool:
    return any(fnmatchcase(name, p) for p in patterns)


def _is_depthwise(conv: nn.Conv2d) -> bool:
    return conv.groups > 1 and conv.in_channels // conv.groups == 1


def _check_root(module: nn.Module, action: str) -> None:
    if isinstance(module, (nn.Conv2d, nn.Linear, SVFLayer)):
        raise SVFSelectionError(
            f"{action} replaces layers inside their parent in place, but got a bare {type(module).__name__}; "
            "pass the module that contains it (e.g. wrap it in nn.Sequential)"
        )


def apply_svf(
    module: nn.Module,
    options: SVFOptions | None = None,
    *,
    include: str | Sequence[str] | None = None,
    exclude: str | Sequence[str] | None = None,
    from_shapes: bool = False,
    depthwise: bool = False,
    **fields: Any,
) -> list[str]:
    """Replace, in place, the selected Conv2d / Linear layers of ``module`` by SVF layers.

    ``options`` and/or keyword ``fields`` (``train``, ``parametrization``, ``execution``, ``svd_dtype``):
    :class:`~svfseg.svf.options.SVFOptions`. ``include`` / ``exclude``: fnmatch patterns on qualified
    names (a str is one pattern); exclude wins. Returns the converted names in module order. Outputs
    equal the original right after conversion. ``from_shapes=True`` runs no SVD: the layers get zero
    factors of the right shapes, for a checkpoint's state dict to fill (loading a trained model).
    ``depthwise=True`` also converts depthwise convs (skipped with a warning otherwise).
    """
    _check_root(module, "apply_svf")
    opts = SVFOptions.of(options, **fields)
    includes, excludes = _patterns(include, "include"), _patterns(exclude, "exclude")

    sites = _sites(module, (nn.Conv2d, nn.Linear, SVFLayer))
    names = [s.name for s in sites]
    for key, patterns in (("include", includes), ("exclude", excludes)):
        unmatched = [p for p in patterns if not any(fnmatchcase(n, p) for n in names)]
        if unmatched:
            raise SVFSelectionError(
                f"{key} pattern(s) {unmatched} match no Conv2d/Linear layer of {type(module).__name__}; "
                f"available names: [{preview(names)}] ({len(names)} in all)"
            )
    selected = [
        s for s in sites if (not includes or _matches(s.name, includes)) and not _matches(s.name, excludes)
    ]
    converted_already = [s.name for s in selected if isinstance(s.module, SVFLayer)]
    if converted_already:
        raise SVFSelectionError(
            f"apply_svf(include={includes or None}, exclude={excludes or None}) selects layers that are "
            f"already SVF layers: [{preview(converted_already)}] ({len(converted_already)} in all); exclude them or call merge_svf first"
        )

    packed = [
        s.name for s in selected if any(isinstance(parent, nn.MultiheadAttention) for parent, _ in s.slots)
    ]
    if packed:
        mha = sorted({n.rsplit(".", 1)[0] for n in packed})
        raise SVFSelectionError(
            f"apply_svf: [{preview(mha)}] ({len(mha)} in all) is an nn.MultiheadAttention, whose fused kernel reads its packed "
            "q/k/v projection (in_proj_weight) as a raw parameter and its out_proj directly, so SVF cannot "
            f"replace them; exclude them (exclude=['{mha[0]}.*']) or use an attention whose projections "
            "are nn.Linear modules (timm's ViTs: the packed qkv Linear is decomposed as one matrix)"
        )
    todo: list[_Site] = []
    for site in selected:
        if type(site.module) not in (nn.Conv2d, nn.Linear):
            warnings.warn(
                f"apply_svf: skipping '{site.name}' ({type(site.module).__name__}): only exact nn.Conv2d / "
                "nn.Linear are converted, a subclass may not run the plain op",
                stacklevel=2,
            )
        elif isinstance(site.module, nn.Conv2d) and _is_depthwise(site.module) and not depthwise:
            warnings.warn(
                f"apply_svf: skipping depthwise conv '{site.name}' (groups={site.module.groups}, "
                f"in_channels={site.module.in_channels}): one input channel per group",
                stacklevel=2,
            )
        else:
            todo.append(site)
    if not todo:
        raise SVFSelectionError(
            f"apply_svf(include={includes or None}, exclude={excludes or None}) selects no convertible "
            f"Conv2d/Linear layer; available names: [{preview(names)}] ({len(names)} in all)"
        )

    for site in todo:
        if isinstance(site.module, nn.Conv2d):
            layer: SVFLayer = SVFConv2d.from_conv(site.module, opts, from_shapes=from_shapes)
        else:
            layer = SVFLinear.from_linear(site.module, opts, from_shapes=from_shapes)
        layer.train(site.module.training)
        for parent, attr in site.slots:
            setattr(parent, attr, layer)
    return [s.name for s in todo]


def merge_svf(module: nn.Module) -> list[str]:
    """Replace every SVF layer by a plain Conv2d / Linear with W = U diag(s) V^T (export); in place.

    The merged weight requires grad iff one of the layer's SVF tensors did. Returns the merged names.
    """
    _check_root(module, "merge_svf")
    sites = _sites(module, (SVFLayer,))
    for site in sites:
        assert isinstance(site.module, SVFLayer)
        plain = site.module.to_plain()
        plain.train(site.module.training)
        for parent, attr in site.slots:
            setattr(parent, attr, plain)
    return [s.name for s in sites]


def svf_layers(module: nn.Module) -> Iterator[tuple[str, SVFLayer]]:
    """Every SVF layer under ``module`` (itself included) with its qualified name, in module order."""
    for name, m in module.named_modules():
        if isinstance(m, SVFLayer):
            yield name, m


def require_svf_layers(module: nn.Module, action: str) -> dict[str, SVFLayer]:
    """``{name: layer}`` of every SVF layer under ``module``, in module order; at least one.

    Raises :class:`NoSVFLayerError`, naming ``action`` (the tool that needs them), when there is none.
    """
    layers = dict(svf_layers(module))
    if not layers:
        raise NoSVFLayerError(
            f"{action}: {type(module).__name__} holds no SVF layer; convert it with svfseg.svf.apply_svf "
            "first (a model trained with finetune=svf has them)"
        )
    return layers


def set_svf_execution(module: nn.Module, execution: str) -> int:
    """Switch every SVF layer to ``execution`` (auto / three_op); returns the layer count."""
    check_choice("execution", execution, EXECUTIONS)
    layers = list(require_svf_layers(module, "set_svf_execution").values())
    for layer in layers:
        layer.execution = execution
    return len(layers)


def mark_only_svf_trainable(module: nn.Module) -> int:
    """Freeze every parameter of ``module`` that is not an SVF factor; returns how many were frozen.

    The SVF factors keep the trainability chosen by ``apply_svf`` (its ``train`` argument).
    """
    svf_ids = {id(p) for _, layer in svf_layers(module) for _, p in layer.svf_tensors()}
    frozen = 0
    for p in module.parameters():
        if id(p) not in svf_ids and p.requires_grad:
            p.requires_grad_(False)
            frozen += 1
    return frozen


@contextmanager
def disable_svf(module: nn.Module) -> Iterator[None]:
    """Run every SVF layer with the singular values from conversion (``s0``) inside the block.

    With only ``s`` trained this gives the pretrained network back; trained ``u``/``v`` stay in effect.
    """
    layers = list(require_svf_layers(module, "disable_svf").values())
    previous = [layer._disabled for layer in layers]
    for layer in layers:
        layer._disabled = True
    try:
        yield
    finally:
        for layer, flag in zip(layers, previous):
            layer._disabled = flag
