"""Small deterministic datasets in the real Pascal or COCO on-disk layout, for tests and the demo.

Each class is a distinct (shape, colour, texture) combination drawn on a cluttered background (smooth
colour noise, grey distractor blobs that are no class, pixel noise). Images hold 1-4 objects; the
"primary" object of each image is drawn last and large, so it is fully visible and (at the default
size) covers more than 2048 pixels. The class plan guarantees every class a training image of its own
(so leakage-filtered training pools are non-empty in every fold) and validation images where it is
primary; :func:`make_synthetic` checks this on the written labels for all folds and fails otherwise.

Layouts (exactly the real ones, so the same code paths run as on the real data):

* ``pascal``: ``JPEGImages/<id>.jpg``, ``SegmentationClassAug/<id>.png`` (grayscale class ids, 255 on
  object borders as in VOC), ``lists/{train,val}.txt``; use it as dataset ``synthetic``.
* ``coco``: ``{train,val}2014/COCO_{split}2014_<12-digit id>.jpg``, ``annotations/instances_{split}2014.json``
  (80 categories with the real sparse COCO ids; polygons, compressed RLE for rings, uncompressed RLE
  crowd regions), and ``annotations/{split}2014/*.png`` made by ``svfseg.dataprep.prepare``'s converter.

The output depends only on the parameters and the seed (byte-identical files on one platform).
"""

from __future__ import annotations

import argparse
import json
import math
import shutil
import sys
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np
from pycocotools import mask as mask_utils

from svfseg.data import io as data_io
from svfseg.data.class_names import COLOURS, SHAPES, ClassStyle, class_styles
from svfseg.data.fold import FoldSpec
from svfseg.data.job_progress import progress_bar
from svfseg.data.layouts import default_source, get_layout
from svfseg.data.lists.selection import pool_classes, select_pairs
from svfseg.data.splits import COCO_SPLITS, NUM_FOLDS
from svfseg.dataprep.prepare import prepare_coco
from svfseg.labels import IGNORE_INDEX

FORMAT_VERSION = 1
META_FILE = "synthetic.json"
# The 80 COCO category ids (1..90 with the real gaps).
COCO_CATEGORY_IDS = tuple(i for i in range(1, 91) if i not in {12, 26, 29, 30, 45, 66, 68, 69, 71, 83})
LAYOUT_CLASSES = {"pascal": 20, "coco": 80}
DEFAULTS: dict[str, dict[str, int]] = {
    "pascal": {"n_train": 240, "n_val": 120, "size": 192},
    "coco": {"n_train": 480, "n_val": 240, "size": 192},
}
REFERENCE_SIZE = 192  # at this size the coverage check uses the real 2048-pixel threshold
_GENERATED = (
    "JPEGImages",
    "SegmentationClassAug",
    "lists",
    "train2014",
    "val2014",
    "annotations",
    ".svfseg_cache",
)


def coverage_min_pixels(size: int) -> int:
    """Pixel threshold the generator guarantees: 2048 at the reference size, scaled with the image area."""
    return max(1, round(2048 * (size / REFERENCE_SIZE) ** 2))


# --------------------------------------------------------------------------------------------- drawing


def _regular(n: int, r: float, phase: float = 0.0) -> np.ndarray:
    a = phase + 2 * math.pi * np.arange(n) / n
    return np.stack([r * np.cos(a), r * np.sin(a)], 1)


def _shape_polys(shape: str, r: float) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """(filled, cut-out) polygons of a shape centred at 0 with radius ~r."""
    circle = _regular(64, r)
    if shape == "circle":
        return [circle], []
    if shape == "square":
        return [_regular(4, 1.2 * r, math.pi / 4)], []
    if shape == "triangle":
        return [_regular(3, 1.15 * r, -math.pi / 2)], []
    if shape == "star":
        outer, inner = _regular(5, 1.2 * r, -math.pi / 2), _regular(5, 0.6 * r, -math.pi / 2 + math.pi / 5)
        return [np.stack([outer, inner], 1).reshape(-1, 2)], []
    if shape == "cross":
        a, w = r, 0.36 * r
        pts = [
            (-w, -a),
            (w, -a),
            (w, -w),
            (a, -w),
            (a, w),
            (w, w),
            (w, a),
            (-w, a),
            (-w, w),
            (-a, w),
            (-a, -w),
            (-w, -w),
        ]
        return [np.array(pts, float)], []
    if shape == "ring":
        return [circle], [_regular(64, 0.55 * r)]
    if shape == "ellipse":
        return [circle * np.array([1.0, 0.62])], []
    if shape == "diamond":
        return [np.array([(0, -1.1 * r), (0.8 * r, 0), (0, 1.1 * r), (-0.8 * r, 0)], float)], []
    if shape == "hexagon":
        return [_regular(6, r)], []
    if shape == "crescent":
        return [circle], [_regular(64, 0.75 * r) + np.array([0.6 * r, 0.0])]
    raise ValueError(f"unknown shape {shape!r}: expected one of {SHAPES}")


def shape_mask(shape: str, cx: float, cy: float, r: float, angle: float, size: int) -> np.ndarray:
    """(size, size) bool mask of a rotated shape, rasterised with sub-pixel precision."""
    rot = np.array([[math.cos(angle), -math.sin(angle)], [math.sin(angle), math.cos(angle)]])
    filled, holes = _shape_polys(shape, r)
    m = np.zeros((size, size), np.uint8)

    def fix(p: np.ndarray) -> list[np.ndarray]:
        return [np.round((p @ rot.T + (cx, cy)) * 16).astype(np.int32)]

    for p in filled:
        cv2.fillPoly(m, fix(p), 1, cv2.LINE_8, shift=4)
    for p in holes:
        cv2.fillPoly(m, fix(p), 0, cv2.LINE_8, shift=4)
    return m.astype(bool)


def _texture(
    style: ClassStyle, cx: float, cy: float, r: float, angle: float, size: int, gain: float
) -> np.ndarray:
    """(size, size, 3) float RGB fill of a class; only pixels under its mask are used."""
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    u = (xx - cx) * math.cos(angle) + (yy - cy) * math.sin(angle)
    v = -(xx - cx) * math.sin(angle) + (yy - cy) * math.cos(angle)
    colour = np.array(COLOURS[style.colour], np.float32) * gain
    period = max(5.0, r / 2.6)
    if style.texture == "stripes":
        alt = (np.floor(u / period) % 2).astype(bool)
    elif style.texture == "checker":
        alt = ((np.floor(u / period) + np.floor(v / period)) % 2).astype(bool)
    elif style.texture == "dots":
        du, dv = (u / period) % 1 - 0.5, (v / period) % 1 - 0.5
        alt = du * du + dv * dv < 0.09
    else:
        alt = np.zeros((size, size), bool)
    out = np.broadcast_to(colour, (size, size, 3)).copy()
    second = np.array([245.0, 245.0, 235.0]) if style.texture == "dots" else colour * 0.35
    out[alt] = second
    return out


def _background(rng: np.random.Generator, size: int) -> np.ndarray:
    coarse = rng.uniform(50, 200, (5, 5, 3)).astype(np.float32)
    img = cv2.resize(coarse, (size, size), interpolation=cv2.INTER_CUBIC)
    grey = img.mean(axis=2, keepdims=True)
    img = 0.35 * img + 0.65 * grey  # muted, so clutter never looks like a class colour
    for _ in range(int(rng.integers(2, 6))):  # distractor blobs: grey polygons and bars, not classes
        level = float(rng.uniform(40, 215))
        tint = rng.uniform(-12, 12, 3)
        colour = tuple(float(x) for x in np.clip(level + tint, 0, 255))
        c = rng.uniform(0, size, 2)
        if rng.random() < 0.7:
            n = int(rng.integers(3, 8))
            ang = np.sort(rng.uniform(0, 2 * math.pi, n))
            rad = rng.uniform(0.05, 0.2, n) * size
            pts = np.stack([c[0] + rad * np.cos(ang), c[1] + rad * np.sin(ang)], 1)
            cv2.fillPoly(img, [np.round(pts * 16).astype(np.int32)], colour, cv2.LINE_AA, shift=4)
        else:
            end = c + rng.uniform(-0.4, 0.4, 2) * size
            thick = int(rng.integers(2, max(3, size // 24)))
            cv2.line(img, tuple(int(x) for x in c), tuple(int(x) for x in end), colour, thick, cv2.LINE_AA)
    return img


@dataclass
class SceneObject:
    """One drawn object: class id (1-based into the style list), centre, radius and rotation in pixels."""

    cls: int
    cx: float
    cy: float
    r: float
    angle: float
    crowd: int = -1  # >= 0: member of crowd group k


def place_object(
    rng: np.random.Generator, placed: list[SceneObject], r: float, size: int, tries: int = 30
) -> tuple[float, float] | None:
    """A centre inside the image that keeps a radius-``r`` object apart from ``placed`` (None: no room)."""
    lo, hi = r + 1, size - r - 1
    for _ in range(tries):
        cx, cy = rng.uniform(lo, hi, 2)
        if all(math.hypot(cx - o.cx, cy - o.cy) >= 0.75 * (r + o.r) for o in placed):
            return float(cx), float(cy)
    return None


def _layout_objects(
    rng: np.random.Generator, classes: Sequence[int], size: int, n_cls: int, crowd: bool
) -> list[SceneObject]:
    """Objects in drawing order: crowd members, extras, then the primary (``classes[-1]``) on top."""
    primary_r = float(rng.uniform(0.24, 0.30)) * size
    pcx, pcy = rng.uniform(primary_r + 1, size - primary_r - 1, 2)
    primary = SceneObject(classes[-1], float(pcx), float(pcy), primary_r, float(rng.uniform(0, 2 * math.pi)))
    placed = [primary]
    extras: list[SceneObject] = []
    for c in classes[:-1]:
        r = float(rng.uniform(0.12, 0.2)) * size
        pos = place_object(rng, placed, r, size)
        if pos is not None:
            extras.append(SceneObject(c, *pos, r, float(rng.uniform(0, 2 * math.pi))))
            placed.append(extras[-1])
    members: list[SceneObject] = []
    if crowd:
        c = int(rng.integers(1, n_cls + 1))
        for _ in range(int(rng.integers(4, 7))):
            r = float(rng.uniform(0.035, 0.055)) * size
            pos = place_object(rng, placed, r, size, tries=10)
            if pos is not None:
                members.append(SceneObject(c, *pos, r, float(rng.uniform(0, 2 * math.pi)), crowd=0))
                placed.append(members[-1])
    return [*members, *extras, primary]


def render(
    rng: np.random.Generator, objs: Sequence[SceneObject], styles: Sequence[ClassStyle], size: int
) -> tuple[np.ndarray, np.ndarray]:
    """(RGB uint8 image, owner map: index into objs per pixel or -1)."""
    img = _background(rng, size)
    owner = np.full((size, size), -1, np.int16)
    for i, o in enumerate(objs):
        style = styles[o.cls - 1]
        m = shape_mask(style.shape, o.cx, o.cy, o.r, o.angle, size)
        gain = float(rng.uniform(0.85, 1.08))
        img[m] = _texture(style, o.cx, o.cy, o.r, o.angle, size, gain)[m]
        owner[m] = i
    img += rng.normal(0, 7, img.shape).astype(np.float32)
    return np.clip(img, 0, 255).astype(np.uint8), owner


def pascal_label(objs: Sequence[SceneObject], owner: np.ndarray) -> np.ndarray:
    """Class ids with a 255 band on every region border, like VOC/SBD-augmented labels."""
    classes = np.array([0] + [o.cls for o in objs], np.uint8)
    label = classes[owner.astype(np.int32) + 1]
    k = np.ones((3, 3), np.uint8)
    label[cv2.dilate(label, k) != cv2.erode(label, k)] = IGNORE_INDEX
    return label


# --------------------------------------------------------------------------------------------- planning


def _groups(layout: str, n_cls: int) -> list[list[int]]:
    """Classes that are novel together in one fold (Pascal contiguous, COCO interleaved)."""
    if layout == "pascal":
        return [list(range(5 * g + 1, 5 * g + 6)) for g in range(NUM_FOLDS)]
    return [list(range(g + 1, n_cls + 1, NUM_FOLDS)) for g in range(NUM_FOLDS)]


def plan(layout: str, split: str, n: int, seed: int) -> list[list[int]]:
    """Classes of each image, primary last. Every class is primary once per cycle of ``n_cls`` images.

    Training cycles rotate three kinds: the primary alone (kept by the leakage filter in every fold),
    with classes of its own fold group (dropped only in that group's fold), with any classes (mixed).
    """
    n_cls = LAYOUT_CLASSES[layout]
    rng = np.random.default_rng([seed, 0 if split == "train" else 1, 7919])
    group_of = {c: g for g in _groups(layout, n_cls) for c in g}
    out: list[list[int]] = []
    cycle = 0
    while len(out) < n:
        for primary in (rng.permutation(n_cls) + 1).tolist():
            kind = cycle % 3 if split == "train" else 2
            others = [c for c in (group_of[primary] if kind == 1 else range(1, n_cls + 1)) if c != primary]
            k = 0 if kind == 0 else int(rng.integers(1 if split == "train" else 0, 4))
            extras = rng.choice(others, size=min(k, len(others)), replace=False).tolist() if k else []
            out.append([*extras, primary])
            if len(out) == n:
                break
        cycle += 1
    return out


# --------------------------------------------------------------------------------------------- writers


def _rle_uncompressed(mask: np.ndarray) -> dict[str, Any]:
    """COCO's uncompressed RLE (column-major run lengths, starting with zeros), as used for crowds."""
    flat = mask.ravel(order="F").astype(np.uint8)
    change = np.flatnonzero(np.diff(flat)) + 1
    bounds = np.concatenate([[0], change, [flat.size]])
    runs = np.diff(bounds).tolist()
    if flat[0]:
        runs = [0, *runs]
    return {"size": [int(mask.shape[0]), int(mask.shape[1])], "counts": [int(x) for x in runs]}


def _coco_annotations(
    objs: Sequence[SceneObject], owner: np.ndarray, styles: Sequence[ClassStyle], image_id: int, next_id: int
) -> list[dict[str, Any]]:
    anns: list[dict[str, Any]] = []

    def add(mask: np.ndarray, cls: int, seg: Any, crowd: int) -> None:
        ys, xs = np.nonzero(mask)
        bbox = [
            float(xs.min()),
            float(ys.min()),
            float(xs.max() - xs.min() + 1),
            float(ys.max() - ys.min() + 1),
        ]
        anns.append(
            {
                "id": next_id + len(anns),
                "image_id": image_id,
                "category_id": COCO_CATEGORY_IDS[cls - 1],
                "segmentation": seg,
                "area": float(mask.sum()),
                "bbox": bbox,
                "iscrowd": crowd,
            }
        )

    crowd_idx = [i for i, o in enumerate(objs) if o.crowd >= 0]
    if crowd_idx:
        region = np.isin(owner, crowd_idx).astype(np.uint8)
        region = cv2.dilate(region, np.ones((5, 5), np.uint8))
        region[(owner >= 0) & ~np.isin(owner, crowd_idx)] = 0
        if region.sum() >= 20:
            add(region.astype(bool), objs[crowd_idx[0]].cls, _rle_uncompressed(region), 1)
    for i, o in enumerate(objs):
        if o.crowd >= 0:
            continue
        vis = (owner == i).astype(np.uint8)
        if vis.sum() < 40:
            continue
        if styles[o.cls - 1].shape == "ring":  # a hole: polygons cannot say it, RLE can
            rle = mask_utils.encode(np.asfortranarray(vis))
            seg: Any = {"size": rle["size"], "counts": rle["counts"].decode("ascii")}
        else:
            contours, _ = cv2.findContours(vis, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
            seg = [c.reshape(-1).astype(float).tolist() for c in contours if len(c) >= 3]
            if not seg:
                continue
        add(vis.astype(bool), o.cls, seg, 0)
    return anns


def _write_jpeg(path: Path, rgb: np.ndarray) -> None:
    ok, buf = cv2.imencode(".jpg", cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, 92])
    if not ok:
        raise RuntimeError(f"could not encode {path}")
    path.write_bytes(buf.tobytes())


def _image_rng(seed: int, split: str, index: int) -> np.random.Generator:
    return np.random.default_rng([seed, 0 if split == "train" else 1, index])


def _generate_pascal(
    root: Path, n: dict[str, int], size: int, seed: int, styles: Sequence[ClassStyle], progress: bool
) -> None:
    (root / "JPEGImages").mkdir(parents=True)
    (root / "SegmentationClassAug").mkdir()
    (root / "lists").mkdir()
    with progress_bar("synthetic pascal", n["train"] + n["val"], enabled=progress) as advance:
        for split in ("train", "val"):
            lines = []
            for j, classes in enumerate(plan("pascal", split, n[split], seed)):
                rng = _image_rng(seed, split, j)
                objs = _layout_objects(rng, classes, size, len(styles), crowd=False)
                img, owner = render(rng, objs, styles, size)
                stem = f"{split}_{j:06d}"
                _write_jpeg(root / "JPEGImages" / f"{stem}.jpg", img)
                _, buf = cv2.imencode(".png", pascal_label(objs, owner))
                (root / "SegmentationClassAug" / f"{stem}.png").write_bytes(buf.tobytes())
                lines.append(f"JPEGImages/{stem}.jpg SegmentationClassAug/{stem}.png\n")
                advance()
            (root / "lists" / f"{split}.txt").write_text("".join(lines))


def _generate_coco(
    root: Path, n: dict[str, int], size: int, seed: int, styles: Sequence[ClassStyle], progress: bool
) -> None:
    (root / "annotations").mkdir(parents=True)
    categories = [
        {"id": cid, "name": styles[k].name, "supercategory": styles[k].shape}
        for k, cid in enumerate(COCO_CATEGORY_IDS)
    ]
    with progress_bar("synthetic coco", n["train"] + n["val"], enabled=progress) as advance:
        for split in ("train", "val"):
            img_dir = root / f"{split}2014"
            img_dir.mkdir()
            images, anns = [], []
            id_base = 0 if split == "train" else 1_000_000  # COCO ids are unique across splits
            for j, classes in enumerate(plan("coco", split, n[split], seed)):
                rng = _image_rng(seed, split, j)
                objs = _layout_objects(rng, classes, size, len(styles), crowd=bool(rng.random() < 0.15))
                img, owner = render(rng, objs, styles, size)
                image_id = id_base + j + 1
                name = f"COCO_{split}2014_{image_id:012d}.jpg"
                _write_jpeg(img_dir / name, img)
                images.append({"id": image_id, "file_name": name, "height": size, "width": size})
                anns.extend(_coco_annotations(objs, owner, styles, image_id, id_base + len(anns) + 1))
                advance()
            doc = {
                "info": {"description": f"svfseg synthetic COCO-layout data (seed {seed})", "version": "1.0"},
                "licenses": [],
                "images": images,
                "annotations": anns,
                "categories": categories,
            }
            (root / "annotations" / f"instances_{split}2014.json").write_text(json.dumps(doc))
    prepare_coco(root, root, workers=1, progress=progress)


# --------------------------------------------------------------------------------------------- checks + API


def check_coverage(layout: str, root: Path, min_pixels: int) -> dict[str, int]:
    """Smallest pool per split over all folds (and both COCO splits); raises if any pool is empty."""
    lay = get_layout("synthetic" if layout == "pascal" else "coco")
    smallest = {"train": sys.maxsize, "val": sys.maxsize}
    for split in ("train", "val"):
        pairs = default_source(lay, root, split).pairs
        counts = {}
        for _, label in pairs:
            c, _ = data_io.label_counts(root / label, lay.num_classes)
            counts[label] = {k: int(c[k]) for k in range(1, lay.num_classes + 1) if c[k]}
        for coco_split in COCO_SPLITS if layout == "coco" else ("interleaved",):
            for fold in range(NUM_FOLDS):
                pool, novel = pool_classes(FoldSpec(lay.name, fold, coco_split=coco_split), split)
                lst = select_pairs(
                    pairs, counts, pool, novel, filter_novel=split == "train", min_pixels=min_pixels
                )
                if lst.empty_classes():
                    raise RuntimeError(
                        f"synthetic {layout} data under {root}: fold {fold} {split} ({coco_split}) has no image "
                        f">= {min_pixels} px for classes {lst.empty_classes()}; raise n_{split} or size"
                    )
                smallest[split] = min(smallest[split], min(len(v) for v in lst.by_class.values()))
    return smallest


def _meta_params(layout: str, n_train: int, n_val: int, size: int, seed: int) -> dict[str, Any]:
    return {
        "version": FORMAT_VERSION,
        "layout": layout,
        "n_train": n_train,
        "n_val": n_val,
        "size": size,
        "seed": seed,
    }


def make_synthetic(
    layout: str,
    root: str | Path,
    *,
    n_train: int | None = None,
    n_val: int | None = None,
    size: int | None = None,
    seed: int = 0,
    overwrite: bool = False,
    progress: bool = False,
) -> Path:
    """Write (or reuse, when the same parameters already generated it) a synthetic dataset; returns its root.

    Defaults per layout are in ``DEFAULTS``. A non-empty ``root`` that is not a synthetic dataset is refused.
    """
    if layout not in LAYOUT_CLASSES:
        raise ValueError(f"layout {layout!r}: expected one of {sorted(LAYOUT_CLASSES)}")
    d = DEFAULTS[layout]
    n_train = d["n_train"] if n_train is None else n_train
    n_val = d["n_val"] if n_val is None else n_val
    size = d["size"] if size is None else size
    n_cls = LAYOUT_CLASSES[layout]
    if n_train < n_cls or n_val < n_cls:
        raise ValueError(
            f"n_train={n_train}, n_val={n_val}: each must be >= {n_cls} (one image per class) for {layout}"
        )
    if size < 48:
        raise ValueError(f"size={size}: use at least 48 px so objects stay recognisable")
    root = Path(root)
    params = _meta_params(layout, n_train, n_val, size, seed)
    meta_path = root / META_FILE
    meta: dict[str, Any] | None = None
    if meta_path.is_file():
        try:
            meta = json.loads(meta_path.read_text())
        except json.JSONDecodeError:
            meta = {}  # our marker, half written: regenerate
    if meta is not None and meta.get("params") == params and meta.get("complete") and not overwrite:
        return root
    if meta is None and root.is_dir() and any(root.iterdir()):
        raise FileExistsError(f"{root} is not empty and holds no {META_FILE}; choose an empty or new --root")
    for name in _GENERATED:
        if (root / name).exists():
            shutil.rmtree(root / name)
    root.mkdir(parents=True, exist_ok=True)
    # Marks the folder as ours at once, so a run interrupted here can be redone without --overwrite.
    meta_path.write_text(json.dumps({"params": params, "complete": False}) + "\n")
    styles = class_styles(n_cls)
    counts = {"train": n_train, "val": n_val}
    if layout == "pascal":
        _generate_pascal(root, counts, size, seed, styles, progress)
    else:
        _generate_coco(root, counts, size, seed, styles, progress)
    threshold = coverage_min_pixels(size)
    smallest = check_coverage(layout, root, threshold)
    meta = {
        "params": params,
        "complete": True,
        "dataset": "synthetic" if layout == "pascal" else "coco",
        "coverage_min_pixels": threshold,
        "smallest_pool": smallest,
        "classes": [{"id": k + 1, "name": s.name, **asdict(s)} for k, s in enumerate(styles)],
    }
    meta_path.write_text(json.dumps(meta, indent=1) + "\n")
    return root


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m svfseg.dataprep.synthetic", description=__doc__.split("\n\n")[0]
    )
    p.add_argument("--layout", required=True, choices=sorted(LAYOUT_CLASSES))
    p.add_argument("--root", required=True)
    p.add_argument("--n-train", type=int, help="training images (default: pascal 240, coco 480)")
    p.add_argument("--n-val", type=int, help="validation images (default: pascal 120, coco 240)")
    p.add_argument("--size", type=int, help=f"image side in pixels (default {REFERENCE_SIZE})")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--overwrite", action="store_true", help="regenerate even if the same dataset exists")
    args = p.parse_args(argv)
    root = make_synthetic(
        args.layout,
        args.root,
        n_train=args.n_train,
        n_val=args.n_val,
        size=args.size,
        seed=args.seed,
        overwrite=args.overwrite,
        progress=True,
    )
    meta = json.loads((root / META_FILE).read_text())
    print(
        f"synthetic {args.layout} data in {root}: use dataset '{meta['dataset']}'; every pool of every fold has "
        f">= {meta['smallest_pool']} images at min_pixels={meta['coverage_min_pixels']}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
