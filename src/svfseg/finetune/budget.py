"""``python -m svfseg.finetune.budget backbone=... finetune=...``: trainable parameters per stage.

The overrides are train.py's (Hydra syntax, composed on conf/train.yaml). The model is built on the
``meta`` device (shapes only: no weight file, no memory, a second for a full-width ResNet-101) and the
strategy is applied in its structure-only form, the one a checkpoint loads into, so the counts are those
of the model train.py would train. For ``lora`` / ``dora`` the rank in use and SVF's count on the same
stages are printed too, which is what ``rank=match_svf`` matches; the SVF variants (``directions=top|bottom``,
``scale_shift``, ``residual_rank``: svf_top, svf_bottom, salt) print SVF's count on the same stages as well.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf

from svfseg.data.fold import FoldSpec
from svfseg.finetune.base import backbone_stages
from svfseg.finetune.lora import LoRAStrategy
from svfseg.finetune.param_counts import svf_singular_values
from svfseg.finetune.registry import build_strategy
from svfseg.finetune.svf import SVFStrategy
from svfseg.methods.base import FewShotModel
from svfseg.methods.factory import build_fewshot_model


@dataclass(frozen=True)
class Budget:
    """Trainable parameters of one built model, per optimizer group (``head``, each backbone stage)."""

    method: str
    backbone: str
    finetune: dict[str, Any]
    trainable: dict[str, int]  # head, then layer0..layer4
    stage_parameters: dict[str, int]  # every parameter of each stage before the strategy ran
    rank: int | None = None  # lora / dora: the rank in use
    svf_same_stages: int | None = (
        None  # lora / dora / SVF variants: what finetune=svf trains on the same stages
    )

    @property
    def backbone_trainable(self) -> int:
        return sum(v for k, v in self.trainable.items() if k != "head")


def trainable_per_group(model: FewShotModel) -> dict[str, int]:
    """Trainable elements of the head and of each backbone stage (the strategy's optimizer groups)."""
    counts = {"head": sum(p.numel() for _, p in model.head_named_parameters() if p.requires_grad)}
    for stage in backbone_stages(model):
        counts[stage] = sum(p.numel() for p in getattr(model.backbone, stage).parameters() if p.requires_grad)
    return counts


def model_budget(model: FewShotModel, finetune: dict[str, Any], *, from_checkpoint: bool = True) -> Budget:
    """Apply ``finetune`` (``{"name": ..., **options}``) to ``model`` and count what trains."""
    options = dict(finetune)
    name = options.pop("name")
    strategy = build_strategy(name, **options)
    stages = backbone_stages(model)
    sizes = {s: sum(p.numel() for p in getattr(model.backbone, s).parameters()) for s in stages}
    compare = isinstance(strategy, LoRAStrategy) or (
        isinstance(strategy, SVFStrategy) and strategy.is_variant
    )
    svf = svf_singular_values(model.backbone, strategy.stages) if compare else None
    strategy.apply(model, from_checkpoint=from_checkpoint)
    return Budget(
        method=type(model).__name__,
        backbone=str(getattr(model.backbone, "name", type(model.backbone).__name__)),
        finetune={"name": name, **strategy.options()},
        trainable=trainable_per_group(model),
        stage_parameters=sizes,
        rank=getattr(strategy, "resolved_rank", None),
        svf_same_stages=svf,
    )


def compose_train(overrides: Sequence[str]) -> DictConfig:
    """conf/train.yaml with train.py overrides (the source checkout's conf folder)."""
    from svfseg.compose import compose_train_config  # Hydra only for the CLI

    return compose_train_config(overrides)


def config_budget(cfg: DictConfig) -> Budget:
    """The budget of the model a composed train.py config builds (on the meta device, no weights)."""
    method, backbone, finetune = (_plain(cfg[key]) for key in ("method", "backbone", "finetune"))
    with torch.device("meta"):
        model = build_fewshot_model(method, backbone, fold=FoldSpec.from_config(cfg), load_pretrained=False)
        return model_budget(model, finetune)


def _plain(node: Any) -> dict[str, Any]:
    value = OmegaConf.to_container(node, resolve=True)
    assert isinstance(value, dict)
    return {str(k): v for k, v in value.items()}


def format_budget(budget: Budget) -> str:
    options = {k: v for k, v in budget.finetune.items() if k != "name"}
    lines = [
        f"{budget.method} on {budget.backbone}, finetune={budget.finetune['name']} {json.dumps(options)}",
        f"{'group':<10} {'trainable':>12} {'stage params':>14}",
    ]
    for group, n in budget.trainable.items():
        size = budget.stage_parameters.get(group)
        lines.append(f"{group:<10} {n:>12,} {'' if size is None else f'{size:,}':>14}")
    lines.append(
        f"{'backbone':<10} {budget.backbone_trainable:>12,} {sum(budget.stage_parameters.values()):>14,}"
    )
    if budget.rank is not None:
        lines.append(
            f"rank {budget.rank} (rank={budget.finetune['rank']}); finetune=svf on the same stages trains "
            f"{budget.svf_same_stages:,}"
        )
    elif budget.svf_same_stages is not None:
        lines.append(
            f"finetune=svf (every singular value) on the same stages trains {budget.svf_same_stages:,}"
        )
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m svfseg.finetune.budget",
        description="Trainable parameters per stage of the model train.py builds with these overrides.",
    )
    parser.add_argument(
        "overrides", nargs="*", help="train.py overrides, e.g. backbone=resnet50 finetune=lora"
    )
    parser.add_argument("--json", action="store_true", help="print the counts as JSON")
    args = parser.parse_args(argv)
    try:
        budget = config_budget(compose_train(args.overrides))
    except Exception as err:  # composition and option errors name the key; no traceback for a typo
        print(f"error: {err}", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps({**asdict(budget), "backbone_trainable": budget.backbone_trainable}, indent=1))
    else:
        print(format_budget(budget))
    return 0


if __name__ == "__main__":
    sys.exit(main())


__all__ = ["Budget", "compose_train", "config_budget", "format_budget", "model_budget", "trainable_per_group"]
