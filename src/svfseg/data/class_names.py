"""Class names of each dataset's class ids (1-based, as in the label PNGs), for metrics and logs.

The synthetic classes are their styles (shape, colour, texture): the generator
(:mod:`svfseg.dataprep.synthetic`) draws them from here, so naming a class never imports the generator.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

from svfseg.data.layouts import get_layout
from svfseg.data.splits import NUM_CLASSES

PASCAL_VOC = (
    "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow",
    "diningtable", "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa", "train",
    "tvmonitor",
)  # fmt: skip
# COCO's 80 categories in ascending category-id order: svfseg's class id k is the k-th of them.
COCO = (
    "person", "bicycle", "car", "motorcycle", "airplane", "bus", "train", "truck", "boat",
    "traffic light", "fire hydrant", "stop sign", "parking meter", "bench", "bird", "cat", "dog",
    "horse", "sheep", "cow", "elephant", "bear", "zebra", "giraffe", "backpack", "umbrella", "handbag",
    "tie", "suitcase", "frisbee", "skis", "snowboard", "sports ball", "kite", "baseball bat",
    "baseball glove", "skateboard", "surfboard", "tennis racket", "bottle", "wine glass", "cup", "fork",
    "knife", "spoon", "bowl", "banana", "apple", "sandwich", "orange", "broccoli", "carrot", "hot dog",
    "pizza", "donut", "cake", "chair", "couch", "potted plant", "bed", "dining table", "toilet", "tv",
    "laptop", "mouse", "remote", "keyboard", "cell phone", "microwave", "oven", "toaster", "sink",
    "refrigerator", "book", "clock", "vase", "scissors", "teddy bear", "hair drier", "toothbrush",
)  # fmt: skip

SHAPES = (
    "circle",
    "square",
    "triangle",
    "star",
    "cross",
    "ring",
    "ellipse",
    "diamond",
    "hexagon",
    "crescent",
)
COLOURS: dict[str, tuple[int, int, int]] = {  # RGB, saturated so they differ from the grey clutter
    "red": (225, 35, 35),
    "orange": (245, 140, 20),
    "yellow": (240, 220, 30),
    "green": (35, 175, 55),
    "cyan": (30, 200, 215),
    "blue": (40, 70, 230),
    "purple": (140, 50, 200),
    "pink": (240, 70, 170),
}
TEXTURES = ("solid", "stripes", "dots", "checker")


@dataclass(frozen=True)
class ClassStyle:
    shape: str
    colour: str
    texture: str

    @property
    def name(self) -> str:
        return f"{self.colour} {self.texture} {self.shape}"


@functools.lru_cache(maxsize=8)
def class_styles(n: int) -> tuple[ClassStyle, ...]:
    """``n`` distinct styles, greedily as far apart as possible (attributes differing), balanced in use."""
    combos = [
        (s, c, t) for s in range(len(SHAPES)) for c in range(len(COLOURS)) for t in range(len(TEXTURES))
    ]
    if n > len(combos):
        raise ValueError(f"at most {len(combos)} synthetic classes, asked for {n}")
    chosen: list[tuple[int, int, int]] = []
    uses = [[0] * len(SHAPES), [0] * len(COLOURS), [0] * len(TEXTURES)]
    for _ in range(n):

        def score(cand: tuple[int, int, int]) -> tuple[int, int]:
            dist = min((sum(a != b for a, b in zip(cand, ch)) for ch in chosen), default=3)
            return dist, -sum(uses[k][v] for k, v in enumerate(cand))

        best = max((c for c in combos if c not in chosen), key=score)
        chosen.append(best)
        for k, v in enumerate(best):
            uses[k][v] += 1
    names = list(COLOURS)
    return tuple(ClassStyle(SHAPES[s], names[c], TEXTURES[t]) for s, c, t in chosen)


def class_names(dataset: str) -> dict[int, str]:
    """``{class id: name}`` for ``dataset`` (``pascal``, ``coco``, or ``synthetic``: its generated styles)."""
    layout = get_layout(dataset)
    if dataset == "synthetic":
        names = tuple(style.name for style in class_styles(NUM_CLASSES[layout.split_dataset]))
    else:
        names = PASCAL_VOC if layout.split_dataset == "pascal" else COCO
    return {k + 1: name for k, name in enumerate(names)}
