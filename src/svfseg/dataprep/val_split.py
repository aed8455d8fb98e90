"""A seeded, stratified choice of validation images: the CCP design's rule, for any dataset folder.

Why stratified: a plain split (the last 20 % of the ids) can leave a rare class one validation image,
too few for a 5-shot episode (5 supports and a query); here each class, rarest first, takes its
validation images before the split is filled up to its size.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Sequence

import numpy as np


def seeded_order(ids: Sequence[str], seed: str) -> list[int]:
    """Indices of ``ids`` in the order of ``sha256("<seed>:<id>")``: fixed by the ids, not by their listing."""
    return sorted(range(len(ids)), key=lambda i: hashlib.sha256(f"{seed}:{ids[i]}".encode()).hexdigest())


def stratified_val_ids(
    present: np.ndarray, ids: Sequence[str], *, val_fraction: float, min_val: int, seed: str
) -> list[str]:
    """The validation ids, sorted.

    ``present[i, c]``: class ``c`` counts as present in image ``ids[i]``. For each class, rarest first (ties
    by column), images in seeded order join val until the class has ``max(min_val, ceil(val_fraction x
    its images))`` of them there (all of them when it has fewer); then the seeded order fills val up to
    ``round(val_fraction x len(ids))`` images.
    """
    if present.shape[0] != len(ids):
        raise ValueError(f"present has {present.shape[0]} rows for {len(ids)} ids")
    order = seeded_order(ids, seed)
    val: set[int] = set()
    for c in sorted(range(present.shape[1]), key=lambda c: (int(present[:, c].sum()), c)):
        images = [i for i in order if present[i, c]]
        need = max(min_val, math.ceil(val_fraction * len(images)))
        have = sum(1 for i in images if i in val)
        for i in images:
            if have >= need:
                break
            if i not in val:
                val.add(i)
                have += 1
    target = round(val_fraction * len(ids))
    for i in order:
        if len(val) >= target:
            break
        val.add(i)
    return [ids[i] for i in sorted(val)]
