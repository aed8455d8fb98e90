"""How much of an mIoU is the episode draw: bootstrap intervals over episodes, and paired differences.

FSS numbers are class-wise sums over a fixed draw of episodes, and another draw moves them by about a
point (hence BAM's five seeds). Resampling the episodes with replacement, and recomputing the class sums
and the mIoU for each resample, says how far the draw alone moves a number. Two checkpoints evaluated
on the same episode tables can be compared *paired*: every resample takes the same episodes for both,
so what the episodes share cancels and the interval of the difference is much narrower than the two
intervals suggest.

Per seed, an episode record holds ``class_idx`` (the class's position in the evaluation class list) and
the foreground intersection and union in pixels. Several seeds are resampled each within its own table
and their mIoUs averaged, as ``metrics.json`` averages the seeds.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

DEFAULT_RESAMPLES = 2000
_CHUNK = 250  # resamples at a time: (chunk x episodes) index arrays stay a few MB


@dataclass(frozen=True)
class SeedEpisodes:
    """The foreground counts of one table's episodes (numpy int64 arrays of one length)."""

    class_idx: np.ndarray
    fg_inter: np.ndarray
    fg_union: np.ndarray

    def __post_init__(self) -> None:
        n = len(self.class_idx)
        if len(self.fg_inter) != n or len(self.fg_union) != n or n == 0:
            raise ValueError(
                f"episode records need equal, non-zero lengths, got {n}, {len(self.fg_inter)}, {len(self.fg_union)}"
            )


def resampled_miou(episodes: SeedEpisodes, num_classes: int, idx: np.ndarray) -> np.ndarray:
    """The mIoU of each row of ``idx`` (R, N): episode indices of one resample; IoU 0 where a union is 0."""
    r = idx.shape[0]
    cell = (np.arange(r)[:, None] * num_classes + episodes.class_idx[idx]).ravel()
    size = r * num_classes
    inter = np.bincount(cell, weights=episodes.fg_inter[idx].ravel(), minlength=size).reshape(r, num_classes)
    union = np.bincount(cell, weights=episodes.fg_union[idx].ravel(), minlength=size).reshape(r, num_classes)
    return np.divide(inter, union, out=np.zeros_like(inter), where=union > 0).mean(axis=1)


def observed_miou(episodes: SeedEpisodes, num_classes: int) -> float:
    """The mIoU of all episodes (the number ``metrics.json`` reports for this seed)."""
    return float(resampled_miou(episodes, num_classes, np.arange(len(episodes.class_idx))[None, :])[0])


def _resampled_means(
    runs: Sequence[Sequence[SeedEpisodes]], num_classes: int, resamples: int, seed: int
) -> np.ndarray:
    """(runs, resamples): each run's mean over seeds of the resampled mIoU, with shared episode draws."""
    rng = np.random.default_rng(seed)
    out = np.zeros((len(runs), resamples))
    for start in range(0, resamples, _CHUNK):
        r = min(_CHUNK, resamples - start)
        for s, first in enumerate(runs[0]):
            idx = rng.integers(0, len(first.class_idx), size=(r, len(first.class_idx)))
            for k, run in enumerate(runs):
                out[k, start : start + r] += resampled_miou(run[s], num_classes, idx) / len(runs[0])
    return out


def _interval(values: np.ndarray, level: float) -> tuple[float, float]:
    lo, hi = np.quantile(values, [(1 - level) / 2, (1 + level) / 2])
    return float(lo), float(hi)


def bootstrap_interval(
    seeds: Sequence[SeedEpisodes],
    num_classes: int,
    *,
    resamples: int = DEFAULT_RESAMPLES,
    seed: int = 0,
    level: float = 0.95,
) -> tuple[float, float]:
    """Percentile interval of the mean-over-seeds mIoU under resampling each seed's episodes."""
    return _interval(_resampled_means([seeds], num_classes, resamples, seed)[0], level)


@dataclass(frozen=True)
class PairedDifference:
    """mIoU of A and B (means over seeds), A - B, its interval and the share of resamples where A <= B."""

    miou_a: float
    miou_b: float
    difference: float
    interval: tuple[float, float]
    share_not_above: float
    n_episodes: int
    resamples: int


def paired_difference(
    a: Sequence[SeedEpisodes],
    b: Sequence[SeedEpisodes],
    num_classes: int,
    *,
    resamples: int = DEFAULT_RESAMPLES,
    seed: int = 0,
    level: float = 0.95,
) -> PairedDifference:
    """A - B on the same episodes: every resample draws the same episodes of each seed for both."""
    if len(a) != len(b) or not a:
        raise ValueError(f"paired runs need the same seeds, got {len(a)} and {len(b)} episode tables")
    for s, (x, y) in enumerate(zip(a, b, strict=True)):
        if not np.array_equal(x.class_idx, y.class_idx):
            raise ValueError(
                f"seed #{s}: the two runs' episodes ask for different classes: not the same episodes"
            )
    means = _resampled_means([a, b], num_classes, resamples, seed)
    diff = means[0] - means[1]
    miou_a = float(np.mean([observed_miou(x, num_classes) for x in a]))
    miou_b = float(np.mean([observed_miou(y, num_classes) for y in b]))
    return PairedDifference(
        miou_a=miou_a,
        miou_b=miou_b,
        difference=miou_a - miou_b,
        interval=_interval(diff, level),
        share_not_above=float(np.mean(diff <= 0)),
        n_episodes=sum(len(x.class_idx) for x in a),
        resamples=resamples,
    )
