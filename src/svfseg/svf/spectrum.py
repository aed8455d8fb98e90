"""How fine-tuning moved the singular values of SVF layers: ``s0`` (at conversion) against the current ``s``.

A layer keeps its singular values at conversion in the ``s0`` buffer, so a single fine-tuned model is
enough to read the change; no copy of the pretrained network is needed. Used by the analysis figures and
by the training-time singular-value logger.

Grouped convs hold one SVD per group (``s0`` is descending within each group only). They are flattened
here and sorted by initial value over all groups; ``SpectrumChange.index`` points back into the layer's
``s`` vector and ``index // group_rank`` gives the group.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from svfseg.messages import preview
from svfseg.svf.convert import require_svf_layers
from svfseg.svf.layers import SVFLayer

_STAGE = re.compile(r"layer\d+$")


@dataclass(frozen=True)
class SpectrumChange:
    """Initial and current singular values of one SVF layer, largest initial value first.

    ``initial`` / ``current``: float64 CPU tensors (R,); ``index``: position of each value in the layer's
    ``s`` (or ``s_delta``) vector, so directions can be looked up in ``u`` / ``v``.
    """

    name: str
    initial: Tensor
    current: Tensor
    index: Tensor
    groups: int
    group_rank: int

    @property
    def ratio(self) -> Tensor:
        """current / initial; NaN where the initial value is zero (no direction to rescale)."""
        return torch.where(
            self.initial > 0, self.current / self.initial, torch.full_like(self.initial, math.nan)
        )

    def top_k(self, k: int) -> SpectrumChange:
        """The ``k`` largest initial values (all of them when the layer has fewer)."""
        if k < 1:
            raise ValueError(f"top_k needs k >= 1, got k={k}")
        return SpectrumChange(
            self.name, self.initial[:k], self.current[:k], self.index[:k], self.groups, self.group_rank
        )


def spectrum_change(name: str, layer: SVFLayer) -> SpectrumChange:
    """Read ``s0`` and the effective singular values of ``layer`` (``SVFLayer.effective_s``: any
    parametrization, frozen directions included; a residual low-rank core is not a diagonal and is left out)."""
    with torch.no_grad():
        initial = layer.s0.detach().to("cpu", torch.float64)
        if layer.parametrization == "direct" and not layer.partial:
            current = layer.s.detach().to("cpu", torch.float64)
        elif layer.parametrization == "exp" and not layer.partial:  # the exponent in float64
            current = initial * torch.exp(layer.s_delta.detach().to("cpu", torch.float64))
        else:
            current = layer.effective_s().detach().to("cpu", torch.float64)
    # Stable sort: an ungrouped layer keeps its SVD order exactly.
    order = torch.sort(initial, descending=True, stable=True).indices
    return SpectrumChange(name, initial[order], current[order], order, layer.groups, layer.group_rank)


def singular_value_changes(model: nn.Module, names: Iterable[str] | None = None) -> dict[str, SpectrumChange]:
    """:class:`SpectrumChange` of every SVF layer of ``model`` (or of ``names``, in the given order)."""
    layers = require_svf_layers(model, "singular_value_changes")
    wanted = list(layers) if names is None else list(names)
    unknown = [n for n in wanted if n not in layers]
    if unknown:
        raise KeyError(
            f"{unknown} are not SVF layers of {type(model).__name__}; SVF layers: [{preview(layers)}]"
        )
    return {n: spectrum_change(n, layers[n]) for n in wanted}


def stage_of(name: str) -> str:
    """The stage a layer name belongs to: its first ``layer<N>`` part (``backbone.layer3.0.conv2`` ->
    ``layer3``), else its first part (the name as ResNet / VGG-style backbones write it)."""
    parts = name.split(".")
    return next((p for p in parts if _STAGE.match(p)), parts[0] or "(root)")


def stage_change_stats(model: nn.Module) -> dict[str, Tensor]:
    """Relative changes ``s / s0 - 1`` of all singular values per stage (float64, one flat tensor each).

    Zero initial values have no relative change and are left out, so the tensors are NaN-free for
    histograms (W&B logs one per stage).
    """
    stats: dict[str, list[Tensor]] = {}
    for name, change in singular_value_changes(model).items():
        keep = change.initial > 0
        stats.setdefault(stage_of(name), []).append(change.current[keep] / change.initial[keep] - 1.0)
    return {stage: torch.cat(parts) for stage, parts in stats.items()}
