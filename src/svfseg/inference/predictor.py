"""Segment new images from k annotated examples with a trained svfseg checkpoint.

Preprocessing is evaluation's own (``EvalTransform``: long side to the run's eval size, pasted on a
square canvas, ImageNet normalisation) and so is the way back to the original size
(``mask_at_original_size``; for large queries ``binary_mask_at_original_size``, the same mask computed in
bands of rows), so a prediction equals what evaluation computes for the same episode.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from svfseg.data.transforms import EvalTransform
from svfseg.finetune.adapters import merge_lora
from svfseg.inference.inputs import PredictInputError, Support, read_query
from svfseg.lightning.checkpointing import load_checkpoint_dict, resolve_checkpoint
from svfseg.lightning.module import FewShotSegModule
from svfseg.metrics.original_size import binary_mask_at_original_size
from svfseg.svf import merge_svf

log = logging.getLogger(__name__)

# Methods whose k-shot path is learned for exactly the training shot (BAM's shot reweighting).
FIXED_SHOT_METHODS = frozenset({"bam"})


def pick_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError(f"device={name} asked for, but no CUDA device is visible; use device=cpu")
    return torch.device(name)


@dataclass(frozen=True)
class Prediction:
    """One query's binary mask (uint8, 1 = foreground) at the query's original size."""

    path: Path
    image: np.ndarray
    mask: np.ndarray

    @property
    def foreground_fraction(self) -> float:
        return float(self.mask.mean())


class Predictor:
    """A trained few-shot model ready to segment queries from supports (eval mode, no gradients).

    Args:
        module: a loaded :class:`FewShotSegModule` (``Predictor.from_checkpoint`` loads one).
        device: ``cpu``, ``cuda``, ``cuda:1``, or ``auto``.
        merge: replace the SVF layers by plain convs with W = U diag(s) V^T and fold LoRA / DoRA
            adapters into their layers (same outputs, faster).
    """

    def __init__(self, module: FewShotSegModule, *, device: str = "auto", merge: bool = True) -> None:
        config = module.run_config or {}
        size = (config.get("dataset") or {}).get("eval_size")
        if size is None:
            raise ValueError(
                "the checkpoint has no saved run config with dataset.eval_size; re-save it with train.py"
            )
        self.run_config = config  # the training run's resolved config (plain containers)
        self.spec = module.spec
        self.identity = module.spec.identity()
        self.device = pick_device(device)
        self.model = module.model.eval().to(self.device)
        self.merged = merge_svf(self.model) if merge else []
        self.merged_lora = merge_lora(self.model) if merge else []
        self.transform = EvalTransform(int(size))
        self.checkpoint: Path | None = None  # set by from_checkpoint
        self._warned_shot = False

    @classmethod
    def from_checkpoint(cls, path: str | Path, *, device: str = "auto", merge: bool = True) -> Predictor:
        ckpt = resolve_checkpoint(path)
        load_checkpoint_dict(ckpt)  # refuses files that are not svfseg checkpoints, naming the file
        module = FewShotSegModule.load_from_checkpoint(
            ckpt, map_location="cpu", weights_only=True, strict=True, load_pretrained=False
        )
        predictor = cls(module, device=device, merge=merge)
        predictor.checkpoint = ckpt
        return predictor

    @property
    def trained_shot(self) -> int:
        return int(self.spec.fold.shot)

    def check_shot(self, k: int) -> str | None:
        """Refuse a k the method cannot use; describe what happens when k differs from the training shot."""
        method = self.spec.method_name
        if k == self.trained_shot:
            return None
        if method in FIXED_SHOT_METHODS:
            raise PredictInputError(
                f"{method} was trained with shot={self.trained_shot} and its shot reweighting is learned for "
                f"exactly that many supports, but {k} were given; pass {self.trained_shot} supports or use "
                f"a checkpoint trained with shot={k}"
            )
        note = (
            f"the checkpoint was trained with shot={self.trained_shot} and {k} supports were given: "
            f"{method} averages the {k} support prototypes and prior masks, as for any shot"
        )
        if not self._warned_shot:
            log.warning(note)
            self._warned_shot = True
        return note

    def support_tensors(self, supports: Sequence[Support]) -> tuple[Tensor, Tensor]:
        """(K, 3, S, S) images and (K, S, S) masks on the device, through evaluation's transform."""
        images, masks = [], []
        for s in supports:
            t = self.transform(s.image, s.mask)
            images.append(t.image)
            masks.append(t.mask)
        return torch.stack(images).to(self.device), torch.stack(masks).to(self.device)

    @torch.inference_mode()
    def logits(self, query_img: Tensor, support_img: Tensor, support_mask: Tensor) -> Tensor:
        """(B, 2, S, S) scores of B query canvases against one set of K supports."""
        b = query_img.shape[0]
        out = self.model(
            query_img=query_img.to(self.device),
            support_img=support_img.expand(b, *support_img.shape).contiguous(),
            support_mask=support_mask.expand(b, *support_mask.shape).contiguous(),
            query_mask=None,
        )
        return out.logits

    def predict(
        self, supports: Sequence[Support], queries: Sequence[Path], *, batch_size: int = 4
    ) -> Iterator[Prediction]:
        """Masks of ``queries`` (read in batches of ``batch_size``), in order."""
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.check_shot(len(supports))
        support_img, support_mask = self.support_tensors(supports)
        for start in range(0, len(queries), batch_size):
            paths = list(queries[start : start + batch_size])
            images = [read_query(p) for p in paths]
            canvases = torch.stack(
                [self.transform(im, np.zeros(im.shape[:2], np.uint8)).image for im in images]
            )
            scores = self.logits(canvases, support_img, support_mask)
            for path, image, score in zip(paths, images, scores, strict=True):
                mask = binary_mask_at_original_size(score, image.shape[0], image.shape[1])
                yield Prediction(path, image, mask)

    def describe(self) -> dict[str, Any]:
        """The run identity and settings a predictions record carries."""
        return {
            "checkpoint": str(self.checkpoint) if self.checkpoint is not None else None,
            "run": dict(self.identity),
            "trained_shot": self.trained_shot,
            "eval_size": self.transform.size,
            "merged_svf_layers": len(self.merged),
            "merged_lora_layers": len(self.merged_lora),
            "device": str(self.device),
        }
