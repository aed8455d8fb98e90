"""Class names of each dataset's class ids (1-based, as in the label PNGs), for metrics and logs."""

from __future__ import annotations

from svfseg.data.layouts import get_layout
from svfseg.data.splits import NUM_CLASSES
from svfseg.data.synthetic import class_styles

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


def class_names(dataset: str) -> dict[int, str]:
    """``{class id: name}`` for ``dataset`` (``pascal``, ``coco``, or ``synthetic``: its generated styles)."""
    layout = get_layout(dataset)
    if dataset == "synthetic":
        names = tuple(style.name for style in class_styles(NUM_CLASSES[layout.split_dataset]))
    else:
        names = PASCAL_VOC if layout.split_dataset == "pascal" else COCO
    return {k + 1: name for k, name in enumerate(names)}
