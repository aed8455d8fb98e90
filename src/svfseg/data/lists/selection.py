"""Few-shot image lists per fold: which images train/evaluate, and each class's support pool.

Rule (BAM/SVF ``make_dataset``): a class counts for an image when it covers ``>= min_pixels`` (2*32*32)
pixels of the label at original resolution. Training pools use the fold's base classes, evaluation
pools its novel classes. The leakage filter (default for training) drops every training image holding
any pixel of any novel class; without it the lists are PFENet-style. An image enters the list when at
least one of its classes counts, and joins the pool of each class that counts.

:func:`build_list` reads the per-label counts from :mod:`svfseg.data.lists.label_index` and caches each fold's
result under ``ROOT/.svfseg_cache`` or ``cache_dir`` (keyed by every input that changes it).
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from svfseg.data.checks import missing_root_message
from svfseg.data.fold import FoldSpec
from svfseg.data.layouts import (
    Layout,
    Pair,
    check_split,
    default_source,
    get_layout,
    read_source_file,
)
from svfseg.data.lists.cache import CACHE_VERSION, json_sha256, load_cache, resolve_cache_dir, write_cache
from svfseg.data.lists.label_index import scan_counts, stat_labels

log = logging.getLogger(__name__)

DEFAULT_MIN_PIXELS = 2 * 32 * 32


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


def list_digest(lst: FewShotList) -> str:
    """sha256 of a list's content, recorded so a resume can prove it sees the same training data."""
    return json_sha256(lst.to_json())


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


def pool_classes(fold: FoldSpec, split: str) -> tuple[list[int], list[int]]:
    """(pool classes, novel classes) of a fold: base classes for train, novel classes for val."""
    check_split(split)
    return list(fold.classes(split)), list(fold.novel_classes)


def _check_root(layout: Layout, root: str | Path) -> Path:
    path = Path(root).expanduser()
    if not path.is_dir():
        raise FileNotFoundError(missing_root_message(f"dataset root {path}", path, layout.hint(path)))
    return path.resolve()


def build_list(
    fold: FoldSpec,
    root: str | Path,
    split: str,
    *,
    filter_novel: bool | None = None,
    min_pixels: int = DEFAULT_MIN_PIXELS,
    source_list: str | Path | None = None,
    cache_dir: str | Path | None = None,
    workers: int | None = None,
    progress: bool = True,
) -> FewShotList:
    """The few-shot list of a fold and split (``train``/``val``), from cache when nothing changed.

    ``fold``: the run's :class:`FoldSpec` (dataset ``pascal``, ``coco``, ``synthetic`` (Pascal layout and
    folds, lists in ``ROOT/lists``) or ``folder`` (``FoldSpec.for_folder``), fold, COCO split).
    ``filter_novel`` defaults to True for train and is ignored for val (evaluation lists never filter).
    ``source_list`` replaces the dataset's standard candidate pairs. ``workers``: processes reading
    labels (None: up to 8; 0 or 1: in-process).
    """
    layout = get_layout(fold.dataset)
    pool, novel = pool_classes(fold, split)
    num_classes = fold.num_classes
    if isinstance(min_pixels, bool) or not isinstance(min_pixels, int) or min_pixels < 1:
        raise ValueError(f"min_pixels={min_pixels!r}: expected a positive integer (the SVF repo: 2048)")
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
    stats = stat_labels(root_path, source.pairs, hint)
    cache = resolve_cache_dir(root_path, cache_dir)
    identity = {
        "dataset": layout.name,
        "root": str(root_path),
        "source": source.origin,
        "fold": fold.fold,
        "split": split,
        "filter": use_filter,
        "min_pixels": min_pixels,
        "coco_split": fold.coco_split if layout.split_dataset == "coco" else None,
        # a folder's classes are its own: a new folds.json or classes.txt makes another list
        **({"classes": fold.fold_record()} if fold.folds else {}),
    }
    # One file per configuration (a changed input overwrites it); the key says whether it is current.
    key = json_sha256(
        {
            **identity,
            "version": CACHE_VERSION,
            "fingerprint": source.fingerprint,
            "labels": json_sha256(sorted((lb, *st) for lb, st in stats.items())),
        }
    )
    path = cache / f"list-{layout.name}-{split}-fold{fold.fold}-{json_sha256(identity)[:16]}.json"
    cached = load_cache(path)
    if cached is not None and cached.get("key") == key:
        try:
            return FewShotList.from_json(cached["list"])
        except (KeyError, TypeError, ValueError) as exc:
            log.warning("ignoring malformed cache file %s (%s)", path, exc)
    counts = scan_counts(
        layout, root_path, source, stats, cache, workers=workers, progress=progress, num_classes=num_classes
    )
    result = select_pairs(source.pairs, counts, pool, novel, filter_novel=use_filter, min_pixels=min_pixels)
    if result.empty_classes():
        log.warning(
            "%s fold %d %s: no image has >= %d pixels of classes %s; episodes of those classes cannot be drawn",
            layout.name,
            fold.fold,
            split,
            min_pixels,
            result.empty_classes(),
        )
    write_cache(
        path, {"version": CACHE_VERSION, "key": key, "source": source.origin, "list": result.to_json()}
    )
    return result
