"""How fine-tuning moved the singular values of SVF layers (paper Fig. 4 and appendix Figs 8-11).

The paper reads the Top-30 *initial* singular values of a conv and shows each one before and after
fine-tuning: large changes mean the pretrained weighting of semantic cues did not suit the task. A
layer keeps its singular values at conversion in the ``s0`` buffer, so a single fine-tuned model is
enough; no copy of the pretrained network is needed.

Grouped convs hold one SVD per group (``s0`` is descending within each group only). They are flattened
here and sorted by initial value over all groups; ``SpectrumChange.index`` points back into the layer's
``s`` vector and ``index // group_rank`` gives the group.
"""

from __future__ import annotations

import math
from collections.abc import Iterable

import torch
from matplotlib.figure import Figure
from torch import nn

from svfseg.backbones.base import STAGE_NAMES
from svfseg.messages import preview
from svfseg.svf import SVFConv2d, require_svf_layers
from svfseg.svf.spectrum import (
    SpectrumChange,
    singular_value_changes,
    spectrum_change,
    stage_change_stats,
    stage_of,
)

KINDS: tuple[str, ...] = ("3x3", "1x1", "all")
__all__ = [
    "KINDS",
    "SpectrumChange",
    "plot_before_after",
    "plot_top_k_change",
    "select_convs",
    "singular_value_changes",
    "spectrum_change",
    "stage_change_stats",
    "stage_of",
]


def _stage_position(name: str, stage: str) -> int | None:
    parts = name.split(".")
    return parts.index(stage) if stage in parts else None


def select_convs(model: nn.Module, stage: str = "layer3", kind: str = "3x3") -> list[str]:
    """Names of the SVF convs of ``stage`` the paper plots, in module order.

    ``kind``: ``3x3`` every 3x3 conv (Figs 4, 8, 10); ``1x1`` the last 1x1 conv that is a direct child of
    each block, i.e. ``conv3`` of a ResNet bottleneck and never the ``downsample`` projection (Figs 6, 9,
    11); ``all`` every SVF conv of the stage. A stage whose convs are its direct children (VGG) is one block.
    """
    if kind not in KINDS:
        raise ValueError(f"kind={kind!r} is not supported; choose one of {list(KINDS)}")
    convs = [(n, m) for n, m in require_svf_layers(model, "select_convs").items() if isinstance(m, SVFConv2d)]
    in_stage = [(n, m, pos) for n, m in convs if (pos := _stage_position(n, stage)) is not None]
    if not in_stage:
        stages = sorted({p for n, _ in convs for p in n.split(".") if p in STAGE_NAMES})
        raise ValueError(
            f"no SVF conv in stage {stage!r} of {type(model).__name__}; stages with SVF convs: {stages}"
        )
    prefixes = sorted({".".join(n.split(".")[:pos]) for n, _, pos in in_stage})
    if len(prefixes) > 1:
        raise ValueError(
            f"stage {stage!r} occurs under several modules {prefixes}; pass the backbone itself "
            "(e.g. svfseg.analysis.find_backbone(module))"
        )
    if kind == "all":
        return [n for n, _, _ in in_stage]
    if kind == "3x3":
        chosen = [n for n, m, _ in in_stage if tuple(m.kernel_size) == (3, 3)]
    else:
        last_per_block: dict[str, str] = {}
        for n, m, pos in in_stage:
            rest = n.split(".")[pos + 1 :]
            if len(rest) > 2 or tuple(m.kernel_size) != (1, 1):
                continue  # nested (e.g. downsample.0) or not 1x1
            block = stage if len(rest) == 1 else f"{stage}.{rest[0]}"
            last_per_block[block] = n  # module order: a later conv of the block overwrites
        chosen = list(last_per_block.values())
    if not chosen:
        raise ValueError(
            f"stage {stage!r} has no SVF conv of kind {kind!r}; its SVF convs: [{preview(n for n, _, _ in in_stage)}]"
        )
    return chosen


def _short(name: str) -> str:
    parts = name.split(".")
    stage = next((i for i, p in enumerate(parts) if p in STAGE_NAMES), 0)
    return ".".join(parts[stage:])


def plot_top_k_change(
    changes: dict[str, SpectrumChange] | Iterable[SpectrumChange],
    k: int = 30,
    *,
    mode: str = "values",
    ncols: int = 3,
    title: str | None = None,
    initial_label: str = "initial (pretrained)",
) -> Figure:
    """One bar chart per layer: the Top-``k`` initial singular values and the same directions after fine-tuning.

    ``mode="values"`` draws paired bars (grey initial, blue fine-tuned) as in Fig. 8; ``mode="ratio"`` draws
    s/s0 per direction around a line at 1 (green grew, red shrank), which reads better when values span
    orders of magnitude. ``initial_label`` names where ``s0`` came from (e.g. proxy-pretrained weights).
    """
    items = list(changes.values()) if isinstance(changes, dict) else list(changes)
    if not items:
        raise ValueError("plot_top_k_change got no layers; select some with select_convs")
    if mode not in ("values", "ratio"):
        raise ValueError(f"mode={mode!r} is not supported; choose 'values' or 'ratio'")
    ncols = max(1, min(ncols, len(items)))
    nrows = math.ceil(len(items) / ncols)
    fig = Figure(figsize=(4.6 * ncols, 2.9 * nrows))  # no pyplot: no global state, any backend
    axes = fig.subplots(nrows, ncols, squeeze=False)
    for ax, change in zip(axes.flat, items):
        top = change.top_k(k)
        x = torch.arange(1, top.initial.numel() + 1).numpy()
        if mode == "values":
            ax.bar(x - 0.2, top.initial.numpy(), width=0.4, color="0.65", label=initial_label)
            ax.bar(x + 0.2, top.current.numpy(), width=0.4, color="C0", label="after fine-tuning")
            ax.set_ylabel("singular value")
        else:
            ratio = top.ratio.numpy()
            colours = ["C2" if r >= 1 else "C3" for r in ratio]
            ax.bar(x, ratio - 1.0, bottom=1.0, width=0.7, color=colours)
            ax.axhline(1.0, color="0.3", lw=0.8)
            ax.set_ylabel("s / s0")
        ax.set_title(_short(change.name), fontsize=9)
        ax.set_xlabel(f"rank of initial value (top {top.initial.numel()})", fontsize=8)
        ax.tick_params(labelsize=7)
        ax.grid(axis="y", alpha=0.3)
    for ax in list(axes.flat)[len(items) :]:
        fig.delaxes(ax)  # no blank cells in the grid
    if mode == "values" and title:
        axes.flat[0].legend(loc="upper right", fontsize=7)  # a figure legend would collide with the title
    elif mode == "values":
        handles, labels = axes.flat[0].get_legend_handles_labels()
        fig.legend(handles, labels, loc="upper right", fontsize=8, ncol=2)
    if title:
        fig.suptitle(title, x=0.02, ha="left", fontsize=10)
    upper = 1.0 - 0.3 / fig.get_figheight() if mode == "values" and not title else 1.0  # room for the legend
    fig.tight_layout(rect=(0, 0, 1, upper))
    return fig


def plot_before_after(change: SpectrumChange, k: int = 30, *, title: str, initial_label: str) -> Figure:
    """The paper's Fig. 4 for one layer: Top-``k`` initial values before / after, and their change in %.

    The second panel makes small changes readable: a short run moves singular values by a few percent,
    which paired bars alone do not show.
    """
    top = change.top_k(k)
    x = torch.arange(1, top.initial.numel() + 1).numpy()
    fig = Figure(figsize=(10, 3.6))
    ax_values, ax_change = fig.subplots(1, 2)
    ax_values.bar(x - 0.2, top.initial.numpy(), width=0.4, color="0.65", label=initial_label)
    ax_values.bar(x + 0.2, top.current.numpy(), width=0.4, color="C0", label="after fine-tuning")
    ax_values.set_ylabel("singular value")
    ax_values.legend(loc="upper right", fontsize=7)
    percent = 100.0 * (top.ratio.numpy() - 1.0)
    ax_change.bar(x, percent, width=0.7, color=["C2" if p >= 0 else "C3" for p in percent])
    ax_change.axhline(0.0, color="0.3", lw=0.8)
    ax_change.set_ylabel("change s / s0 - 1 (%)")
    for ax, name in ((ax_values, "values"), (ax_change, "relative change (green grew, red shrank)")):
        ax.set_title(f"{_short(change.name)}: {name}", fontsize=9)
        ax.set_xlabel(f"rank of initial singular value (top {top.initial.numel()})", fontsize=8)
        ax.tick_params(labelsize=7)
        ax.grid(axis="y", alpha=0.3)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return fig
