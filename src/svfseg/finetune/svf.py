"""``svf``: Singular Value Fine-tuning (Sun et al., NeurIPS 2022) as a fine-tune strategy.

Conversion and training are separate choices:

* ``convert_stages``: which stages get their convs replaced by SVF layers (default: the trained stages).
  The reference converts all five stages but trains only layer2-4. A converted
  layer whose factors are frozen computes U diag(s) V^T x, which is the original W x up to float
  rounding: the SVF core keeps the full rank (the reference rounds the rank down to a multiple of 4,
  which makes its converted stem conv inexact). Converting frozen stages is therefore equivalent,
  only slower; ``convert_stages=[0, 1, 2, 3, 4]`` reproduces the reference's module structure.
* ``stages``: whose factors train (Table 8: e.g. ``[3, 4]`` or ``[1, 2, 3, 4]``).
* ``train``: which factors train, a subset of u/s/v (Table 7); ``parametrization``: ``direct`` trains
  s itself (the reference), ``exp`` trains s_delta with s = s0 * exp(s_delta) (s stays positive).
* ``train_bn``: also train the BN affine parameters of ``stages`` (Table 4, "S + BN"); BN statistics
  stay frozen (eval mode) as in every strategy but ``bn``.

Applying SVF to a backbone that already holds SVF layers is an error: one SVD per layer.
"""

from __future__ import annotations

from typing import Any

import torch

from svfseg.finetune.base import FinetuneStrategy, NamedParams
from svfseg.finetune.options import (
    DEFAULT_BACKBONE_LR_MULT,
    EXECUTIONS,
    PARAMETRIZATIONS,
    SVD_DTYPES,
    parse_choice,
    parse_factors,
    parse_flag,
    parse_stages,
)
from svfseg.finetune.selection import bn_affine
from svfseg.models.base import FewShotModel
from svfseg.svf import SVFSelectionError, apply_svf, svf_layers


class SVFStrategy(FinetuneStrategy):
    """Convert backbone convs to SVF layers and train their singular values (see the module docstring).

    Args:
        stages: stages whose SVF factors train; default layer2-4 (the paper's setting).
        train: factors to train, subset of ``u``, ``s``, ``v``; default ``["s"]``.
        parametrization: ``direct`` | ``exp``.
        train_bn: also train BN affine parameters of ``stages``.
        convert_stages: stages to convert; must contain ``stages``; default ``stages``.
        execution: SVF layer execution, ``auto`` | ``three_op`` | ``materialize``.
        svd_dtype: ``float64`` (default, exact to fp32 rounding) or ``float32`` (as the reference).
        backbone_lr_mult: lr multiplier of the backbone groups (reference: 0.1).
        checkpointing: recompute the activations of layer2-4 (the stages backward passes through) in
            backward instead of keeping them: the paper reports ~16 GB per image for COCO 5-shot.
    """

    name = "svf"

    def __init__(
        self,
        *,
        stages: Any = ("layer2", "layer3", "layer4"),
        train: Any = ("s",),
        parametrization: str = "direct",
        train_bn: bool = False,
        convert_stages: Any = None,
        execution: str = "auto",
        svd_dtype: str = "float64",
        backbone_lr_mult: float = DEFAULT_BACKBONE_LR_MULT,
        checkpointing: bool = False,
    ) -> None:
        super().__init__(backbone_lr_mult=backbone_lr_mult, checkpointing=checkpointing)
        self.stages = parse_stages(stages, "stages")
        self.train = parse_factors(train, "train")
        self.parametrization = parse_choice(parametrization, "parametrization", PARAMETRIZATIONS)
        self.train_bn = parse_flag(train_bn, "train_bn")
        self.execution = parse_choice(execution, "execution", EXECUTIONS)
        self.svd_dtype = parse_choice(svd_dtype, "svd_dtype", SVD_DTYPES)
        if convert_stages is None:
            self.convert_stages = self.stages
        else:
            self.convert_stages = parse_stages(convert_stages, "convert_stages")
            untouched = [s for s in self.stages if s not in self.convert_stages]
            if untouched:
                raise ValueError(
                    f"convert_stages={list(self.convert_stages)} must contain every trained stage "
                    f"(stages={list(self.stages)}); add {untouched} or leave convert_stages unset"
                )

    def options(self) -> dict[str, Any]:
        return {
            "stages": list(self.stages),
            "train": list(self.train),
            "parametrization": self.parametrization,
            "train_bn": self.train_bn,
            "convert_stages": list(self.convert_stages),
            "execution": self.execution,
            "svd_dtype": self.svd_dtype,
            **super().options(),
        }

    def prepare(self, model: FewShotModel) -> None:
        existing = [name for name, _ in svf_layers(model.backbone)]
        if existing:
            raise SVFSelectionError(
                f"finetune=svf: the backbone already holds {len(existing)} SVF layers (e.g. {existing[0]}); "
                "SVF converts each conv once. Apply the strategy to a freshly built model."
            )
        apply_svf(
            model.backbone,
            train=self.train,
            parametrization=self.parametrization,
            include=[f"{stage}.*" for stage in self.convert_stages],
            svd_dtype=getattr(torch, self.svd_dtype),
            execution=self.execution,
        )

    def select(self, model: FewShotModel) -> NamedParams:
        selected: NamedParams = []
        for name, layer in svf_layers(model.backbone):
            if name.split(".", 1)[0] in self.stages:
                selected += [(f"{name}.{t}", p) for t, p in layer.svf_tensors() if t[0] in self.train]
        if self.train_bn:
            selected += bn_affine(model.backbone, self.stages)
        return selected
