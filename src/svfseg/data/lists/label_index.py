"""Per-label class pixel counts, the one input of the list rule, read in parallel and cached on disk.

Every label is read once: its counts are cached in one JSON file per (dataset, root, source list origin)
that every fold reuses, and an entry stays valid while its label keeps its (mtime_ns, size).
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from multiprocessing import get_context
from pathlib import Path
from typing import Any

from svfseg.data import io as data_io
from svfseg.data.job_progress import progress_bar
from svfseg.data.layouts import Layout, Pair, SourceList
from svfseg.data.lists.cache import CACHE_VERSION, json_sha256, load_cache, write_cache

_SERIAL_BELOW = 256  # fewer labels than this are read in-process: pool start-up would cost more


def stat_labels(root: Path, pairs: Sequence[Pair], hint: str) -> dict[str, tuple[int, int]]:
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
            data_io.pair_size_message(Path(root) / image, image_shape, Path(root) / label, shape)
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
    num_classes: int | None = None,
) -> dict[str, dict[int, int]]:
    """Per-label class pixel counts, re-reading only labels that are new or changed since the cache.

    ``num_classes``: the highest valid class id (default: the layout's; a folder dataset gives its own).

    A cached entry is valid while its label file keeps its (mtime_ns, size); the file is per (dataset,
    root, source origin), so every fold and an edited source list reuse the same scan.
    """
    key = json_sha256({"dataset": layout.name, "root": str(root), "source": source.origin})
    path = cache_dir / f"counts-{layout.name}-{key[:16]}.json"
    cached = load_cache(path)
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
            tasks.append((str(root), image, label, num_classes or layout.num_classes, layout.hint(root)))
        seen.add(label)
    if tasks:
        counts.update(_run_counts(tasks, workers, progress, f"reading {len(tasks)} {layout.name} labels"))
        labels = {lb: [*stats[lb], {str(c): n for c, n in counts[lb].items()}] for lb in stats}
        write_cache(
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
