"""Tiny on-disk datasets for tests: exact label pixel counts, real layouts, no randomness.

Reusable by any test: ``label_with({6: 300, 1: 1})`` makes a label with exactly those pixel counts,
``write_pascal_root`` writes JPEGImages/SegmentationClassAug pairs plus a source list.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from pathlib import Path

import cv2
import numpy as np

Pair = tuple[str, str]


def label_with(counts: Mapping[int, int], shape: tuple[int, int] = (64, 64), fill: int = 0) -> np.ndarray:
    """A uint8 label holding exactly ``counts[c]`` pixels of each value c (row-major runs), ``fill`` elsewhere."""
    flat = np.full(shape[0] * shape[1], fill, np.uint8)
    pos = 0
    for value, n in counts.items():
        if pos + n > flat.size:
            raise ValueError(f"{sum(counts.values())} pixels do not fit a {shape} label")
        flat[pos : pos + n] = value
        pos += n
    return flat.reshape(shape)


def write_png(path: Path, array: np.ndarray) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    if not cv2.imwrite(str(path), array):
        raise OSError(f"could not write {path}")
    return path


def write_jpeg(path: Path, shape: tuple[int, int], value: int = 128) -> Path:
    """A flat grey JPEG of (H, W) ``shape``."""
    return write_png(path, np.full((*shape, 3), value, np.uint8))


def write_pascal_root(
    root: Path, labels: Mapping[str, np.ndarray], list_names: Sequence[str] = ("train.txt", "val.txt")
) -> tuple[list[Pair], Path]:
    """Write ``JPEGImages/<id>.jpg`` + ``SegmentationClassAug/<id>.png`` per label and source lists.

    Every list in ``root/lists/`` gets all pairs (so dataset ``synthetic`` reads them for train and val).
    Returns the pairs (in ``labels`` order) and the lists folder.
    """
    pairs: list[Pair] = []
    for stem, lab in labels.items():
        image, label = f"JPEGImages/{stem}.jpg", f"SegmentationClassAug/{stem}.png"
        write_jpeg(root / image, lab.shape)
        write_png(root / label, lab)
        pairs.append((image, label))
    for name in list_names:
        write_source_list(root / "lists" / name, pairs)
    return pairs, root / "lists"


def write_source_list(path: Path, pairs: list[Pair]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(f"{i} {lb}\n" for i, lb in pairs))
    return path


def tree_digest(root: Path, pattern: str = "**/*") -> dict[str, str]:
    """sha256 of every file under ``root`` matching ``pattern``, by relative path."""
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.glob(pattern))
        if p.is_file()
    }


def env_folder(variable: str, marker: str) -> Path | None:
    """The real-data folder an environment variable names (``.ci/run`` sets it), if it holds ``marker``.

    The data never lives in the repository; without the variable the tests that need it skip and say
    how to get it.
    """
    import os

    value = os.environ.get(variable)
    return Path(value) if value and (Path(value) / marker).exists() else None
