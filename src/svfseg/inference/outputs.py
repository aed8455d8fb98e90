"""Writing predictions: a mask PNG and an overlay PNG per query, and ``predictions.json``."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from svfseg.files import atomic_write
from svfseg.inference.inputs import Support
from svfseg.inference.predictor import Prediction

MASK_VALUES = {"binary": 1, "255": 255}  # foreground value written in the mask PNGs
OVERLAY_COLOUR = np.array([255, 40, 40], np.uint8)  # RGB, mixed half and half with the image
OVERLAY_ROWS = 256  # rows tinted at a time


def output_names(paths: Sequence[Path]) -> list[str]:
    """A PNG file name per query: its stem, with ``-2``, ``-3`` ... where stems repeat (other folders)."""
    seen: dict[str, int] = {}
    names = []
    for p in paths:
        n = seen.get(p.stem, 0) + 1
        seen[p.stem] = n
        names.append(f"{p.stem}.png" if n == 1 else f"{p.stem}-{n}.png")
    return names


def overlay(image: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """The RGB image with the foreground tinted and its outline drawn.

    Integer arithmetic in bands of rows: the tint is ``(pixel + colour) / 2`` rounded half to even, what
    ``0.5 * pixel + 0.5 * colour`` in float gives, without a full-size float copy of the image.
    """
    out = image.copy()
    colour = OVERLAY_COLOUR.astype(np.uint16)
    for top in range(0, out.shape[0], OVERLAY_ROWS):
        band, fg = out[top : top + OVERLAY_ROWS], mask[top : top + OVERLAY_ROWS].astype(bool)
        total = band[fg].astype(np.uint16) + colour
        half = total >> 1
        band[fg] = (half + (total & half & 1)).astype(np.uint8)  # .5 rounds to the even neighbour
    contours, _ = cv2.findContours(_uint8(mask), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE)
    cv2.drawContours(out, contours, -1, (255, 255, 0), max(1, round(max(mask.shape) / 250)))
    return out


def _uint8(mask: np.ndarray) -> np.ndarray:
    return (
        mask if mask.dtype == np.uint8 and mask.flags.c_contiguous else np.ascontiguousarray(mask, np.uint8)
    )


def _encode_png(path: Path, array: np.ndarray) -> np.ndarray:
    """PNG bytes of an RGB or single-channel uint8 array (an RGB array is turned to BGR in place)."""
    data = cv2.cvtColor(array, cv2.COLOR_RGB2BGR, dst=array) if array.ndim == 3 else array
    ok, buf = cv2.imencode(".png", data)
    if not ok:
        raise OSError(f"could not encode {path} as PNG")
    return buf


def _write_bytes(path: Path, buf: np.ndarray) -> None:
    atomic_write(path, lambda tmp: tmp.write_bytes(memoryview(buf)))


class PredictionWriter:
    """Writes ``masks/<name>.png``, ``overlays/<name>.png`` and, at the end, ``predictions.json``."""

    def __init__(self, out_dir: str | Path, queries: Sequence[Path], *, mask_values: str = "binary") -> None:
        if mask_values not in MASK_VALUES:
            raise ValueError(f"mask_values={mask_values!r} is invalid: choose one of {list(MASK_VALUES)}")
        self.out_dir = Path(out_dir)
        self.mask_values = mask_values
        self.names = dict(zip(queries, output_names(queries), strict=True))
        self.records: list[dict[str, Any]] = []

    def write(self, prediction: Prediction) -> dict[str, Any]:
        name = self.names[prediction.path]
        mask_path = self.out_dir / "masks" / name
        overlay_path = self.out_dir / "overlays" / name
        # Both files are encoded before either is written: a failure (memory, say) leaves neither half-done.
        mask_png = _encode_png(mask_path, prediction.mask * np.uint8(MASK_VALUES[self.mask_values]))
        overlay_png = _encode_png(overlay_path, overlay(prediction.image, prediction.mask))
        mask_path.parent.mkdir(parents=True, exist_ok=True)
        overlay_path.parent.mkdir(parents=True, exist_ok=True)
        _write_bytes(mask_path, mask_png)
        _write_bytes(overlay_path, overlay_png)
        h, w = prediction.mask.shape
        record = {
            "image": str(prediction.path),
            "mask": str(mask_path.relative_to(self.out_dir)),
            "overlay": str(overlay_path.relative_to(self.out_dir)),
            "height": int(h),
            "width": int(w),
            "foreground_fraction": round(prediction.foreground_fraction, 6),
        }
        self.records.append(record)
        return record

    def finish(self, supports: Sequence[Support], meta: dict[str, Any]) -> Path:
        record = {
            **meta,
            "k": len(supports),
            "mask_values": self.mask_values,
            "supports": [{"image": str(s.image_path), "mask": str(s.mask_path)} for s in supports],
            "queries": self.records,
        }
        path = self.out_dir / "predictions.json"
        return atomic_write(path, lambda tmp: tmp.write_text(json.dumps(record, indent=2)))
