"""Test-time adaptation on the support (``eval.py tta.steps=T tta.params=s|lora``, docs/tta.md).

For each test episode a few parameters of the backbone are tuned for ``steps`` plain SGD steps on the
episode's own support, used as a pseudo-query; then the query is predicted and the parameters are put
back bit for bit before the next episode. Why each choice:

* A **working copy** of the model is tuned, never the loaded checkpoint's modules: the checkpoint's
  tensors cannot change, and LoRA adapters can be injected without renaming the checkpoint's state dict.
* **One episode at a time** (a batch of 1) and a fixed pseudo-query order: the result of an episode does
  not depend on the evaluation batch, the episode order or the number of processes.
* **Eval mode throughout**: dropout off and BN statistics frozen, so the steps are deterministic (no
  random state differs between ranks) and only the chosen parameters move.
* **Pseudo-query rule**: step t uses support shot ``t mod K`` as the query, against all K shots as the
  support (itself included). Every method sees exactly the K supports it was built for (BAM's shot
  weighting needs K), 1-shot has no other shot, and a step costs one K-shot forward and backward.
* Plain SGD (no momentum, no weight decay) has no optimizer state to carry between episodes.
"""

from __future__ import annotations

import copy
import logging
import math
import numbers
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from svfseg.data.batch import EpisodeBatch
from svfseg.finetune.options import DEFAULT_STAGES, parse_stages
from svfseg.methods.base import FewShotModel

log = logging.getLogger(__name__)

PARAMS = ("s", "lora")
PSEUDO_QUERY = "step t: support shot t mod K as the query, all K shots as the support"
LORA_INIT_SEED = 0  # lora_A's init: the same on every process, device and run


def _problem(key: str, value: Any, fix: str) -> ValueError:
    return ValueError(f"tta.{key}={value!r} is invalid: {fix}")


@dataclass(frozen=True)
class TTAOptions:
    """Validated ``tta.*`` options of eval.py; ``steps=0`` (the default) switches TTA off."""

    steps: int = 0
    params: str = "s"
    lr: float = 0.01
    rank: int = 4
    stages: tuple[str, ...] = DEFAULT_STAGES

    @property
    def enabled(self) -> bool:
        return self.steps > 0

    @classmethod
    def from_config(cls, cfg: Mapping[str, Any] | None) -> TTAOptions:
        """Parse ``cfg.tta``; raises one ValueError listing every bad key, its value and the fix."""
        cfg = dict(cfg or {})
        problems: list[str] = []
        unknown = sorted(set(cfg) - set(cls.__dataclass_fields__))
        if unknown:
            problems.append(
                f"tta has unknown keys {unknown}: the options are {sorted(cls.__dataclass_fields__)} "
                "(docs/tta.md)"
            )
        defaults = cls()

        def take(key: str, check: Any) -> Any:
            value = cfg.get(key, getattr(defaults, key))
            try:
                return check(value)
            except ValueError as err:
                problems.append(str(err))
                return getattr(defaults, key)

        out = cls(
            steps=take("steps", _steps),
            params=take("params", _params),
            lr=take("lr", _lr),
            rank=take("rank", _rank),
            stages=take("stages", _stages),
        )
        if problems:
            raise ValueError("\n".join(problems))
        return out

    def to_dict(self) -> dict[str, Any]:
        """The setting as metrics.json records it."""
        out: dict[str, Any] = {
            "steps": self.steps,
            "params": self.params,
            "lr": self.lr,
            "stages": list(self.stages),
            "optimizer": "sgd (no momentum, no weight decay)",
            "pseudo_query": PSEUDO_QUERY,
        }
        if self.params == "lora":
            out["rank"] = self.rank
            out["alpha"] = float(self.rank)
        return out


def _steps(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise _problem("steps", value, "use an integer >= 0 (0 switches test-time adaptation off)")
    return value


def _params(value: Any) -> str:
    if value not in PARAMS:
        raise _problem(
            "params",
            value,
            "use s (the singular values of an SVF checkpoint) or lora (fresh LoRA adapters, any checkpoint)",
        )
    return str(value)


def _lr(value: Any) -> float:
    if (
        isinstance(value, bool)
        or not isinstance(value, numbers.Real)
        or not math.isfinite(value)
        or value <= 0
    ):
        raise _problem("lr", value, "use a positive number, the SGD learning rate of the steps (e.g. 0.01)")
    return float(value)


def _rank(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise _problem("rank", value, "use an integer >= 1, the rank of the LoRA adapters (e.g. 4)")
    return value


def _stages(value: Any) -> tuple[str, ...]:
    try:
        return parse_stages(value, "tta.stages")
    except ValueError as err:
        raise ValueError(f"{err} (e.g. tta.stages=[layer3,layer4])") from err


def svf_stages_in_state_dict(keys: Iterable[str]) -> set[str]:
    """Backbone stages holding SVF layers, read from a checkpoint's state-dict keys (their ``s0`` buffer)."""
    prefix = "model.backbone."
    return {k[len(prefix) :].split(".", 1)[0] for k in keys if k.startswith(prefix) and k.endswith(".s0")}


def check_checkpoint(options: TTAOptions, state_keys: Iterable[str], finetune: str | None) -> None:
    """Refuse ``tta.params=s`` on a checkpoint whose ``tta.stages`` hold no SVF layer, before loading it."""
    if not options.enabled or options.params != "s":
        return
    found = svf_stages_in_state_dict(state_keys)
    missing = [s for s in options.stages if s not in found]
    if missing:
        raise ValueError(
            f"tta.params=s needs SVF layers in tta.stages={list(options.stages)}, but the checkpoint "
            f"(finetune={finetune}) has none in {missing} (SVF layers in: {sorted(found) or 'no stage'}). "
            "Use tta.params=lora (fresh LoRA adapters, any checkpoint)"
            + (f" or tta.stages={sorted(found)}" if found else "")
        )


class SupportAdapter:
    """A working copy of ``model`` whose chosen parameters are tuned on each episode's support.

    Built once per test run (:meth:`predict` then handles any number of episodes); ``model`` itself is
    never modified.
    """

    def __init__(self, model: FewShotModel, options: TTAOptions) -> None:
        if not options.enabled:
            raise ValueError("SupportAdapter needs tta.steps >= 1")
        self.options = options
        with torch.inference_mode(False), torch.no_grad():
            work = copy.deepcopy(model)
            for p in work.parameters():
                p.requires_grad_(False)
            named = self._prepare_s(work) if options.params == "s" else self._prepare_lora(work)
            for _, p in named:
                p.requires_grad_(True)
            work.backbone_trainable = True  # gradients reach the backbone; the head and BN stay frozen
            work.eval()
            self.initial = [p.detach().clone() for _, p in named]  # not inference tensors
        self.model = work
        self.names = [n for n, _ in named]
        self.params = [p for _, p in named]
        log.info(
            "test-time adaptation: %d steps of SGD lr %g on %s parameters (%s tensors, %s)",
            options.steps,
            options.lr,
            f"{sum(p.numel() for p in self.params):,}",
            len(self.params),
            options.params,
        )

    # ------------------------------------------------------------------ selection
    def _prepare_s(self, work: FewShotModel) -> list[tuple[str, nn.Parameter]]:
        from svfseg.svf import svf_layers

        named = [
            (f"{name}.{t}", p)
            for name, layer in svf_layers(work.backbone)
            if name.split(".", 1)[0] in self.options.stages
            for t, p in layer.core_tensors()
        ]
        if not named:
            raise ValueError(
                f"tta.params=s: the backbone has no SVF layer in tta.stages={list(self.options.stages)}; "
                "use tta.params=lora (fresh LoRA adapters, any checkpoint)"
            )
        return named

    def _prepare_lora(self, work: FewShotModel) -> list[tuple[str, nn.Parameter]]:
        """Merge the checkpoint's SVF / LoRA layers into plain layers, then inject fresh adapters."""
        from svfseg.finetune.adapters import adapter_parameters, inject_lora, lora_layers, merge_lora
        from svfseg.finetune.lora import lora_targets
        from svfseg.svf import merge_svf, svf_layers

        backbone = work.backbone
        if next(svf_layers(backbone), None) is not None:
            merge_svf(backbone)  # float64 product: the SVF forward up to float rounding
        if next(lora_layers(backbone), None) is not None:
            merge_lora(backbone)
        try:
            names = [n for n, _ in lora_targets(backbone, self.options.stages, "all")]
        except ValueError as err:
            raise ValueError(
                f"tta.params=lora: {err}. Choose tta.stages whose layers are dense convs or Linears"
            ) from err
        rank = self.options.rank
        inject_lora(backbone, names, rank=rank, alpha=float(rank), dropout=0.0, use_dora=False)
        generator = torch.Generator().manual_seed(LORA_INIT_SEED)
        named: list[tuple[str, nn.Parameter]] = []
        for name, layer in lora_layers(backbone):
            for n, p in adapter_parameters(layer):
                if "lora_A" in n:  # peft's kaiming-uniform bound, drawn on the CPU from a fixed seed
                    bound = 1.0 / math.sqrt(p[0].numel())
                    draw = (torch.rand(p.shape, generator=generator, dtype=torch.float64) * 2 - 1) * bound
                    p.copy_(draw.to(p.dtype))
                named.append((f"{name}.{n}", p))
        return named

    # ------------------------------------------------------------------ per episode
    def _adapt(self, support_img: Tensor, support_mask: Tensor, class_idx: Tensor | None) -> None:
        """``steps`` SGD steps on the support as pseudo-query (see the module docstring)."""
        optimizer = torch.optim.SGD(self.params, lr=self.options.lr, momentum=0.0, weight_decay=0.0)
        shots = support_img.shape[1]
        for step in range(self.options.steps):
            j = step % shots
            out = self.model(
                query_img=support_img[:, j],
                support_img=support_img,
                support_mask=support_mask,
                query_mask=support_mask[:, j],
                class_idx=class_idx,
            )
            assert out.loss is not None
            if not bool(torch.isfinite(out.loss)):  # e.g. a support without labelled pixels: stop here
                break
            optimizer.zero_grad(set_to_none=True)
            out.loss.backward()
            optimizer.step()

    def restore(self) -> None:
        """Put every tuned tensor back to its value before the episode, bit for bit."""
        with torch.no_grad():
            for p, p0 in zip(self.params, self.initial, strict=True):
                p.copy_(p0)
                p.grad = None

    def predict(self, batch: EpisodeBatch) -> Tensor:
        """Logits (B, 2, H, W) of the batch's queries, each episode adapted on its own support alone.

        Reads only the supports and the query image (never the query's label).
        """
        logits = []
        with torch.inference_mode(False):
            for i in range(batch["query_img"].shape[0]):
                # fresh tensors: not inference tensors, and the same memory layout at any batch size
                support_img = batch["support_img"][i : i + 1].clone()
                support_mask = batch["support_mask"][i : i + 1].clone()
                query_img = batch["query_img"][i : i + 1].clone()
                class_idx = batch["class_idx"][i : i + 1].clone() if "class_idx" in batch else None
                try:
                    with torch.enable_grad():
                        self._adapt(support_img, support_mask, class_idx)
                    with torch.no_grad():
                        out = self.model(
                            query_img=query_img,
                            support_img=support_img,
                            support_mask=support_mask,
                            class_idx=class_idx,
                        )
                    logits.append(out.logits)
                finally:
                    self.restore()
        return torch.cat(logits)
