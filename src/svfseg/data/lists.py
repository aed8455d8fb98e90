"""Few-shot image lists per fold: which images train/evaluate, and each class's support pool.

Rule (BAM/SVF ``make_dataset``): a class counts for an image when it covers ``>= min_pixels`` (2*32*32)
pixels of the label at original resolution. Training pools use the fold's base classes, evaluation
pools its novel classes. The leakage filter (default for training) drops every training image holding
any pixel of any novel class; without it the lists are PFENet-style. An image enters the list when at
least one of its classes counts, and joins the pool of each class that counts.

Building reads every label once (in parallel) and caches, under ``ROOT/.svfseg_cache`` or ``cache_dir``:
per-label class pixel counts (one file per root + source list, reused by every fold and checked per
label against its mtime and size) and each fold's result (keyed by every input that changes it). All
cache files are JSON. ``python -m svfseg.data.lists`` writes or imports lists in the BAM/SVF layout.
"""

from __future__ import annotations

import argparse
import ast
import hashlib
import json
import logging
import os
import sys
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from multiprocessing import get_context
from pathlib import Path
from typing import Any

from svfseg.data import io as data_io
from svfseg.data.layouts import (
    LAYOUTS,
    Layout,
    Pair,
    SourceList,
    check_split,
    default_source,
    get_layout,
    read_source_file,
    relativize,
)
from svfseg.data.progress import progress_bar
from svfseg.data.splits import COCO_SPLITS, NUM_FOLDS, base_classes, novel_classes
from svfseg.files import atomic_write

log = logging.getLogger(__name__)

DEFAULT_MIN_PIXELS = 2 * 32 * 32
CACHE_VERSION = 1
CACHE_DIRNAME = ".svfseg_cache"
_SERIAL_BELOW = 256  # fewer labels than this are read in-process: pool start-up would cost more


@dataclass(frozen=True)
class FewShotList:
    """The images of one (dataset, fold, split) and the pool of each fold class.

    ``pairs`` are root-relative (image, label) paths, sorted and unique. ``by_class`` maps every class
    of the fold's pool (base classes for train, novel for val) to its sorted pairs; a pool may be empty.
    """

    pairs: tuple[Pair, ...]
    by_class: dict[int, tuple[Pair, ...]]

    def __post_init__(self) -> None:
        if list(self.pairs) != sorted(set(self.pairs)):
            raise ValueError("FewShotList.pairs must be sorted and unique")
        known = set(self.pairs)
        for c, pool in self.by_class.items():
            stray = [p for p in pool if p not in known]
            if stray:
                raise ValueError(f"class {c} pool has {len(stray)} pairs not in the list, e.g. {stray[0]}")

    def __len__(self) -> int:
        return len(self.pairs)

    @property
    def classes(self) -> list[int]:
        """The fold classes of this list, ascending."""
        return sorted(self.by_class)

    def empty_classes(self) -> list[int]:
        return [c for c in self.classes if not self.by_class[c]]

    def to_json(self) -> dict[str, Any]:
        return {
            "pairs": [list(p) for p in self.pairs],
            "by_class": {str(c): [list(p) for p in self.by_class[c]] for c in self.classes},
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> FewShotList:
        pairs = tuple((str(i), str(lb)) for i, lb in data["pairs"])
        by_class = {int(c): tuple((str(i), str(lb)) for i, lb in v) for c, v in data["by_class"].items()}
        return cls(pairs, dict(sorted(by_class.items())))


def select_pairs(
    pairs: Iterable[Pair],
    counts: Mapping[str, Mapping[int, int]],
    classes: Sequence[int],
    novel: Sequence[int],
    *,
    filter_novel: bool,
    min_pixels: int = DEFAULT_MIN_PIXELS,
) -> FewShotList:
    """Apply the list rule to per-label class pixel counts (``counts[label][class]``, zero counts omitted)."""
    novel_set = set(novel)
    pools: dict[int, list[Pair]] = {c: [] for c in sorted(classes)}
    kept: list[Pair] = []
    for pair in sorted(set(pairs)):
        cls_counts = counts[pair[1]]
        if filter_novel and any(cls_counts.get(c, 0) > 0 for c in novel_set):
            continue
        valid = [c for c in pools if cls_counts.get(c, 0) >= min_pixels]
        if valid:
            kept.append(pair)
            for c in valid:
                pools[c].append(pair)
    return FewShotList(tuple(kept), {c: tuple(v) for c, v in pools.items()})


# --------------------------------------------------------------------------------------------- cache


def _sha(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True).encode()).hexdigest()


def _load_json(path: Path) -> dict[str, Any] | None:
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        log.warning("ignoring unreadable cache file %s (%s); it will be rebuilt", path, exc)
        return None
    return data if isinstance(data, dict) and data.get("version") == CACHE_VERSION else None


def _write_json(path: Path, data: dict[str, Any]) -> None:
    """Atomic write (tmp + rename), so concurrent builders (e.g. DDP ranks) never read half a file."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write(path, lambda tmp: tmp.write_text(json.dumps(data, separators=(",", ":"))))
    except OSError as exc:
        log.warning("could not write cache file %s (%s); lists will be rebuilt next time", path, exc)


def _resolve_cache_dir(root: Path, cache_dir: str | Path | None) -> Path:
    if cache_dir is not None:
        return Path(cache_dir)
    default = root / CACHE_DIRNAME
    if os.access(root, os.W_OK) or default.is_dir():
        return default
    fallback = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "svfseg"
    log.info("dataset root %s is read-only; caching lists in %s", root, fallback)
    return fallback


# --------------------------------------------------------------------------------------------- scanning


def _stat_labels(root: Path, pairs: Sequence[Pair], hint: str) -> dict[str, tuple[int, int]]:
    """(mtime_ns, size) of every label; every missing image or label is reported at once."""
    stats: dict[str, tuple[int, int]] = {}
    missing: list[str] = []
    base = str(root)  # string joins: pathlib objects cost more than the stat calls for 80k labels
    for image, label in pairs:
        if label not in stats:
            try:
                st = os.stat(os.path.join(base, label))
                stats[label] = (st.st_mtime_ns, st.st_size)
            except FileNotFoundError:
                missing.append(label)
        if not os.path.exists(os.path.join(base, image)):
            missing.append(image)
    if missing:
        shown = ", ".join(str(root / m) for m in missing[:5])
        raise data_io.MissingDataError(
            f"{len(missing)} files of the source list are missing under {root}, e.g. {shown}; "
            f"prepare the dataset with: {hint}"
        )
    return stats


def _count_pair(task: tuple[str, str, str, int, str]) -> tuple[str, dict[int, int]]:
    """Class pixel counts of one label, after checking its image header has the same size."""
    root, image, label, num_classes, hint = task
    counts, shape = data_io.label_counts(Path(root) / label, num_classes, hint=hint)
    image_shape = data_io.image_size(Path(root) / image, hint=hint)
    if image_shape != shape:
        raise data_io.DataFileError(
            f"image {Path(root) / image} is {image_shape[1]}x{image_shape[0]} (WxH) but label "
            f"{Path(root) / label} is {shape[1]}x{shape[0]}; the pair does not belong together"
        )
    return label, {c: int(counts[c]) for c in range(1, num_classes + 1) if counts[c]}


def default_workers() -> int:
    """Processes for label scans: the CPUs this process may use, at most 8."""
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    return max(1, min(8, cpus))


def _run_counts(
    tasks: list[tuple[str, str, str, int, str]], workers: int | None, progress: bool, desc: str
) -> dict[str, dict[int, int]]:
    n_workers = default_workers() if workers is None else workers
    out: dict[str, dict[int, int]] = {}
    with progress_bar(desc, len(tasks), enabled=progress) as advance:
        if n_workers <= 1 or len(tasks) < _SERIAL_BELOW:
            for t in tasks:
                label, c = _count_pair(t)
                out[label] = c
                advance()
        else:
            with get_context().Pool(n_workers) as pool:
                for label, c in pool.imap_unordered(_count_pair, tasks, chunksize=32):
                    out[label] = c
                    advance()
    return out


def _cached_entry(entry: Any, stat: tuple[int, int]) -> dict[int, int] | None:
    """The counts of a cache entry ``[mtime_ns, size, {class: pixels}]`` if it matches ``stat``."""
    try:
        if entry is None or (int(entry[0]), int(entry[1])) != tuple(stat):
            return None
        return {int(c): int(n) for c, n in entry[2].items()}
    except (TypeError, ValueError, IndexError, AttributeError):
        return None  # malformed entry: read the label again


def scan_counts(
    layout: Layout,
    root: Path,
    source: SourceList,
    stats: Mapping[str, tuple[int, int]],
    cache_dir: Path,
    *,
    workers: int | None = None,
    progress: bool = True,
) -> dict[str, dict[int, int]]:
    """Per-label class pixel counts, re-reading only labels that are new or changed since the cache.

    A cached entry is valid while its label file keeps its (mtime_ns, size); the file is per (dataset,
    root, source origin), so every fold and an edited source list reuse the same scan.
    """
    key = _sha({"dataset": layout.name, "root": str(root), "source": source.origin})
    path = cache_dir / f"counts-{layout.name}-{key[:16]}.json"
    cached = _load_json(path)
    entries = cached.get("labels") if cached and cached.get("key") == key else None
    entries = entries if isinstance(entries, dict) else {}
    counts: dict[str, dict[int, int]] = {}
    tasks = []
    seen: set[str] = set()
    for image, label in source.pairs:
        hit = _cached_entry(entries.get(label), stats[label])
        if hit is not None:
            counts[label] = hit
        elif label not in seen:
            tasks.append((str(root), image, label, layout.num_classes, layout.hint(root)))
        seen.add(label)
    if tasks:
        counts.update(_run_counts(tasks, workers, progress, f"reading {len(tasks)} {layout.name} labels"))
        labels = {lb: [*stats[lb], {str(c): n for c, n in counts[lb].items()}] for lb in stats}
        _write_json(
            path,
            {
                "version": CACHE_VERSION,
                "key": key,
                "root": str(root),
                "source": source.origin,
                "labels": labels,
            },
        )
    return counts


# --------------------------------------------------------------------------------------------- build


def _check_root(layout: Layout, root: str | Path) -> Path:
    path = Path(root).expanduser()
    if not path.is_dir():
        raise FileNotFoundError(f"dataset root {path} does not exist; prepare it with: {layout.hint(path)}")
    return path.resolve()


def pool_classes(layout: Layout, fold: int, split: str, coco_split: str) -> tuple[list[int], list[int]]:
    """(pool classes, novel classes) of a fold: base classes for train, novel classes for val."""
    check_split(split)
    novel = novel_classes(layout.split_dataset, fold, coco_split)
    pool = base_classes(layout.split_dataset, fold, coco_split) if split == "train" else novel
    return pool, novel


def build_list(
    dataset: str,
    root: str | Path,
    fold: int,
    split: str,
    *,
    filter_novel: bool | None = None,
    coco_split: str = "interleaved",
    min_pixels: int = DEFAULT_MIN_PIXELS,
    source_list: str | Path | None = None,
    cache_dir: str | Path | None = None,
    workers: int | None = None,
    progress: bool = True,
) -> FewShotList:
    """The few-shot list of a fold and split (``train``/``val``), from cache when nothing changed.

    ``dataset``: ``pascal``, ``coco`` or ``synthetic`` (Pascal layout and folds, lists in ``ROOT/lists``).
    ``filter_novel`` defaults to True for train and is ignored for val (evaluation lists never filter).
    ``source_list`` replaces the dataset's standard candidate pairs. ``workers``: processes reading
    labels (None: up to 8; 0 or 1: in-process).
    """
    layout = get_layout(dataset)
    pool, novel = pool_classes(layout, fold, split, coco_split)
    if isinstance(min_pixels, bool) or not isinstance(min_pixels, int) or min_pixels < 1:
        raise ValueError(f"min_pixels={min_pixels!r}: expected a positive integer (reference: 2048)")
    use_filter = split == "train" and (True if filter_novel is None else bool(filter_novel))
    root_path = _check_root(layout, root)
    source = (
        read_source_file(source_list, layout, root=root_path)
        if source_list is not None
        else default_source(layout, root_path, split)
    )
    hint = layout.hint(root_path)
    if source_list is None and layout.name == "pascal":
        hint += f" (or, if {root_path} has its own lists, pass source_list / use dataset 'synthetic')"
    stats = _stat_labels(root_path, source.pairs, hint)
    cache = _resolve_cache_dir(root_path, cache_dir)
    identity = {
        "dataset": layout.name,
        "root": str(root_path),
        "source": source.origin,
        "fold": fold,
        "split": split,
        "filter": use_filter,
        "min_pixels": min_pixels,
        "coco_split": coco_split if layout.split_dataset == "coco" else None,
    }
    # One file per configuration (a changed input overwrites it); the key says whether it is current.
    key = _sha(
        {
            **identity,
            "version": CACHE_VERSION,
            "fingerprint": source.fingerprint,
            "labels": _sha(sorted((lb, *st) for lb, st in stats.items())),
        }
    )
    path = cache / f"list-{layout.name}-{split}-fold{fold}-{_sha(identity)[:16]}.json"
    cached = _load_json(path)
    if cached is not None and cached.get("key") == key:
        try:
            return FewShotList.from_json(cached["list"])
        except (KeyError, TypeError, ValueError) as exc:
            log.warning("ignoring malformed cache file %s (%s)", path, exc)
    counts = scan_counts(layout, root_path, source, stats, cache, workers=workers, progress=progress)
    result = select_pairs(source.pairs, counts, pool, novel, filter_novel=use_filter, min_pixels=min_pixels)
    if result.empty_classes():
        log.warning(
            "%s fold %d %s: no image has >= %d pixels of classes %s; episodes of those classes cannot be drawn",
            layout.name,
            fold,
            split,
            min_pixels,
            result.empty_classes(),
        )
    _write_json(
        path, {"version": CACHE_VERSION, "key": key, "source": source.origin, "list": result.to_json()}
    )
    return result


# --------------------------------------------------------------------------------------------- BAM/SVF layout


def list_files(out_dir: str | Path, fold: int, split: str) -> tuple[Path, Path]:
    """(data_list, sub_class_file_list) paths of the BAM/SVF layout: ``OUT/{train|val}/..._{fold}.txt``."""
    check_split(split)
    base = Path(out_dir) / split
    return base / f"data_list_{fold}.txt", base / f"sub_class_file_list_{fold}.txt"


def export_lists(lst: FewShotList, out_dir: str | Path, fold: int, split: str) -> tuple[Path, Path]:
    """Write a list in the BAM/SVF layout (relative paths); the dict file is a Python literal."""
    data_path, sub_path = list_files(out_dir, fold, split)
    data_path.parent.mkdir(parents=True, exist_ok=True)
    data_path.write_text("".join(f"{i} {lb}\n" for i, lb in lst.pairs))
    sub = {c: [[i, lb] for i, lb in lst.by_class[c]] for c in lst.classes}
    sub_path.write_text(str(sub) + "\n")
    return data_path, sub_path


def _shapes_of(dataset: str | None) -> Layout:
    if dataset is not None:
        return get_layout(dataset)
    shapes = tuple(dict.fromkeys(s for lay in LAYOUTS.values() for s in lay.shapes))
    return Layout("any", "pascal", shapes, "")


def import_lists(
    list_dir: str | Path,
    fold: int,
    split: str,
    root: str | Path,
    strip_prefix: str | None = None,
    *,
    dataset: str | None = None,
    coco_split: str = "interleaved",
) -> FewShotList:
    """Read lists in the BAM/SVF layout (also with another machine's absolute paths) as a FewShotList.

    Paths are made root-relative (``layouts.relativize``: ``strip_prefix`` or the known directories
    ``JPEGImages/``, ``SegmentationClassAug/``, ``train2014/``, ``val2014/``, ``annotations/``) and must
    exist under ``root``. With ``dataset`` given, the class ids must be exactly the fold's pool classes.
    """
    layout = _shapes_of(dataset)
    root_path = Path(root).expanduser().resolve()
    if not root_path.is_dir():
        raise FileNotFoundError(f"dataset root {root_path} does not exist")
    data_path, sub_path = list_files(list_dir, fold, split)
    for p in (data_path, sub_path):
        if not p.is_file():
            raise FileNotFoundError(
                f"{p} does not exist; expected the BAM/SVF layout DIR/{split}/data_list_{fold}.txt and "
                f"DIR/{split}/sub_class_file_list_{fold}.txt"
            )

    def rel(pair: Sequence[str], where: str) -> Pair:
        if len(pair) != 2 or not all(isinstance(x, str) for x in pair):
            raise ValueError(f"{where}: expected an (image, label) pair of strings, got {pair!r}")
        return (
            relativize(pair[0], layout, root=root_path, strip_prefix=strip_prefix),
            relativize(pair[1], layout, root=root_path, strip_prefix=strip_prefix),
        )

    text = data_path.read_text()
    pairs: list[Pair] = []
    for lineno, line in enumerate(text.splitlines(), 1):
        if line.strip():
            pairs.append(rel(line.split(), f"{data_path}:{lineno}"))
    try:
        raw = ast.literal_eval(sub_path.read_text().strip())
    except (SyntaxError, ValueError) as exc:
        raise ValueError(
            f"{sub_path} is not a Python dict literal of class id -> [(image, label), ...]: {exc}"
        ) from None
    if not isinstance(raw, dict) or not all(isinstance(k, int) for k in raw):
        raise ValueError(f"{sub_path}: expected a dict with integer class ids as keys")
    by_class = {
        int(c): tuple(sorted({rel(p, f"{sub_path} class {c}") for p in v})) for c, v in sorted(raw.items())
    }
    pair_set = sorted(set(pairs))
    stray = sorted({p for v in by_class.values() for p in v} - set(pair_set))
    if stray:
        raise ValueError(f"{sub_path}: {len(stray)} pool pairs are not in {data_path}, e.g. {stray[0]}")
    if dataset is not None:
        expected, _ = pool_classes(layout, fold, split, coco_split)
        if sorted(by_class) != expected:
            raise ValueError(
                f"{sub_path}: class ids {sorted(by_class)} are not the {dataset} fold {fold} {split} classes "
                f"{expected} (wrong fold, split or coco_split?)"
            )
    missing = [f for p in pair_set for f in p if not (root_path / f).is_file()]
    if missing:
        shown = ", ".join(str(root_path / m) for m in missing[:5])
        raise data_io.MissingDataError(
            f"{len(missing)} files named in {data_path} are missing under {root_path}, e.g. {shown}; "
            "check --root (and --strip-prefix)"
        )
    return FewShotList(tuple(pair_set), by_class)


# --------------------------------------------------------------------------------------------- CLI

# Image counts of the SVF repo's Pascal lists (fss_list filtered / fsss_list_ori unfiltered, 2048 px),
# keyed by (fold, split, filtered). Lists built from the standard sources should match them exactly.
REFERENCE_PASCAL: dict[tuple[int, str, bool], int] = {
    (0, "train", True): 4208,
    (1, "train", True): 3726,
    (2, "train", True): 2752,
    (3, "train", True): 4510,
    (0, "train", False): 4760,
    (1, "train", False): 4588,
    (2, "train", False): 4097,
    (3, "train", False): 5108,
    (0, "val", False): 364,
    (1, "val", False): 445,
    (2, "val", False): 592,
    (3, "val", False): 336,
}


def _summary(
    rows: list[tuple[int, str, FewShotList]], title: str, reference: dict[tuple[int, str], int]
) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title=title)
    cols = ["fold", "split", "images", "classes", "min pool", "max pool", "empty pools"]
    for col in cols + (["reference"] if reference else []):
        table.add_column(col, justify="right")
    for fold, split, lst in rows:
        sizes = [len(lst.by_class[c]) for c in lst.classes]
        cells = [
            str(fold),
            split,
            str(len(lst)),
            str(len(sizes)),
            str(min(sizes, default=0)),
            str(max(sizes, default=0)),
            ",".join(map(str, lst.empty_classes())) or "-",
        ]
        if reference:
            ref = reference.get((fold, split))
            cells.append("-" if ref is None else f"{ref} {'ok' if ref == len(lst) else 'DIFFERS'}")
        table.add_row(*cells)
    console = Console()
    console.width = max(console.width, 110)  # keep rows on one line when piped (rich defaults to 80)
    console.print(table)


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m svfseg.data.lists",
        description="Build few-shot lists for all folds (or import foreign BAM/SVF lists) and write them "
        "in the BAM/SVF layout OUT/{train,val}/{data_list,sub_class_file_list}_{fold}.txt.",
    )
    p.add_argument("--dataset", required=True, choices=sorted(LAYOUTS))
    p.add_argument("--root", required=True, help="dataset root (paths in the lists are relative to it)")
    p.add_argument("--out", required=True, help="output directory")
    p.add_argument("--folds", type=int, nargs="+", default=list(range(NUM_FOLDS)), choices=range(NUM_FOLDS))
    p.add_argument("--splits", nargs="+", default=["train", "val"], choices=["train", "val"])
    p.add_argument("--coco-split", default="interleaved", choices=COCO_SPLITS)
    p.add_argument(
        "--import",
        dest="import_dir",
        metavar="DIR",
        help="convert lists in the BAM/SVF layout under DIR (e.g. SVF's lists/pascal/fss_list) instead of building",
    )
    p.add_argument("--strip-prefix", help="with --import: prefix to remove from every path")
    build = p.add_argument_group("building")
    build.add_argument(
        "--no-filter", action="store_true", help="keep training images with novel pixels (PFENet)"
    )
    build.add_argument("--min-pixels", type=int, default=DEFAULT_MIN_PIXELS)
    build.add_argument(
        "--train-source", help="source list of candidate training pairs (default: the standard one)"
    )
    build.add_argument(
        "--val-source", help="source list of candidate validation pairs (default: the standard one)"
    )
    build.add_argument("--cache-dir")
    build.add_argument("--workers", type=int)
    build.add_argument("--no-progress", action="store_true")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    rows: list[tuple[int, str, FewShotList]] = []
    sources = {"train": args.train_source, "val": args.val_source}
    for fold in args.folds:
        for split in args.splits:
            if args.import_dir:
                lst = import_lists(
                    args.import_dir,
                    fold,
                    split,
                    args.root,
                    args.strip_prefix,
                    dataset=args.dataset,
                    coco_split=args.coco_split,
                )
            else:
                lst = build_list(
                    args.dataset,
                    args.root,
                    fold,
                    split,
                    filter_novel=not args.no_filter,
                    coco_split=args.coco_split,
                    min_pixels=args.min_pixels,
                    source_list=sources[split],
                    cache_dir=args.cache_dir,
                    workers=args.workers,
                    progress=not args.no_progress,
                )
            export_lists(lst, args.out, fold, split)
            rows.append((fold, split, lst))
    mode = f"imported from {args.import_dir}" if args.import_dir else "built"
    reference: dict[tuple[int, str], int] = {}
    standard = (
        not (args.import_dir or args.train_source or args.val_source)
        and args.min_pixels == DEFAULT_MIN_PIXELS
    )
    if args.dataset == "pascal" and standard:
        reference = {
            (f, sp): REFERENCE_PASCAL[(f, sp, sp == "train" and not args.no_filter)]
            for f in args.folds
            for sp in args.splits
        }
    _summary(rows, f"{args.dataset} lists {mode} -> {args.out}", reference)
    return 0


if __name__ == "__main__":
    sys.exit(main())
