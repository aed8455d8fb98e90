"""The "ImageNet proxy": procedural categories, disjoint from every few-shot synthetic class, for pretraining.

A category is a (shape, colour, texture) combination, drawn with the same renderer and cluttered
backgrounds as the few-shot synthetic data (:mod:`svfseg.dataprep.synthetic`). Every combination that any
synthetic Pascal or COCO class uses is excluded, so the few-shot novel classes are never a pretraining
category: the backbone learns the primitives (colours, textures, shapes, clutter) the way ImageNet teaches
edges and parts, and a novel class is a new combination of them, as a Pascal class is for ImageNet.

Images hold 1-3 objects of random categories at random scales; the label is the category id per pixel
(0 = background), for dense pretraining.
"""

from __future__ import annotations

import functools
import math

import numpy as np

from svfseg.data.class_names import COLOURS, SHAPES, TEXTURES, ClassStyle, class_styles
from svfseg.dataprep.synthetic import LAYOUT_CLASSES, SceneObject, place_object, render


@functools.lru_cache(maxsize=4)
def fewshot_styles() -> frozenset[ClassStyle]:
    """Every style a synthetic few-shot class uses, in either layout (the COCO list extends the Pascal one)."""
    return frozenset(s for n in LAYOUT_CLASSES.values() for s in class_styles(n))


@functools.lru_cache(maxsize=8)
def proxy_styles(n: int) -> tuple[ClassStyle, ...]:
    """``n`` pretraining categories: (shape, colour, texture) combinations no few-shot class uses.

    Taken in a fixed interleaved order (texture, then colour, then shape vary fastest in turn) so that
    any ``n`` covers every shape, colour and texture roughly evenly.
    """
    taken = fewshot_styles()
    colours = list(COLOURS)
    free = [
        ClassStyle(SHAPES[(i + j) % len(SHAPES)], colours[j], TEXTURES[t])
        for i in range(len(SHAPES))
        for t in range(len(TEXTURES))
        for j in range(len(colours))
    ]
    free = list(dict.fromkeys(s for s in free if s not in taken))
    if not 1 <= n <= len(free):
        raise ValueError(
            f"proxy categories: choose 1..{len(free)} (combinations unused by few-shot classes), got {n}"
        )
    return tuple(free[:n])


def render_proxy_image(
    rng: np.random.Generator, styles: tuple[ClassStyle, ...], size: int
) -> tuple[np.ndarray, np.ndarray]:
    """One (RGB uint8 image, uint8 label of category ids with 0 = background) pair."""
    objects: list[SceneObject] = []
    for _ in range(int(rng.integers(1, 4))):
        r = float(rng.uniform(0.14, 0.4)) * size
        pos = place_object(rng, objects, r, size)
        if pos is not None:
            cls = int(rng.integers(1, len(styles) + 1))
            objects.append(SceneObject(cls, *pos, r, float(rng.uniform(0, 2 * math.pi))))
    image, owner = render(rng, objects, styles, size)
    ids = np.array([0] + [o.cls for o in objects], np.uint8)
    return image, ids[owner.astype(np.int32) + 1]


def render_proxy_pool(
    n_images: int, size: int, n_categories: int, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    """``n_images`` images (N, H, W, 3) and labels (N, H, W); image ``i`` depends only on (seed, i)."""
    styles = proxy_styles(n_categories)
    images = np.empty((n_images, size, size, 3), np.uint8)
    labels = np.empty((n_images, size, size), np.uint8)
    for i in range(n_images):
        images[i], labels[i] = render_proxy_image(np.random.default_rng([seed, 104729, i]), styles, size)
    return images, labels
