"""Where in an image the directions with the most changed singular values respond (paper Figs 5, 6).

An SVF conv computes ``y = U diag(s) (V^T x)``: the V-conv projects the input onto R directions, each
coefficient map ``c_i = (V^T x)_i`` is scaled by ``s_i`` and written out along ``u_i`` (unit norm). So
``|c_i| * s_i`` is how strongly direction ``i`` contributes at each position. The paper shows the
directions whose singular value grew most (foreground cues) and shrank most (background cues).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import cv2
import numpy as np
import torch
import torch.nn.functional as F
from matplotlib.figure import Figure
from torch import Tensor, nn

from svfseg.analysis.spectra import spectrum_change
from svfseg.data.transforms import normalize_to_tensor
from svfseg.svf import SVFConv2d


class _Captured(Exception):
    """Raised by the pre-hook to stop the forward once the layer input is known."""

    def __init__(self, value: Tensor) -> None:
        super().__init__("layer input captured")
        self.value = value


@dataclass(frozen=True)
class CueMaps:
    """Normalised response maps of chosen directions of one SVF conv.

    ``maps``: (n, H, W) float in [0, 1] at image size; ``indices``: positions in the layer's ``s``;
    ``ratios``: s/s0 of each; ``kinds``: ``"grown"`` or ``"shrunk"``.
    """

    layer: str
    indices: tuple[int, ...]
    ratios: tuple[float, ...]
    kinds: tuple[str, ...]
    maps: Tensor

    @property
    def titles(self) -> list[str]:
        """One caption per map: direction, how its singular value changed."""
        return [
            f"{kind}: direction {idx}, s/s0 = {ratio:.4f}"
            for idx, ratio, kind in zip(self.indices, self.ratios, self.kinds)
        ]


def prepare_image(image: np.ndarray, size: int | None = None) -> tuple[np.ndarray, Tensor]:
    """(H, W, 3) uint8 RGB -> (resized uint8 image, (1, 3, h, w) ImageNet-normalised tensor).

    ``size`` rescales the longer side (the networks were trained at 473); None keeps the image as is.
    """
    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        raise ValueError(
            f"expected an (H, W, 3) uint8 RGB image, got shape {image.shape} dtype {image.dtype}"
        )
    if size is not None:
        scale = size / max(image.shape[:2])
        h, w = (max(1, round(d * scale)) for d in image.shape[:2])
        image = cv2.resize(image, (w, h), interpolation=cv2.INTER_LINEAR)
    return image, normalize_to_tensor(image).unsqueeze(0)


def _svf_conv(model: nn.Module, layer_name: str) -> SVFConv2d:
    modules = dict(model.named_modules())
    if layer_name not in modules:
        raise KeyError(
            f"{type(model).__name__} has no module {layer_name!r}; names are relative to the module passed "
            "(pass the backbone and e.g. 'layer3.5.conv2')"
        )
    layer = modules[layer_name]
    if not isinstance(layer, SVFConv2d):
        raise TypeError(
            f"{layer_name!r} is a {type(layer).__name__}, not an SVFConv2d; cues need an SVF conv"
        )
    return layer


def capture_input(model: nn.Module, layer_name: str, image: Tensor) -> Tensor:
    """The input of ``layer_name`` during ``model(image)`` in eval mode (the forward stops right there)."""
    layer = _svf_conv(model, layer_name)

    def hook(_module: nn.Module, args: tuple[Any, ...]) -> None:
        raise _Captured(args[0].detach())

    handle = layer.register_forward_pre_hook(hook)
    was_training = model.training
    model.eval()  # BN with running statistics, as at test time
    try:
        with torch.no_grad():
            model(image)
    except _Captured as captured:
        return captured.value
    finally:
        handle.remove()
        model.train(was_training)
    raise RuntimeError(
        f"{layer_name!r} was not called during {type(model).__name__}.forward; pick a layer on the forward path"
    )


def direction_coefficients(layer: SVFConv2d, x: Tensor) -> Tensor:
    """c = V^T x as a (B, R, h, w) map: the layer's V-conv (kernel, stride, padding, dilation, groups)."""
    with torch.no_grad():
        v = layer.v.reshape(layer.rank, layer.in_channels // layer.groups, *layer.kernel_size)
        # _conv is the V-op of the layer's own forward, including non-zero padding modes.
        return layer._conv(x.to(v.dtype), v, None)


def _normalise(maps: Tensor) -> Tensor:
    flat = maps.flatten(1)
    lo, hi = flat.min(1).values, flat.max(1).values
    span = (hi - lo).clamp_min(torch.finfo(maps.dtype).tiny)
    return ((flat - lo[:, None]) / span[:, None]).reshape(maps.shape)


def cue_maps(
    model: nn.Module, layer_name: str, image: Tensor, *, n_grown: int = 1, n_shrunk: int = 1
) -> CueMaps:
    """Maps ``|c_i| * s_i`` of the directions of ``layer_name`` whose s/s0 grew and shrank most.

    ``model(image)`` must reach the layer (pass the backbone); ``image``: (3, H, W) or (1, 3, H, W),
    normalised as in training (see :func:`prepare_image`). Maps are upsampled to (H, W), min-max scaled.
    """
    if image.dim() == 3:
        image = image.unsqueeze(0)
    if image.dim() != 4 or image.shape[0] != 1:
        raise ValueError(
            f"cue_maps takes one image (3, H, W) or (1, 3, H, W), got shape {tuple(image.shape)}"
        )
    layer = _svf_conv(model, layer_name)
    change = spectrum_change(layer_name, layer)
    ratio = torch.full((layer.rank,), math.nan, dtype=torch.float64)
    ratio[change.index] = change.ratio
    valid = torch.nonzero(~torch.isnan(ratio)).flatten()
    if n_grown < 0 or n_shrunk < 0 or n_grown + n_shrunk < 1 or n_grown + n_shrunk > valid.numel():
        raise ValueError(
            f"n_grown={n_grown}, n_shrunk={n_shrunk}: need non-negative counts, at least one map and at most "
            f"{valid.numel()} directions with a non-zero initial singular value in {layer_name!r}"
        )
    by_ratio = valid[torch.sort(ratio[valid], descending=True, stable=True).indices]
    grown = by_ratio[:n_grown].tolist()
    shrunk = by_ratio.flip(0)[:n_shrunk].tolist() if n_shrunk else []
    chosen = grown + shrunk

    x = capture_input(model, layer_name, image.to(layer.v.device))
    coeff = direction_coefficients(layer, x)[0, chosen]  # (n, h, w)
    with torch.no_grad():
        s = layer.effective_s().detach()[chosen].to(coeff.dtype)
        weighted = coeff.abs() * s[:, None, None]
        up = F.interpolate(
            weighted[None].float(), size=image.shape[-2:], mode="bilinear", align_corners=False
        )[0]
    return CueMaps(
        layer=layer_name,
        indices=tuple(chosen),
        ratios=tuple(float(ratio[i]) for i in chosen),
        kinds=("grown",) * len(grown) + ("shrunk",) * len(shrunk),
        maps=_normalise(up).cpu(),
    )


def overlay_cues(
    image: np.ndarray,
    maps: Tensor | np.ndarray,
    titles: Sequence[str],
    *,
    alpha: float = 0.5,
    cmap: str = "jet",
    ncols: int | None = None,
    suptitle: str | None = None,
    mask: np.ndarray | None = None,
    colorbar: bool = True,
) -> Figure:
    """The image (and its ground-truth ``mask``, if given) followed by each map as a heatmap over it.

    ``maps``: (n, H, W) in [0, 1] at image size. ``ncols``: panels per row (default: rows of at most 5,
    filled evenly); grid cells without a panel are removed, never left blank. ``colorbar`` adds the
    scale of the heatmaps (min-max normalised response).
    """
    arr = maps.detach().cpu().numpy() if isinstance(maps, Tensor) else np.asarray(maps)
    if arr.ndim != 3 or arr.shape[1:] != image.shape[:2]:
        raise ValueError(
            f"maps of shape {arr.shape} do not match the image {image.shape[:2]}: pass (n, H, W) maps at image "
            "size (cue_maps upsamples them; use the image returned by prepare_image)"
        )
    if len(titles) != arr.shape[0]:
        raise ValueError(f"{len(titles)} titles for {arr.shape[0]} maps")
    if mask is not None and np.asarray(mask).shape != image.shape[:2]:
        raise ValueError(f"mask of shape {np.asarray(mask).shape} does not match the image {image.shape[:2]}")
    leading = 1 if mask is None else 2
    panels = arr.shape[0] + leading
    if ncols is None:
        ncols = math.ceil(panels / math.ceil(panels / 5))
    ncols = max(1, min(ncols, panels))
    nrows = math.ceil(panels / ncols)
    aspect = image.shape[0] / image.shape[1]
    width = 2.3 * ncols + (0.7 if colorbar else 0.0)
    # no pyplot global state; the constrained layout leaves room for the colour bar and its labels
    fig = Figure(figsize=(width, (2.3 * aspect + 0.4) * nrows + 0.5), layout="constrained")
    axes = fig.subplots(nrows, ncols, squeeze=False)
    axes_list = list(axes.flat)
    for ax in axes_list[panels:]:
        fig.delaxes(ax)
    axes_list = axes_list[:panels]
    axes_list[0].imshow(image)
    axes_list[0].set_title("image", fontsize=9)
    if mask is not None:
        axes_list[1].imshow(image)
        shown = np.ma.masked_where(np.asarray(mask) != 1, np.ones(image.shape[:2]))
        axes_list[1].imshow(shown, cmap="autumn", alpha=0.55, vmin=0, vmax=1)
        axes_list[1].set_title("ground truth (class pixels)", fontsize=9)
    heatmap = None
    for ax, heat, text in zip(axes_list[leading:], arr, titles):
        ax.imshow(image)
        heatmap = ax.imshow(heat, cmap=cmap, alpha=alpha, vmin=0.0, vmax=1.0)
        ax.set_title(text, fontsize=8)
    for ax in axes_list:
        ax.axis("off")
    if suptitle:
        fig.suptitle(suptitle, fontsize=10)
    if colorbar and heatmap is not None:
        bar = fig.colorbar(heatmap, ax=axes_list, fraction=0.03, pad=0.01)
        bar.set_label("response |c_i| * s_i (min-max scaled)", fontsize=8)
        bar.ax.tick_params(labelsize=7)
    return fig
