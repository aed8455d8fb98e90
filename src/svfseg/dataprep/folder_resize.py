"""A copy of a folder dataset with every photo's long side at most ``long_side`` pixels.

Why: training crops ``train_size`` pixels out of the photo at its own scale (x0.9-1.1), while evaluation
shrinks the whole photo to ``eval_size``. With 550 x 825 photos (CCP) and a CPU-sized 129 px crop, training
sees 1/27 of a photo at 6x the evaluation scale, and reading full-size JPEGs dominates each step. A copy at
the working size puts training and evaluation at one scale and makes every read cheap. Labels are resized
with nearest neighbour (ids stay ids); the metric is then at the copy's size. ``min_pixels`` filters count
label pixels, so a run on the copy scales it by the area ratio (:func:`scaled_min_pixels`).

``python -m svfseg.dataprep.prepare resize SRC --out DST --long-side 129``
"""

from __future__ import annotations

import argparse
import json
import shutil
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import cv2
import numpy as np

from svfseg.data.folder_layout import FolderDataset, read_folder
from svfseg.data.io import read_image
from svfseg.files import atomic_write_text

RECORD = "resized.json"
COPIED = ("classes.txt", "train.txt", "val.txt", "folds.json", "LICENSE", "SOURCE.md")


def _target_size(h: int, w: int, long_side: int) -> tuple[int, int]:
    scale = min(1.0, long_side / max(h, w))
    return max(1, round(h * scale)), max(1, round(w * scale))


def _resize_one(task: tuple[str, str, str, str, int]) -> tuple[int, int, int, int]:
    """Resize one image (area) and its label (nearest); returns (h, w) before and after."""
    image_in, label_in, image_out, label_out, long_side = task
    image = read_image(image_in)  # RGB, EXIF orientation applied
    label = cv2.imread(label_in, cv2.IMREAD_UNCHANGED)
    if label is None or label.shape[:2] != image.shape[:2]:
        raise ValueError(
            f"{label_in}: unreadable, or not the size of {image_in}; run prepare folder on it first"
        )
    h, w = image.shape[:2]
    nh, nw = _target_size(h, w, long_side)
    small = cv2.resize(image, (nw, nh), interpolation=cv2.INTER_AREA)
    if not cv2.imwrite(image_out, cv2.cvtColor(small, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, 95]):
        raise OSError(f"could not write {image_out}")
    if not cv2.imwrite(label_out, cv2.resize(label, (nw, nh), interpolation=cv2.INTER_NEAREST)):
        raise OSError(f"could not write {label_out}")
    return h, w, nh, nw


def resize_folder(src: str | Path, out: str | Path, long_side: int, *, workers: int = 2) -> Path:
    """Write the resized copy of ``src`` to ``out`` (kept when it already records the same source and size)."""
    if long_side < 16:
        raise ValueError(f"--long-side {long_side}: use at least 16 pixels (the working size, e.g. 129)")
    src, out = Path(src), Path(out)
    ds: FolderDataset = read_folder(src)
    wanted = {"source": str(src.resolve()), "long_side": int(long_side)}
    record = out / RECORD
    if record.is_file():
        saved = json.loads(record.read_text())
        if {k: saved.get(k) for k in wanted} == wanted:
            return out
        raise FileExistsError(
            f"{out} is a resized copy of {saved.get('source')} at {saved.get('long_side')} px; remove it or choose another --out"
        )
    if out.exists() and any(out.iterdir()):
        raise FileExistsError(f"{out} exists and is not a resized copy; choose another --out")
    partial = out.with_name(out.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    (partial / "images").mkdir(parents=True)
    (partial / "labels").mkdir()
    for name in COPIED:
        if (src / name).is_file():
            shutil.copy2(src / name, partial / name)
    ids = [*ds.train_ids, *ds.val_ids]
    tasks = []
    for id_ in ids:
        image = src / ds.image_name(id_)
        tasks.append(
            (
                str(image),
                str(src / "labels" / f"{id_}.png"),
                str(partial / "images" / f"{id_}.jpg"),
                str(partial / "labels" / f"{id_}.png"),
                long_side,
            )
        )
    with ProcessPoolExecutor(max_workers=max(1, workers)) as pool:
        sizes = list(pool.map(_resize_one, tasks, chunksize=16))
    ratios = [(nh * nw) / (h * w) for h, w, nh, nw in sizes]
    meta = {
        **wanted,
        "photos": len(ids),
        "area_ratio_mean": float(np.mean(ratios)),
        "area_ratio_min": float(min(ratios)),
    }
    atomic_write_text(partial / RECORD, json.dumps(meta, indent=1) + "\n")
    if out.exists():  # an empty folder
        out.rmdir()
    partial.rename(out)
    return out


def scaled_min_pixels(min_pixels: int, root: str | Path) -> int:
    """``min_pixels`` for a resized copy: scaled by its mean area ratio (unchanged for an original folder)."""
    record = Path(root) / RECORD
    if not record.is_file():
        return int(min_pixels)
    return max(1, round(min_pixels * json.loads(record.read_text())["area_ratio_mean"]))


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("src", help="a folder dataset (docs/own-dataset.md)")
    parser.add_argument("--out", required=True, help="where the resized copy goes")
    parser.add_argument("--long-side", type=int, required=True, help="largest side in pixels after resizing")
    parser.add_argument("--workers", type=int, default=2)


def run(args: argparse.Namespace) -> int:
    out = resize_folder(args.src, args.out, args.long_side, workers=args.workers)
    print(
        f"wrote {out} (long side {args.long_side} px); train with dataset.root={out} dataset.min_pixels={scaled_min_pixels(2048, out)}"
    )
    return 0
