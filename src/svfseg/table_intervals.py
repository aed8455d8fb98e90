"""``svfseg-tables DIR --image-intervals``: how far a table's mean column would move on other test images.

A paper table's mean column is the mean over the four folds of each cell's mean over training seeds. Every
run's ``episodes.json`` (beside its ``metrics.json``) holds each test episode's counts, so that mean can be
recomputed on bootstrap resamples of the query images: one draw per fold shared by every row and training
seed (rows are paired: what an easy or a hard image gives both cancels in their difference) and
independent draws for the folds (each fold tests images of its own classes). The intervals cover the sample
of tested images only; the spread over training seeds is ``--paired``'s.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from svfseg.data.splits import NUM_FOLDS
from svfseg.metrics.bootstrap import (
    DEFAULT_RESAMPLES,
    FoldRuns,
    check_same_episodes,
    fold_mean_resamples,
    observed_miou,
    percentile_interval,
)
from svfseg.metrics.episode_file import EpisodeFile, read_episodes

Cell = tuple[str, int, int]  # (row, shot, fold)


@dataclass(frozen=True)
class RowInterval:
    """One (row, shot): the mean column's value (percent), its interval and, but for the baseline row, the
    paired difference from the baseline with its interval and the share of resamples where it is <= 0."""

    row: str
    shot: int
    mean: float
    interval: tuple[float, float]
    delta: float | None = None
    delta_interval: tuple[float, float] | None = None
    share_not_above: float | None = None


def _fold_runs(files: list[list[EpisodeFile]], shot: int, fold: int) -> FoldRuns:
    """One fold's runs (per row, per training seed), checked to be tested on the same episode tables."""
    flat = [f for row_files in files for f in row_files]
    first = flat[0]
    for other in flat[1:]:
        if other.classes != first.classes or other.tables != first.tables:
            raise ValueError(
                f"{shot}-shot fold {fold}: {first.path} and {other.path} were tested on different episodes "
                "(another n_episodes, seeds, dataset.selection or data): evaluate every run of the sweep with "
                "eval.py on the same settings"
            )
    seeds = sorted(first.tables)
    check_same_episodes([[f.seeds[s] for s in seeds] for f in flat], [str(f.path) for f in flat])
    return FoldRuns(
        num_classes=len(first.classes),
        rows=[[[f.seeds[s] for s in seeds] for f in row_files] for row_files in files],
    )


def _observed(fold: FoldRuns, row: int) -> float:
    """The row's cell as the table has it: mean over training seeds of the mean over evaluation seeds."""
    runs = fold.rows[row]
    return float(np.mean([np.mean([observed_miou(s, fold.num_classes) for s in run]) for run in runs]))


def image_intervals(
    cells: Mapping[Cell, Sequence[Path]],
    rows: Sequence[str],
    baseline: str,
    *,
    resamples: int = DEFAULT_RESAMPLES,
    seed: int = 0,
    level: float = 0.95,
) -> tuple[list[RowInterval], list[str]]:
    """``cells``: each table cell's run folders (one per training seed, in seed order). Returns each
    (row, shot) that has a run in every fold, and notes naming the rows left out."""
    out: list[RowInterval] = []
    notes: list[str] = []
    folds = range(NUM_FOLDS)
    for shot in sorted({shot for _, shot, _ in cells}):
        complete = [r for r in rows if all(cells.get((r, shot, f)) for f in folds)]
        for row in rows:
            missing = [f for f in folds if not cells.get((row, shot, f))]
            if row not in complete and len(missing) < NUM_FOLDS:
                notes.append(f"{row!r} {shot}-shot: no interval, folds {missing} have no run")
        if not complete:
            continue
        fold_runs = [
            _fold_runs([[read_episodes(p) for p in cells[(r, shot, f)]] for r in complete], shot, f)
            for f in folds
        ]
        means = 100.0 * fold_mean_resamples(fold_runs, resamples=resamples, seed=seed)
        observed = [
            100.0 * float(np.mean([_observed(fr, k) for fr in fold_runs])) for k in range(len(complete))
        ]
        base = complete.index(baseline) if baseline in complete else None
        for k, row in enumerate(complete):
            item = RowInterval(row, shot, observed[k], percentile_interval(means[k], level))
            if base is not None and k != base:
                diff = means[k] - means[base]
                item = replace(
                    item,
                    delta=observed[k] - observed[base],
                    delta_interval=percentile_interval(diff, level),
                    share_not_above=float(np.mean(diff <= 0)),
                )
            out.append(item)
    return out, notes


def intervals_markdown(
    items: list[RowInterval], notes: list[str], baseline: str, *, resamples: int, level: float
) -> str:
    pct = f"{100 * level:g} %"
    lines = [
        f"Test-image intervals of the mean column: {pct} bootstrap over each fold's query images ({resamples} "
        "resamples; the folds drawn independently, the rows paired on the same draws)",
        "",
        f"| setting | shot | mean | {pct} interval | delta from {baseline!r} | {pct} interval | delta <= 0 in |",
        "|---|---|---|---|---|---|---|",
    ]
    for it in items:
        cells = [it.row, str(it.shot), f"{it.mean:.2f}", f"[{it.interval[0]:.2f}, {it.interval[1]:.2f}]"]
        if it.delta is None or it.delta_interval is None or it.share_not_above is None:
            cells += ["", "", ""]
        else:
            lo, hi = it.delta_interval
            cells += [f"{it.delta:+.2f}", f"[{lo:+.2f}, {hi:+.2f}]", f"{100 * it.share_not_above:.1f} %"]
        lines.append("| " + " | ".join(cells) + " |")
    lines += [f"note: {n}" for n in notes]
    return "\n".join(lines)
