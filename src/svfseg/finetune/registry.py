"""``build_strategy``: strategy name + options (from a config) -> a validated strategy object."""

from __future__ import annotations

from typing import Any

from svfseg.finetune.base import FinetuneStrategy
from svfseg.finetune.bitfit import BitFitStrategy
from svfseg.finetune.bn import BNStrategy
from svfseg.finetune.freeze import FreezeStrategy
from svfseg.finetune.full import FullStrategy
from svfseg.finetune.lora import DoRAStrategy, LoRAStrategy
from svfseg.finetune.part import PartStrategy
from svfseg.finetune.svf import SVFStrategy

STRATEGIES: dict[str, type[FinetuneStrategy]] = {
    cls.name: cls
    for cls in (
        FreezeStrategy,
        FullStrategy,
        PartStrategy,
        BNStrategy,
        SVFStrategy,
        LoRAStrategy,
        DoRAStrategy,
        BitFitStrategy,
    )
}


def strategy_options(name: str) -> tuple[str, ...]:
    """Option names a strategy accepts (its keyword-only constructor arguments)."""
    return STRATEGIES[name].option_names()


def build_strategy(name: str, **options: Any) -> FinetuneStrategy:
    """The strategy ``name`` with ``options``; unknown names and options fail with the allowed ones."""
    if name not in STRATEGIES:
        raise ValueError(f"finetune strategy {name!r} is unknown: choose one of {tuple(STRATEGIES)}")
    allowed = strategy_options(name)
    unknown = sorted(set(options) - set(allowed))
    if unknown:
        raise ValueError(
            f"finetune={name} does not take option(s) {unknown}; allowed: {list(allowed) or 'none'}"
        )
    return STRATEGIES[name](**options)
