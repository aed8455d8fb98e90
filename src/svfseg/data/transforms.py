"""Image/label transforms of the BAM/SVF repos, on albumentations 2.x.

Training: random scale -> rotate (p=0.5) -> 5x5 Gaussian blur (p=0.5) -> horizontal flip (p=0.5) -> pad and
foreground-keeping random crop -> ImageNet normalisation. Every random draw comes from a generator that the
caller seeds per sample, so a sample is a pure function of its seed (no global RNG, no worker dependence).

Evaluation: the long side is resized to ``eval_size`` and both sides are floored to a multiple of 8 (as their
``find_new_hw`` does, so 473 becomes 472), then pasted top-left on a square canvas (image 0 before
normalisation, label 255).

Where their op is not matched by an albumentations built-in, a small custom transform does it:
* ``RandScale``: one factor for both axes via ``cv2.resize(fx=s, fy=s)`` (built-in ``RandomScale`` truncates
  the output size instead of rounding).
* ``ReferenceBlur``: ``cv2.GaussianBlur(img, (5, 5), 0)``, cv2's fixed 5-tap kernel (the built-in
  ``GaussianBlur`` cannot take sigma 0 and builds a different kernel).
* ``PadCropKeepForeground``: pad split ``pad // 2`` top/left, then a random crop redrawn up to 31 more times
  while it keeps under 85 % of the ``label == 1`` pixels.
The built-in ``Rotate`` turns about the pixel centre ``((w-1)/2, (h-1)/2)``; theirs uses ``(w/2, h/2)``.
This is a half-pixel shift applied to image and label alike, so alignment is unaffected.
"""

from __future__ import annotations

import os
import random
from dataclasses import dataclass
from typing import Any

import cv2
import numpy as np
import torch
from torch import Tensor

# Research runs are often offline; albumentations would otherwise query PyPI on import.
os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")
import albumentations as A
from albumentations.core.transforms_interface import DualTransform, ImageOnlyTransform

from svfseg.labels import IGNORE_INDEX

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
MEAN_255 = tuple(m * 255.0 for m in IMAGENET_MEAN)
STD_255 = tuple(s * 255.0 for s in IMAGENET_STD)

# Scale ranges of the BAM/SVF repos' configs (episodes; BAM's stage-1 base learner).
SCALE_RANGES: dict[str, tuple[float, float]] = {
    "pascal": (0.9, 1.1),
    "synthetic": (0.9, 1.1),
    "folder": (0.9, 1.1),
    "coco": (0.8, 1.25),
    "base": (0.5, 2.0),
}
FOREGROUND_KEEP = 0.85
CROP_RETRIES = 31


def _check_scale_range(scale_range: tuple[float, float]) -> tuple[float, float]:
    lo, hi = (float(v) for v in scale_range)
    if not 0 < lo <= hi:
        raise ValueError(f"scale range {scale_range!r} is invalid: need 0 < min <= max, e.g. (0.9, 1.1)")
    return lo, hi


class RandScale(DualTransform):
    """One uniform factor in ``[lo, hi]`` for both axes; image bilinear, masks nearest (BAM/SVF RandScale)."""

    def __init__(self, scale_range: tuple[float, float], p: float = 1.0) -> None:
        super().__init__(p=p)
        self.scale_range = _check_scale_range(scale_range)

    def get_params(self) -> dict[str, Any]:
        lo, hi = self.scale_range
        return {"scale": lo + (hi - lo) * self.py_random.random()}

    def apply(self, img: np.ndarray, scale: float = 1.0, **params: Any) -> np.ndarray:
        return cv2.resize(img, None, fx=scale, fy=scale, interpolation=cv2.INTER_LINEAR)

    def apply_to_mask(self, mask: np.ndarray, scale: float = 1.0, **params: Any) -> np.ndarray:
        return cv2.resize(mask, None, fx=scale, fy=scale, interpolation=cv2.INTER_NEAREST)

    def get_transform_init_args_names(self) -> tuple[str, ...]:
        return ("scale_range",)


class ReferenceBlur(ImageOnlyTransform):
    """``cv2.GaussianBlur(img, (5, 5), 0)``: the BAM/SVF repos' blur, cv2's built-in 5-tap kernel."""

    def __init__(self, p: float = 0.5) -> None:
        super().__init__(p=p)

    def apply(self, img: np.ndarray, **params: Any) -> np.ndarray:
        return cv2.GaussianBlur(img, (5, 5), 0)

    def get_transform_init_args_names(self) -> tuple[str, ...]:
        return ()


def _foreground_in_window(integral: np.ndarray, top: int, left: int, size: int) -> int:
    """Count of foreground pixels inside a ``size x size`` window, from a summed-area table."""
    b, r = top + size, left + size
    return int(integral[b, r] - integral[top, r] - integral[b, left] + integral[top, left])


class PadCropKeepForeground(DualTransform):
    """Pad to at least ``size`` (split ``pad // 2`` top/left), then a random ``size x size`` crop.

    The crop is redrawn up to ``retries`` more times while it keeps fewer than ``keep`` of the pre-crop
    ``mask == 1`` pixels; the last draw is used if none qualifies (BAM/SVF ``Crop(..., 'rand')``). With
    ``keep=None`` the first draw is used, for multi-class labels where "foreground" is not one value.
    """

    def __init__(
        self,
        size: int,
        fill: tuple[float, ...] = MEAN_255,
        fill_mask: int = IGNORE_INDEX,
        keep: float | None = FOREGROUND_KEEP,
        retries: int = CROP_RETRIES,
        p: float = 1.0,
    ) -> None:
        super().__init__(p=p)
        if int(size) < 1:
            raise ValueError(f"crop size {size!r} must be a positive integer")
        self.size = int(size)
        self.fill = tuple(float(v) for v in fill)
        self.fill_mask = int(fill_mask)
        self.keep = keep
        self.retries = int(retries)

    def get_params_dependent_on_data(self, params: dict[str, Any], data: dict[str, Any]) -> dict[str, Any]:
        h, w = params["shape"][:2]
        pad_h, pad_w = max(self.size - h, 0), max(self.size - w, 0)
        pads = (pad_h // 2, pad_h - pad_h // 2, pad_w // 2, pad_w - pad_w // 2)
        ph, pw = h + pad_h, w + pad_w
        top = self.py_random.randint(0, ph - self.size)
        left = self.py_random.randint(0, pw - self.size)
        mask = data.get("mask")
        if self.keep is not None and mask is not None:
            fg = np.zeros((ph + 1, pw + 1), dtype=np.int64)
            fg[1 + pads[0] : 1 + pads[0] + h, 1 + pads[2] : 1 + pads[2] + w] = mask == 1
            integral = fg.cumsum(0).cumsum(1)
            total = int(integral[-1, -1])
            tries = 0
            while (
                _foreground_in_window(integral, top, left, self.size) < self.keep * total
                and tries < self.retries
            ):
                top = self.py_random.randint(0, ph - self.size)
                left = self.py_random.randint(0, pw - self.size)
                tries += 1
        return {"pads": pads, "top": top, "left": left}

    def _pad_crop(
        self, arr: np.ndarray, pads: tuple[int, int, int, int], top: int, left: int, fill: Any
    ) -> np.ndarray:
        if any(pads):
            arr = cv2.copyMakeBorder(arr, *pads, cv2.BORDER_CONSTANT, value=fill)
        return np.ascontiguousarray(arr[top : top + self.size, left : left + self.size])

    def apply(
        self,
        img: np.ndarray,
        pads: tuple[int, int, int, int] = (0, 0, 0, 0),
        top: int = 0,
        left: int = 0,
        **params: Any,
    ) -> np.ndarray:
        return self._pad_crop(img, pads, top, left, self.fill)

    def apply_to_mask(
        self,
        mask: np.ndarray,
        pads: tuple[int, int, int, int] = (0, 0, 0, 0),
        top: int = 0,
        left: int = 0,
        **params: Any,
    ) -> np.ndarray:
        return self._pad_crop(mask, pads, top, left, self.fill_mask)

    def get_transform_init_args_names(self) -> tuple[str, ...]:
        return ("size", "fill", "fill_mask", "keep", "retries")


def normalize_to_tensor(image: np.ndarray) -> Tensor:
    """HWC 0-255 RGB -> CHW float tensor normalised with ImageNet mean/std (scaled to 0-255)."""
    arr = (image.astype(np.float32) - np.asarray(MEAN_255, np.float32)) / np.asarray(STD_255, np.float32)
    return torch.from_numpy(np.ascontiguousarray(arr.transpose(2, 0, 1)))


def mask_to_tensor(mask: np.ndarray) -> Tensor:
    return torch.from_numpy(np.ascontiguousarray(mask)).long()


def _check_pair(image: np.ndarray, mask: np.ndarray) -> None:
    if image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(f"expected an RGB image of shape (H, W, 3), got {image.shape}")
    if mask.shape != image.shape[:2]:
        raise ValueError(f"label shape {mask.shape} does not match image shape {image.shape[:2]}")


def _python_random(ss: np.random.SeedSequence) -> random.Random:
    return random.Random(int.from_bytes(ss.generate_state(4, np.uint32).tobytes(), "little"))


@dataclass(frozen=True)
class Transformed:
    """Output of a transform: normalised CHW image, long label(s)."""

    image: Tensor
    mask: Tensor
    extra: Tensor | None = None


class TrainTransform:
    """The BAM/SVF repos' training augmentation, seeded per call.

    One shared numpy/python generator pair is installed into the whole pipeline for each call, so the
    transforms draw from one stream (``Compose.set_random_seed`` would give each transform an identical,
    correlated stream: rotate, blur and flip would then fire together).
    """

    def __init__(
        self,
        crop_size: int,
        scale_range: tuple[float, float] = SCALE_RANGES["pascal"],
        *,
        rotate_limit: float = 10.0,
        foreground_keep: float | None = FOREGROUND_KEEP,
    ) -> None:
        if int(crop_size) < 1:
            raise ValueError(
                f"train crop size {crop_size!r} must be a positive integer (473 Pascal, 641 COCO)"
            )
        self.crop_size = int(crop_size)
        self.scale_range = _check_scale_range(scale_range)
        self.pipeline = A.Compose(
            [
                RandScale(self.scale_range, p=1.0),
                A.Rotate(
                    limit=(-rotate_limit, rotate_limit),
                    interpolation=cv2.INTER_LINEAR,
                    mask_interpolation=cv2.INTER_NEAREST,
                    border_mode=cv2.BORDER_CONSTANT,
                    fill=MEAN_255,
                    fill_mask=IGNORE_INDEX,
                    p=0.5,
                ),
                ReferenceBlur(p=0.5),
                A.HorizontalFlip(p=0.5),
                PadCropKeepForeground(self.crop_size, keep=foreground_keep),
            ],
            additional_targets={"extra": "mask"},
        )

    def __call__(
        self,
        image: np.ndarray,
        mask: np.ndarray,
        seed: np.random.SeedSequence,
        extra: np.ndarray | None = None,
    ) -> Transformed:
        """Augment ``image`` (HWC uint8 RGB) and ``mask`` (HW uint8), plus an optional second label ``extra``."""
        _check_pair(image, mask)
        self.pipeline.set_random_state(np.random.default_rng(seed), _python_random(seed))
        data: dict[str, np.ndarray] = {"image": image.astype(np.float32), "mask": mask}
        if extra is not None:
            if extra.shape != mask.shape:
                raise ValueError(f"second label shape {extra.shape} does not match label shape {mask.shape}")
            data["extra"] = extra
        out = self.pipeline(**data)
        return Transformed(
            normalize_to_tensor(out["image"]),
            mask_to_tensor(out["mask"]),
            mask_to_tensor(out["extra"]) if extra is not None else None,
        )


def eval_resize_hw(height: int, width: int, size: int) -> tuple[int, int]:
    """BAM/SVF ``find_new_hw``: long side -> ``size``, short side truncated, both floored to a multiple of 8.

    Sides are kept at least 8 so that extremely thin images do not collapse to zero.
    """
    if height >= width:
        new_h, new_w = size, int(width * (size / height))
    else:
        new_h, new_w = int(height * (size / width)), size
    return max(8, new_h // 8 * 8), max(8, new_w // 8 * 8)


class EvalTransform:
    """Deterministic evaluation resize: long side to ``size`` (floored to x8), pasted top-left on a square canvas."""

    def __init__(self, size: int) -> None:
        if int(size) < 8:
            raise ValueError(f"eval size {size!r} must be an integer >= 8 (473 Pascal, 641 COCO)")
        self.size = int(size)

    def __call__(self, image: np.ndarray, mask: np.ndarray, extra: np.ndarray | None = None) -> Transformed:
        _check_pair(image, mask)
        new_h, new_w = eval_resize_hw(mask.shape[0], mask.shape[1], self.size)
        canvas = np.zeros((self.size, self.size, 3), np.float32)
        canvas[:new_h, :new_w] = cv2.resize(
            image.astype(np.float32), (new_w, new_h), interpolation=cv2.INTER_LINEAR
        )
        return Transformed(
            normalize_to_tensor(canvas),
            mask_to_tensor(self._label(mask, new_h, new_w)),
            mask_to_tensor(self._label(extra, new_h, new_w)) if extra is not None else None,
        )

    def _label(self, mask: np.ndarray, new_h: int, new_w: int) -> np.ndarray:
        canvas = np.full((self.size, self.size), IGNORE_INDEX, np.uint8)
        canvas[:new_h, :new_w] = cv2.resize(mask, (new_w, new_h), interpolation=cv2.INTER_NEAREST)
        return canvas


def pad_square(label: np.ndarray, fill: int = IGNORE_INDEX) -> np.ndarray:
    """Pad a label bottom/right with ``fill`` to ``L x L``, ``L = max(H, W)`` (BAM/SVF ``ori_resize``)."""
    h, w = label.shape
    side = max(h, w)
    out = np.full((side, side), fill, dtype=label.dtype)
    out[:h, :w] = label
    return out
