"""``svf``: Singular Value Fine-tuning (Sun et al., NeurIPS 2022) as a fine-tune strategy.

Conversion and training are separate choices:

* ``convert_stages``: which stages get their convs replaced by SVF layers (default: the trained stages).
  The SVF repo converts all five stages but trains only layer2-4. A converted
  layer whose factors are frozen computes U diag(s) V^T x, which is the original W x up to float
  rounding: the SVF core keeps the full rank (the SVF repo rounds the rank down to a multiple of 4,
  which makes its converted stem conv inexact). Converting frozen stages is therefore equivalent,
  only slower; ``convert_stages=[0, 1, 2, 3, 4]`` reproduces the SVF repo's module structure.
* ``stages``: whose factors train (Table 8: e.g. ``[3, 4]`` or ``[1, 2, 3, 4]``).
* ``train``: which factors train, a subset of u/s/v (Table 7); ``parametrization``: ``direct`` trains
  s itself (the SVF repo), ``exp`` trains s_delta with s = s0 * exp(s_delta) (s stays positive).
* ``train_bn``: also train the BN affine parameters of ``stages`` (Table 4, "S + BN"); BN statistics
  stay frozen (eval mode) as in every strategy but ``bn``.
* Variants from later work (docs/peft.md), each an option of the same layers: ``directions=top|bottom``
  with ``k`` trains only the k largest / smallest singular values of each conv (the rest stay in a frozen
  buffer; conf/finetune/svf_top.yaml, svf_bottom.yaml); ``parametrization=scale_shift`` trains
  s = relu(a * s0 + b) and ``residual_rank`` a low-rank update of the frozen directions' subspace
  (together with ``directions=top``: SALT, conf/finetune/salt.yaml).

Applying SVF to a backbone that already holds SVF layers is an error: one SVD per layer.
"""

from __future__ import annotations

from typing import Any

from svfseg.finetune.base import FinetuneStrategy, NamedParams
from svfseg.finetune.options import DEFAULT_BACKBONE_LR_MULT, DEFAULT_STAGES, parse_flag, parse_stages
from svfseg.finetune.selection import bn_affine
from svfseg.methods.base import FewShotModel
from svfseg.svf import SVFOptions, SVFSelectionError, apply_svf, svf_layers


class SVFStrategy(FinetuneStrategy):
    """Convert backbone convs to SVF layers and train their singular values (see the module docstring).

    Args:
        stages: stages whose SVF factors train; default layer2-4 (the paper's setting).
        train_bn: also train BN affine parameters of ``stages``.
        convert_stages: stages to convert; must contain ``stages``; default ``stages``.
        backbone_lr_mult: lr multiplier of the backbone groups (the SVF repo: 0.1).
        checkpointing: recompute the activations of layer2-4 (the stages backward passes through) in
            backward instead of keeping them: the paper reports ~16 GB per image for COCO 5-shot.
        svf_options: :class:`~svfseg.svf.options.SVFOptions` fields: ``train`` (factors that train,
            default ``["s"]``), ``parametrization`` (``direct`` | ``exp``), ``execution`` (``auto`` |
            ``three_op``), ``svd_dtype`` (``float64``, exact to fp32 rounding, or ``float32`` as the
            SVF repo), ``directions`` (``all`` | ``top`` | ``bottom``), ``k`` (count or fraction of
            each layer's rank for top / bottom), ``residual_rank`` (0, or the rank of the low-rank core
            update of the frozen directions).
    """

    name = "svf"

    def __init__(
        self,
        *,
        stages: Any = DEFAULT_STAGES,
        train_bn: bool = False,
        convert_stages: Any = None,
        backbone_lr_mult: float = DEFAULT_BACKBONE_LR_MULT,
        checkpointing: bool = False,
        **svf_options: Any,
    ) -> None:
        super().__init__(backbone_lr_mult=backbone_lr_mult, checkpointing=checkpointing)
        self.stages = parse_stages(stages, "stages")
        self.svf = SVFOptions.of(**svf_options)
        if not self.svf.train:
            raise ValueError(
                f"train={svf_options.get('train')!r} is invalid: use a non-empty subset of ['u', 's', 'v'] "
                "(e.g. ['s']); finetune=freeze trains no backbone factor"
            )
        self.train_bn = parse_flag(train_bn, "train_bn")
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

    @classmethod
    def option_names(cls) -> tuple[str, ...]:
        return (*super().option_names(), *SVFOptions.names())

    @property
    def is_variant(self) -> bool:
        """True for the variants that train other tensors than the paper's s (top / bottom, scale_shift,
        residual), whose budgets are compared with plain SVF's."""
        opts = self.svf
        return opts.directions != "all" or opts.parametrization == "scale_shift" or opts.residual_rank > 0

    def options(self) -> dict[str, Any]:
        return {
            "stages": list(self.stages),
            "train_bn": self.train_bn,
            "convert_stages": list(self.convert_stages),
            **self.svf.to_dict(),
            **super().options(),
        }

    def prepare(self, model: FewShotModel, *, from_checkpoint: bool = False) -> None:
        existing = [name for name, _ in svf_layers(model.backbone)]
        if existing:
            raise SVFSelectionError(
                f"finetune=svf: the backbone already holds {len(existing)} SVF layers (e.g. {existing[0]}); "
                "SVF converts each conv once. Apply the strategy to a freshly built model."
            )
        apply_svf(
            model.backbone,
            self.svf,
            include=[f"{stage}.*" for stage in self.convert_stages],
            from_shapes=from_checkpoint,
            # timm CNN backbones (EfficientNet-Lite, MobileNets): their depthwise convs are converted too
            depthwise=bool(getattr(model.backbone, "svf_depthwise", False)),
        )

    def select(self, model: FewShotModel) -> NamedParams:
        selected: NamedParams = []
        for name, layer in svf_layers(model.backbone):
            if name.split(".", 1)[0] in self.stages:
                selected += [(f"{name}.{t}", p) for t, p in layer.svf_tensors() if t[0] in self.svf.train]
        if self.train_bn:
            selected += bn_affine(model.backbone, self.stages)
        return selected
