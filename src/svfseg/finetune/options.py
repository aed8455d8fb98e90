"""Parsing and validation of strategy options, shared by every strategy.

Options come from Hydra (lists arrive as ``ListConfig``, numbers as ints) or from Python. Every error
names the option, the value and what is allowed, so a typo in a sweep fails at construction time.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from svfseg.backbones.base import STAGE_NAMES

DEFAULT_BACKBONE_LR_MULT = 0.1  # the SVF repo trains backbone groups at LR/10
CONV_TYPES = ("all", "3x3", "1x1")
# The stages SVF trains in the paper: the default of every strategy that picks stages, and of TTA.
DEFAULT_STAGES = ("layer2", "layer3", "layer4")


def _as_items(value: Any) -> list[Any]:
    if isinstance(value, (str, int)):
        return [value]
    if isinstance(value, Iterable):
        return list(value)
    return [value]


def parse_stages(value: Any, option: str) -> tuple[str, ...]:
    """Stage names in backbone order; ``2`` and ``"layer2"`` are both accepted (the paper says "layer 2")."""
    items = _as_items(value)
    if not items:
        raise ValueError(f"{option}=[] is empty: choose at least one of {STAGE_NAMES}")
    stages = set()
    for item in items:
        name = f"layer{item}" if isinstance(item, int) and not isinstance(item, bool) else item
        if name not in STAGE_NAMES:
            raise ValueError(
                f"{option} contains {item!r}, which is not a backbone stage: choose from {STAGE_NAMES} "
                "(or their numbers 0-4)"
            )
        stages.add(name)
    return tuple(s for s in STAGE_NAMES if s in stages)


def parse_lr_mult(value: Any, option: str = "backbone_lr_mult") -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value <= 0:
        raise ValueError(f"{option}={value!r} is invalid: use a positive number (the lr is lr * {option})")
    return float(value)


def parse_flag(value: Any, option: str) -> bool:
    if not isinstance(value, bool):
        raise ValueError(f"{option}={value!r} is invalid: use true or false")
    return value
