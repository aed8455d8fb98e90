"""``lora`` and ``dora``: low-rank adapters (peft) on the convs and Linears of the chosen stages.

Each selected layer W gets W + (alpha / r) B A with ``A`` (r x fan-in, the layer's own kernel) and
``B`` (fan-out x r, 1x1) trained and W frozen; DoRA also trains one magnitude per output channel. B
starts at zero, so the model is the pretrained one at the first step, as with SVF. Layers are chosen by
kind (``target``): every conv and Linear, the 3x3 or 1x1 convs, or the Linears (ViTs). Grouped and
depthwise convs are never targets: peft can neither merge nor size them like dense layers.

BN stays frozen in eval mode as for every strategy but ``bn``. ``rank=match_svf`` picks the rank whose
trainable count is closest to SVF's on the same stages (``svfseg.finetune.param_counts``).
"""

from __future__ import annotations

import logging
import numbers
from typing import Any, ClassVar

from torch import nn

from svfseg.finetune.adapters import adapter_parameters, inject_lora, lora_layers
from svfseg.finetune.base import FinetuneStrategy, NamedParams
from svfseg.finetune.options import DEFAULT_BACKBONE_LR_MULT, DEFAULT_STAGES, parse_stages
from svfseg.finetune.param_counts import closest_rank, lora_count, svf_singular_values
from svfseg.finetune.selection import KERNELS
from svfseg.methods.base import FewShotModel
from svfseg.svf.options import check_choice

log = logging.getLogger(__name__)

TARGETS = ("all", "3x3", "1x1", "linear")
MATCH_SVF = "match_svf"


def parse_rank(value: Any) -> int | str:
    if value == MATCH_SVF:
        return MATCH_SVF
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(
            f"rank={value!r} is invalid: use an integer >= 1 (e.g. 8) or {MATCH_SVF} (the rank whose "
            "trainable count is closest to SVF's on the same stages)"
        )
    return value


def parse_alpha(value: Any) -> float | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or value <= 0:
        raise ValueError(f"alpha={value!r} is invalid: use a positive number, or null for alpha = rank")
    return float(value)


def parse_dropout(value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not 0 <= value < 1:
        raise ValueError(f"dropout={value!r} is invalid: use a number in [0, 1) (0 switches it off)")
    return float(value)


def _eligible(module: nn.Module, target: str) -> bool:
    """Exact Conv2d (not grouped) / Linear of the requested kind; subclasses may not run the plain op."""
    if type(module) is nn.Conv2d:
        if module.groups != 1 or target == "linear":
            return False
        return target == "all" or tuple(module.kernel_size) == KERNELS[target]
    return type(module) is nn.Linear and target in ("all", "linear")


def lora_targets(backbone: nn.Module, stages: tuple[str, ...], target: str) -> list[tuple[str, nn.Module]]:
    """The layers LoRA wraps: ``target`` layers of ``stages`` (qualified names under the backbone).

    A stage without one is an error, so ``target=1x1`` on VGG (3x3 convs only) or ``target=linear`` on a
    CNN fails instead of training nothing there.
    """
    out: list[tuple[str, nn.Module]] = []
    for stage in stages:
        modules = list(getattr(backbone, stage).named_modules(prefix=stage))
        chosen = [(n, m) for n, m in modules if _eligible(m, target)]
        if not chosen:
            kinds = sorted(
                {
                    f"{'x'.join(map(str, m.kernel_size))} conv" + (" (grouped)" if m.groups > 1 else "")
                    for _, m in modules
                    if isinstance(m, nn.Conv2d)
                }
                | {"Linear" for _, m in modules if isinstance(m, nn.Linear)}
            )
            raise ValueError(
                f"target={target!r} selects no layer in backbone stage {stage} "
                f"({type(backbone).__name__} {getattr(backbone, 'name', '')}): it holds {kinds or 'none'}. "
                f"Use target=all or a kind that exists there (choices {list(TARGETS)}; grouped and "
                "depthwise convs are never LoRA targets), or leave this stage out of stages"
            )
        out += chosen
    return out


class LoRAStrategy(FinetuneStrategy):
    """LoRA (peft) on the ``target`` layers of ``stages``; see the module docstring.

    Args:
        stages: stages whose layers get adapters; default layer2-4 (SVF's).
        rank: adapter rank r (an integer >= 1) or ``match_svf``.
        alpha: scale numerator (the update is alpha / r * B A); null: alpha = rank, a scale of 1.
        dropout: dropout on the adapter branch's input during training (0: none).
        target: ``all`` | ``3x3`` | ``1x1`` | ``linear``.
        backbone_lr_mult: lr multiplier of the backbone groups (the adapters).
        checkpointing: activation checkpointing of the stages backward passes through.
    """

    name = "lora"
    use_dora: ClassVar[bool] = False

    def __init__(
        self,
        *,
        stages: Any = DEFAULT_STAGES,
        rank: Any = 8,
        alpha: Any = None,
        dropout: Any = 0.0,
        target: str = "all",
        backbone_lr_mult: float = DEFAULT_BACKBONE_LR_MULT,
        checkpointing: bool = False,
    ) -> None:
        super().__init__(backbone_lr_mult=backbone_lr_mult, checkpointing=checkpointing)
        self.stages = parse_stages(stages, "stages")
        self.rank = parse_rank(rank)
        self.alpha = parse_alpha(alpha)
        self.dropout = parse_dropout(dropout)
        self.target = check_choice("target", target, TARGETS)
        self.resolved_rank: int | None = None  # set by prepare (match_svf depends on the backbone)

    def options(self) -> dict[str, Any]:
        return {
            "stages": list(self.stages),
            "rank": self.rank,
            "alpha": self.alpha,
            "dropout": self.dropout,
            "target": self.target,
            **super().options(),
        }

    def resolve_rank(self, backbone: nn.Module) -> int:
        """The rank on this backbone: the given one, or the one closest to SVF's count (``match_svf``)."""
        if self.rank != MATCH_SVF:
            return int(self.rank)
        layers = [m for _, m in lora_targets(backbone, self.stages, self.target)]
        svf = svf_singular_values(backbone, self.stages)
        rank = closest_rank(layers, svf, dora=self.use_dora)
        count = lora_count(layers, rank, dora=self.use_dora)
        log.info(
            "finetune=%s rank=%s: rank %d trains %s parameters, SVF trains %s on %s",
            self.name,
            MATCH_SVF,
            rank,
            f"{count:,}",
            f"{svf:,}",
            list(self.stages),
        )
        return rank

    def prepare(self, model: FewShotModel, *, from_checkpoint: bool = False) -> None:
        # from_checkpoint needs nothing special: the adapters' initial values are overwritten by the state
        # dict, and match_svf depends on shapes only.
        backbone = model.backbone
        if next(lora_layers(backbone), None) is not None:
            raise ValueError(
                f"finetune={self.name}: the backbone already holds LoRA layers; adapters are injected once. "
                "Apply the strategy to a freshly built model."
            )
        names = [n for n, _ in lora_targets(backbone, self.stages, self.target)]
        rank = self.resolve_rank(backbone)
        inject_lora(
            backbone,
            names,
            rank=rank,
            alpha=float(rank) if self.alpha is None else self.alpha,
            dropout=self.dropout,
            use_dora=self.use_dora,
        )
        self.resolved_rank = rank

    def select(self, model: FewShotModel) -> NamedParams:
        return [
            (f"{name}.{n}", p)
            for name, layer in lora_layers(model.backbone)
            if name.split(".", 1)[0] in self.stages
            for n, p in adapter_parameters(layer)
        ]


class DoRAStrategy(LoRAStrategy):
    """DoRA (peft ``use_dora``): LoRA's direction update plus a trained magnitude per output channel."""

    name = "dora"
    use_dora: ClassVar[bool] = True
