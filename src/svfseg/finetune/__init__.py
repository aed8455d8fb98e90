"""Fine-tune strategies: which backbone parameters train, how BN behaves, and the optimizer groups.

``build_strategy(name, **options).apply(model) -> param groups``; names: freeze, full, part, bn,
svf, lora, dora (peft adapters), bitfit.
"""

from svfseg.finetune.base import FinetuneStrategy, build_param_groups, check_param_groups
from svfseg.finetune.bitfit import BitFitStrategy
from svfseg.finetune.bn import BNStrategy
from svfseg.finetune.freeze import FreezeStrategy
from svfseg.finetune.full import FullStrategy
from svfseg.finetune.lora import DoRAStrategy, LoRAStrategy
from svfseg.finetune.part import PartStrategy
from svfseg.finetune.registry import STRATEGIES, build_strategy, strategy_options
from svfseg.finetune.svf import SVFStrategy

__all__ = [
    "STRATEGIES",
    "BNStrategy",
    "BitFitStrategy",
    "DoRAStrategy",
    "FinetuneStrategy",
    "FreezeStrategy",
    "FullStrategy",
    "LoRAStrategy",
    "PartStrategy",
    "SVFStrategy",
    "build_param_groups",
    "build_strategy",
    "check_param_groups",
    "strategy_options",
]
