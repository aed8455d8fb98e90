"""Convert the public Pascal VOC + SBD and COCO 2014 releases into the label layout svfseg reads.

``python -m svfseg.dataprep.prepare pascal --voc VOC2012_DIR --sbd SBD_DIR --out OUT`` writes
``OUT/SegmentationClassAug/<id>.png`` (single-channel uint8 class ids) and links ``OUT/JPEGImages``:

* An id with a VOC label (``VOC2012/SegmentationClass/<id>.png``) takes it: VOC labels are the official,
  more precise masks with a 255 "void" band on object borders. They are palette PNGs, so the palette
  *indices* are read (PIL), never the colours.
* Every other id takes the SBD label ``SBD/cls/<id>.mat`` (MATLAB struct ``GTcls``, field
  ``Segmentation``). Its values are copied as they are: SBD draws no 255 border band, exactly like the
  widely used SegmentationClassAug set. Nothing is invented.
* The result is checked against the standard lists (5,953 training / 1,449 validation pairs).

``python -m svfseg.dataprep.prepare coco --coco COCO_DIR --out OUT`` turns
``annotations/instances_{train,val}2014.json`` into ``OUT/annotations/{split}2014/<image stem>.png``:

* COCO's 80 category ids (1..90 with gaps) map to 1..80 in ascending id order; 0 is background.
* ``iscrowd`` regions become 255 (ignore); non-crowd instances are then painted over them, the largest
  first, so where instances overlap the smaller one wins (small objects are not erased by the big ones
  they lie on); equal areas: the higher annotation id wins.
* Only images with at least one annotation get a label (as in PFENet's lists: 82,081 train / 40,137 val).

Both link the image folders into OUT (``--link symlink``, the default, or ``copy``) unless OUT is the
input folder. Conversion runs in parallel, writes files atomically, and ``--skip-existing`` resumes.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import warnings
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from importlib import resources
from multiprocessing import get_context
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import scipy.io
from PIL import Image
from pycocotools import mask as mask_utils

from svfseg.data.io import DataFileError, check_label_values
from svfseg.data.job_progress import progress_bar
from svfseg.data.layouts import PASCAL_SOURCE_RESOURCES, get_layout, read_source_file
from svfseg.data.lists.label_index import default_workers
from svfseg.data.splits import NUM_CLASSES
from svfseg.dataprep import ccp, folder_check, folder_resize
from svfseg.files import atomic_write
from svfseg.labels import IGNORE_INDEX

COCO_SPLITS = ("train", "val")
_SERIAL_BELOW = 64


# --------------------------------------------------------------------------------------------- shared


def write_label(path: Path, label: np.ndarray) -> None:
    """Write a single-channel PNG atomically (tmp + rename), so an interrupted run leaves no half file."""
    ok, buf = cv2.imencode(".png", label)
    if not ok:
        raise DataFileError(f"could not encode label for {path}")
    atomic_write(path, lambda tmp: tmp.write_bytes(buf.tobytes()))


def link_dir(src: Path, dst: Path, mode: str) -> str:
    """Make ``dst`` show the images of ``src``: a symlink or a copy; an existing ``dst`` is kept."""
    if dst.exists() or dst.is_symlink():
        return f"kept existing {dst}"
    if src.resolve() == dst.resolve():
        return f"{dst} is the input folder"
    dst.parent.mkdir(parents=True, exist_ok=True)
    if mode == "symlink":
        dst.symlink_to(src.resolve(), target_is_directory=True)
        return f"linked {dst} -> {src.resolve()}"
    if mode == "copy":
        shutil.copytree(src, dst)
        return f"copied {src} -> {dst}"
    raise ValueError(f"link mode {mode!r}: expected 'symlink' or 'copy'")


def _run(fn: Any, tasks: Sequence[Any], *, workers: int | None, progress: bool, desc: str) -> list[Any]:
    n = default_workers() if workers is None else workers
    results: list[Any] = []
    with progress_bar(desc, len(tasks), enabled=progress) as advance:
        if n <= 1 or len(tasks) < _SERIAL_BELOW:
            for t in tasks:
                results.append(fn(t))
                advance()
        else:
            with get_context().Pool(n) as pool:
                for r in pool.imap_unordered(fn, tasks, chunksize=16):
                    results.append(r)
                    advance()
    return results


def _require_dir(path: Path, what: str, fix: str) -> None:
    if not path.is_dir():
        raise FileNotFoundError(f"{what} {path} does not exist; {fix}")


# --------------------------------------------------------------------------------------------- pascal


def sbd_mat_to_label(path: Path) -> np.ndarray:
    """The class map of an SBD ``cls/<id>.mat`` file (``GTcls.Segmentation``) as uint8."""
    try:
        mat = scipy.io.loadmat(path, squeeze_me=True, struct_as_record=False)
    except (OSError, ValueError, TypeError) as exc:
        raise DataFileError(f"SBD file {path} is not a readable MATLAB file ({exc})") from None
    gt = mat.get("GTcls")
    seg = getattr(gt, "Segmentation", None)
    if seg is None:
        raise DataFileError(
            f"SBD file {path} has no GTcls.Segmentation (keys: {sorted(k for k in mat if not k.startswith('__'))}); "
            "pass the SBD folder that holds cls/ (class labels), not inst/"
        )
    seg = np.asarray(seg)
    if seg.ndim != 2:
        raise DataFileError(f"SBD file {path}: GTcls.Segmentation has shape {seg.shape}, expected 2-D")
    if seg.min() < 0 or seg.max() > 255:
        raise DataFileError(f"SBD file {path}: values {seg.min()}..{seg.max()} do not fit a uint8 label")
    return seg.astype(np.uint8)


def voc_png_to_label(path: Path) -> np.ndarray:
    """The class indices of a VOC ``SegmentationClass`` palette PNG (not its RGB colours)."""
    try:
        with Image.open(path) as im:
            if im.mode not in ("P", "L"):
                raise DataFileError(
                    f"VOC label {path} has mode {im.mode}; expected a palette (P) PNG of class indices"
                )
            return np.array(im, dtype=np.uint8)
    except (OSError, SyntaxError) as exc:
        raise DataFileError(f"VOC label {path} is corrupt ({exc})") from None


def _convert_pascal(task: tuple[str, str, str, bool]) -> str:
    kind, src, dst, skip_existing = task
    out = Path(dst)
    if skip_existing and out.is_file():
        return kind
    label = voc_png_to_label(Path(src)) if kind == "voc" else sbd_mat_to_label(Path(src))
    check_label_values(label, NUM_CLASSES["pascal"], src)
    write_label(out, label)
    return kind


def _sbd_cls_dir(sbd: Path) -> Path:
    for cand in (sbd / "cls", sbd / "dataset" / "cls", sbd / "benchmark_RELEASE" / "dataset" / "cls"):
        if cand.is_dir():
            return cand
    raise FileNotFoundError(
        f"no SBD class labels under {sbd}: expected {sbd}/cls/*.mat or {sbd}/dataset/cls/*.mat "
        "(the SBD release benchmark_RELEASE/dataset)"
    )


@dataclass(frozen=True)
class PascalReport:
    from_voc: int
    from_sbd: int
    images: str
    missing: dict[str, list[str]]  # standard list name -> missing root-relative files


def prepare_pascal(
    voc: str | Path,
    sbd: str | Path,
    out: str | Path,
    *,
    link: str = "symlink",
    workers: int | None = None,
    progress: bool = True,
    skip_existing: bool = False,
) -> PascalReport:
    """Write ``OUT/SegmentationClassAug`` (VOC labels first, SBD for the rest) and link ``OUT/JPEGImages``."""
    voc, sbd, out = Path(voc), Path(sbd), Path(out)
    _require_dir(voc / "JPEGImages", "VOC image folder", "pass --voc .../VOCdevkit/VOC2012")
    cls_dir = _sbd_cls_dir(sbd)
    voc_seg = voc / "SegmentationClass"
    voc_ids = {p.stem: p for p in voc_seg.glob("*.png")} if voc_seg.is_dir() else {}
    sbd_ids = {p.stem: p for p in cls_dir.glob("*.mat")}
    if not voc_ids and not sbd_ids:
        raise FileNotFoundError(f"no labels found in {voc_seg} or {cls_dir}")
    dst_dir = out / "SegmentationClassAug"
    dst_dir.mkdir(parents=True, exist_ok=True)
    tasks = [
        ("voc", str(voc_ids[i]), str(dst_dir / f"{i}.png"), skip_existing)
        if i in voc_ids
        else ("sbd", str(sbd_ids[i]), str(dst_dir / f"{i}.png"), skip_existing)
        for i in sorted(set(voc_ids) | set(sbd_ids))
    ]
    kinds = _run(_convert_pascal, tasks, workers=workers, progress=progress, desc="Pascal labels")
    images = link_dir(voc / "JPEGImages", out / "JPEGImages", link)
    layout = get_layout("pascal")
    missing: dict[str, list[str]] = {}
    for name in PASCAL_SOURCE_RESOURCES.values():
        with resources.as_file(resources.files("svfseg") / "resources" / "pascal" / name) as f:
            pairs = read_source_file(f, layout).pairs
        missing[name] = [x for p in pairs for x in p if not (out / x).is_file()]
    return PascalReport(kinds.count("voc"), kinds.count("sbd"), images, missing)


# --------------------------------------------------------------------------------------------- coco


def coco_category_map(categories: Iterable[Mapping[str, Any]]) -> dict[int, int]:
    """COCO category id -> class id 1..N in ascending category-id order."""
    ids = sorted(int(c["id"]) for c in categories)
    if len(set(ids)) != len(ids):
        raise ValueError(f"duplicate COCO category ids in {ids}")
    return {cid: i + 1 for i, cid in enumerate(ids)}


def annotation_mask(ann: Mapping[str, Any], height: int, width: int) -> np.ndarray | None:
    """The (H, W) uint8 mask of a polygon or RLE segmentation; None for a degenerate polygon."""
    seg = ann["segmentation"]
    if isinstance(seg, list):
        polys = [p for p in seg if len(p) >= 6]
        if not polys:
            return None
        rle = mask_utils.merge(mask_utils.frPyObjects(polys, height, width))
    elif isinstance(seg, dict) and isinstance(seg.get("counts"), list):
        rle = mask_utils.frPyObjects(seg, height, width)
    elif isinstance(seg, dict):
        rle = seg
    else:
        raise DataFileError(
            f"annotation {ann.get('id')}: segmentation of type {type(seg).__name__} is not COCO"
        )
    with warnings.catch_warnings():
        # pycocotools' Cython decode trips numpy 2's __array__(copy=...) deprecation; the result is right.
        warnings.filterwarnings("ignore", "__array__ implementation", DeprecationWarning)
        m = mask_utils.decode(rle)
    if m.shape != (height, width):
        raise DataFileError(f"annotation {ann.get('id')}: mask is {m.shape}, image is {(height, width)}")
    return m


def coco_semantic_label(
    anns: Sequence[Mapping[str, Any]], height: int, width: int, cat_map: Mapping[int, int]
) -> np.ndarray:
    """The semantic label of one image: crowd -> 255, then instances largest first (smaller wins)."""
    label = np.zeros((height, width), np.uint8)
    painted: list[tuple[int, int, np.ndarray, int]] = []
    for ann in anns:
        m = annotation_mask(ann, height, width)
        if m is None:
            continue
        if ann.get("iscrowd", 0):
            label[m > 0] = IGNORE_INDEX
            continue
        cid = int(ann["category_id"])
        if cid not in cat_map:
            raise DataFileError(
                f"annotation {ann.get('id')}: category_id {cid} is not in the categories list"
            )
        painted.append((int(m.sum()), int(ann.get("id", 0)), m, cat_map[cid]))
    for _, _, m, cls in sorted(painted, key=lambda t: (-t[0], t[1])):
        label[m > 0] = cls
    return label


def _convert_coco(task: tuple[str, int, int, list[dict[str, Any]], dict[int, int], bool]) -> str:
    dst, height, width, anns, cat_map, skip_existing = task
    out = Path(dst)
    if not (skip_existing and out.is_file()):
        write_label(out, coco_semantic_label(anns, height, width, cat_map))
    return dst


def load_coco_json(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise FileNotFoundError(
            f"COCO annotation file {path} does not exist; download annotations_trainval2014.zip from "
            "cocodataset.org and unpack it into the COCO folder (it holds annotations/instances_*2014.json)"
        )
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise DataFileError(f"COCO annotation file {path} is not valid JSON ({exc})") from None
    for key in ("images", "annotations", "categories"):
        if key not in data:
            raise DataFileError(
                f"COCO annotation file {path} has no {key!r} list; is it an instances_*.json?"
            )
    return data


def prepare_coco(
    coco: str | Path,
    out: str | Path,
    *,
    splits: Sequence[str] = COCO_SPLITS,
    link: str = "symlink",
    workers: int | None = None,
    progress: bool = True,
    skip_existing: bool = False,
    expect_classes: int | None = NUM_CLASSES["coco"],
) -> dict[str, int]:
    """Write ``OUT/annotations/{split}2014/*.png`` from the instances JSON; returns labels written per split."""
    coco, out = Path(coco), Path(out)
    written: dict[str, int] = {}
    for split in splits:
        if split not in COCO_SPLITS:
            raise ValueError(f"split {split!r}: expected one of {list(COCO_SPLITS)}")
        img_dir = coco / f"{split}2014"
        _require_dir(img_dir, "COCO image folder", f"unpack {split}2014.zip into {coco}")
        data = load_coco_json(coco / "annotations" / f"instances_{split}2014.json")
        cat_map = coco_category_map(data["categories"])
        if expect_classes is not None and len(cat_map) != expect_classes:
            raise DataFileError(
                f"instances_{split}2014.json has {len(cat_map)} categories; COCO-20i needs {expect_classes}"
            )
        by_image: dict[int, list[dict[str, Any]]] = defaultdict(list)
        for ann in data["annotations"]:
            by_image[int(ann["image_id"])].append(ann)
        dst_dir = out / "annotations" / f"{split}2014"
        dst_dir.mkdir(parents=True, exist_ok=True)
        tasks = [
            (
                str(dst_dir / f"{Path(img['file_name']).stem}.png"),
                int(img["height"]),
                int(img["width"]),
                by_image[int(img["id"])],
                cat_map,
                skip_existing,
            )
            for img in sorted(data["images"], key=lambda im: im["file_name"])
            if by_image.get(int(img["id"]))
        ]
        written[split] = len(
            _run(_convert_coco, tasks, workers=workers, progress=progress, desc=f"COCO {split}")
        )
        link_dir(img_dir, out / f"{split}2014", link)
    return written


# --------------------------------------------------------------------------------------------- CLI


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m svfseg.dataprep.prepare", description=__doc__.split("\n\n")[0]
    )
    sub = p.add_subparsers(dest="dataset", required=True)
    pas = sub.add_parser("pascal", help="VOC2012 + SBD -> SegmentationClassAug")
    pas.add_argument("--voc", required=True, help="VOCdevkit/VOC2012 (JPEGImages/, SegmentationClass/)")
    pas.add_argument(
        "--sbd", required=True, help="SBD release folder holding cls/*.mat (benchmark_RELEASE/dataset)"
    )
    coc = sub.add_parser("coco", help="COCO 2014 instances JSON -> semantic PNG labels")
    coc.add_argument(
        "--coco", required=True, help="folder with annotations/instances_*2014.json, train2014/, val2014/"
    )
    coc.add_argument("--splits", nargs="+", default=list(COCO_SPLITS), choices=COCO_SPLITS)
    for s in (pas, coc):
        s.add_argument("--out", required=True, help="output dataset root (use it as dataset.root)")
        s.add_argument("--link", default="symlink", choices=["symlink", "copy"], help="how images reach OUT")
        s.add_argument("--workers", type=int)
        s.add_argument("--skip-existing", action="store_true", help="keep labels already written (resume)")
        s.add_argument("--no-progress", action="store_true")
    folder_check.add_arguments(
        sub.add_parser(
            "folder", help="check a dataset folder in the own-dataset layout (docs/own-dataset.md)"
        )
    )
    ccp.add_arguments(sub.add_parser("ccp", help="Clothing Co-Parsing -> the own-dataset folder layout"))
    folder_resize.add_arguments(
        sub.add_parser("resize", help="a copy of a folder dataset at a working size (long side in pixels)")
    )
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.dataset == "folder":
        return folder_check.run(args)
    if args.dataset == "ccp":
        return ccp.run(args)
    if args.dataset == "resize":
        return folder_resize.run(args)
    try:
        return _convert(args)
    except (FileNotFoundError, ValueError) as err:  # a missing release folder, an unreadable file
        print(f"error: {err}", file=sys.stderr)
        return 2


def _convert(args: argparse.Namespace) -> int:
    """``prepare pascal`` / ``prepare coco``: convert a public release, then report what it gave."""
    common = {
        "link": args.link,
        "workers": args.workers,
        "progress": not args.no_progress,
        "skip_existing": args.skip_existing,
    }
    if args.dataset == "pascal":
        rep = prepare_pascal(args.voc, args.sbd, args.out, **common)
        print(f"labels: {rep.from_voc} from VOC SegmentationClass, {rep.from_sbd} from SBD; {rep.images}")
        complete = True
        for name, miss in rep.missing.items():
            status = "complete" if not miss else f"{len(miss)} files missing, e.g. {miss[:3]}"
            complete &= not miss
            print(f"standard list {name}: {status}")
        return 0 if complete else 1
    counts = prepare_coco(args.coco, args.out, splits=args.splits, **common)
    for split, n in counts.items():
        print(f"{split}2014: {n} labels -> {Path(args.out) / 'annotations' / f'{split}2014'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
