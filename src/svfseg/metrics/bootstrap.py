"""How much of an mIoU is the sample of tested images: bootstrap intervals, and paired differences.

An FSS number is a class-wise sum over the episodes of a fixed table, and the episodes are not
independent: each seed's queries are permutations of one image list, so a 1,000-episode table over 400
images asks about each image two or three times, and every seed asks about the same images. The
bootstrap therefore resamples *query images* with replacement (each drawn image brings all of its
episodes, in every seed) and recomputes the class sums and the mIoU: the interval says how far the
number would move on another sample of as many images like these. (Resampling single episodes would
treat the repeats as new evidence and give intervals too narrow.)

Two checkpoints tested on the same episode tables are compared *paired*: every resample weighs the same
images for both, so what the images share (an easy or a hard image) cancels, and the interval of the
difference is much narrower than the two intervals suggest.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

DEFAULT_RESAMPLES = 2000
_CHUNK = 200  # resamples at a time: (chunk x episodes) weight arrays stay a few MB


@dataclass(frozen=True)
class SeedEpisodes:
    """One table's episodes: class index, foreground intersection and union (pixels), and query image.

    ``query`` names each episode's query image; episodes of one image are resampled together. Without
    it every episode is its own image.
    """

    class_idx: np.ndarray
    fg_inter: np.ndarray
    fg_union: np.ndarray
    query: tuple[str, ...] | None = field(default=None)

    def __post_init__(self) -> None:
        n = len(self.class_idx)
        lengths = {n, len(self.fg_inter), len(self.fg_union)} | (
            {len(self.query)} if self.query is not None else set()
        )
        if len(lengths) != 1 or n == 0:
            raise ValueError(f"an episode record needs equal, non-zero lengths, got {sorted(lengths)}")


def _class_sums(
    weights: np.ndarray, episodes: SeedEpisodes, num_classes: int
) -> tuple[np.ndarray, np.ndarray]:
    """(R, C) intersection and union sums when episode i counts ``weights[:, i]`` times."""
    onehot = np.zeros((len(episodes.class_idx), num_classes))
    onehot[np.arange(len(episodes.class_idx)), episodes.class_idx] = 1.0
    return (weights * episodes.fg_inter) @ onehot, (weights * episodes.fg_union) @ onehot


def weighted_miou(weights: np.ndarray, episodes: SeedEpisodes, num_classes: int) -> np.ndarray:
    """The mIoU of each row of ``weights`` (R, N): how often each episode counts; IoU 0 where a union is 0."""
    inter, union = _class_sums(weights, episodes, num_classes)
    return np.divide(inter, union, out=np.zeros_like(inter), where=union > 0).mean(axis=1)


def observed_miou(episodes: SeedEpisodes, num_classes: int) -> float:
    """The mIoU of all episodes once each (the number ``metrics.json`` reports for this seed)."""
    return float(weighted_miou(np.ones((1, len(episodes.class_idx))), episodes, num_classes)[0])


def _queries(seeds: Sequence[SeedEpisodes]) -> list[tuple[str, ...]]:
    """Each seed's query names; an episode without one is an image of its own (named by seed and position)."""
    return [
        seed.query if seed.query is not None else tuple(f"#{s}:{i}" for i in range(len(seed.class_idx)))
        for s, seed in enumerate(seeds)
    ]


def _image_index(runs: Sequence[Sequence[SeedEpisodes]]) -> tuple[int, list[np.ndarray]]:
    """The images of the first run's tables, and each seed's episode -> image position."""
    queries = _queries(runs[0])
    names = sorted({q for seed in queries for q in seed})
    position = {q: i for i, q in enumerate(names)}
    return len(names), [np.array([position[q] for q in seed]) for seed in queries]


def check_same_episodes(runs: Sequence[Sequence[SeedEpisodes]], names: Sequence[str]) -> None:
    """Runs resampled together must ask the same class about the same image in every episode of every seed;
    ``names`` says which run is which in the error."""
    first = runs[0]
    for name, run in zip(names[1:], runs[1:], strict=True):
        if len(run) != len(first):
            raise ValueError(
                f"{names[0]} and {name} were tested on {len(first)} and {len(run)} episode tables: not the same seeds"
            )
        for s, (x, y) in enumerate(zip(first, run, strict=True)):
            if not np.array_equal(x.class_idx, y.class_idx) or x.query != y.query:
                raise ValueError(
                    f"seed #{s}: {names[0]} and {name} ask other classes or images: not the same episodes"
                )


def _resampled_means(
    runs: Sequence[Sequence[SeedEpisodes]], num_classes: int, resamples: int, seed: int | Sequence[int]
) -> np.ndarray:
    """(runs, resamples): each run's mean over seeds of the mIoU, the same image draws for every run."""
    n_images, image_of = _image_index(runs)
    rng = np.random.default_rng(seed)
    out = np.zeros((len(runs), resamples))
    for start in range(0, resamples, _CHUNK):
        r = min(_CHUNK, resamples - start)
        drawn = rng.multinomial(n_images, np.full(n_images, 1.0 / n_images), size=r).astype(np.float64)
        for s, images in enumerate(image_of):
            weights = drawn[:, images]  # an episode counts as often as its query image was drawn
            for k, run in enumerate(runs):
                out[k, start : start + r] += weighted_miou(weights, run[s], num_classes) / len(image_of)
    return out


def percentile_interval(values: np.ndarray, level: float = 0.95) -> tuple[float, float]:
    """The two-sided percentile interval of resampled values."""
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
    """Percentile interval of the mean-over-seeds mIoU when the query images are resampled."""
    return percentile_interval(_resampled_means([seeds], num_classes, resamples, seed)[0], level)


@dataclass(frozen=True)
class PairedDifference:
    """mIoU of A and B (means over seeds), A - B, its interval and the share of resamples where A <= B."""

    miou_a: float
    miou_b: float
    difference: float
    interval: tuple[float, float]
    share_not_above: float
    n_episodes: int
    n_images: int
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
    """A - B on the same episodes: every resample weighs the same query images for both."""
    if len(a) != len(b) or not a:
        raise ValueError(f"paired runs need the same seeds, got {len(a)} and {len(b)} episode tables")
    check_same_episodes([a, b], ["the first run", "the second run"])
    means = _resampled_means([a, b], num_classes, resamples, seed)
    diff = means[0] - means[1]
    miou_a = float(np.mean([observed_miou(x, num_classes) for x in a]))
    miou_b = float(np.mean([observed_miou(y, num_classes) for y in b]))
    return PairedDifference(
        miou_a=miou_a,
        miou_b=miou_b,
        difference=miou_a - miou_b,
        interval=percentile_interval(diff, level),
        share_not_above=float(np.mean(diff <= 0)),
        n_episodes=sum(len(x.class_idx) for x in a),
        n_images=_image_index([a])[0],
        resamples=resamples,
    )


@dataclass(frozen=True)
class FoldRuns:
    """One fold of a table: its evaluation class count and, per row, the row's runs (one per training seed),
    each a list of per-seed episode tables. Every run of a fold was tested on the same tables."""

    num_classes: int
    rows: Sequence[Sequence[Sequence[SeedEpisodes]]]


def fold_mean_resamples(
    folds: Sequence[FoldRuns], *, resamples: int = DEFAULT_RESAMPLES, seed: int = 0
) -> np.ndarray:
    """(rows, resamples): each row's mean over folds of its mean over training seeds, as a paper table's
    mean column is, with each fold's query images resampled: the same draws for every row and training
    seed of a fold (rows are paired), independent draws for the folds (each fold tests its own images)."""
    n_rows = {len(f.rows) for f in folds}
    if len(n_rows) != 1 or not folds or any(not row for f in folds for row in f.rows):
        raise ValueError("every fold needs the same rows, each with at least one run")
    out = np.zeros((n_rows.pop(), resamples))
    for k, fold in enumerate(folds):
        runs = [run for row in fold.rows for run in row]
        means = _resampled_means(runs, fold.num_classes, resamples, [seed, k])
        start = 0
        for r, row in enumerate(fold.rows):
            out[r] += means[start : start + len(row)].mean(axis=0) / len(folds)
            start += len(row)
    return out
