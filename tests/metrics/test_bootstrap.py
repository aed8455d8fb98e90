"""Per-episode records of FewShotIoU, the bootstrap over episodes, and the paired comparison."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch

from svfseg.metrics import FewShotIoU
from svfseg.metrics.bootstrap import (
    SeedEpisodes,
    bootstrap_interval,
    observed_miou,
    paired_difference,
    weighted_miou,
)
from svfseg.metrics.episode_file import TableInfo, episodes_record, seed_episodes, with_intervals
from tests.metrics.test_metrics import random_episodes, ref_intersection_union


def _feed_indexed(metric: FewShotIoU, episodes, order, batch: int) -> None:
    for s in range(0, len(order), batch):
        chunk = order[s : s + batch]
        metric.update(
            torch.tensor(np.stack([episodes[i][0] for i in chunk])),
            torch.tensor(np.stack([episodes[i][1] for i in chunk])),
            torch.tensor([episodes[i][2] for i in chunk]),
            torch.tensor(chunk),
        )


def _compute(metric: FewShotIoU) -> dict:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return metric.compute()


def test_kept_episodes_are_each_episodes_counts_in_episode_order_on_any_sharding() -> None:
    episodes = random_episodes(17, num_classes=4, seed=5)
    order = [int(i) for i in np.random.default_rng(1).permutation(17)]
    whole = FewShotIoU(4, keep_episodes=True)
    _feed_indexed(whole, episodes, order, batch=3)
    got = _compute(whole)["episodes"]
    assert got["index"].tolist() == list(range(17))
    for i, (pred, target, c) in enumerate(episodes):
        inter, union = ref_intersection_union(pred, target)  # the reference code's histogram rule
        assert got["class_idx"][i] == c
        assert got["inter"][i].tolist() == inter.tolist() and got["union"][i].tolist() == union.tolist()
    # the class sums of the records are the metric's own states
    fg_inter = torch.zeros(4, dtype=torch.int64).index_add_(0, got["class_idx"], got["inter"][:, 1])
    assert torch.equal(fg_inter, whole.fg_inter)
    # two shards merged (what DDP's gather does) give the same records
    a, b = FewShotIoU(4, keep_episodes=True), FewShotIoU(4, keep_episodes=True)
    _feed_indexed(a, episodes, order[::2], batch=2)
    _feed_indexed(b, episodes, order[1::2], batch=4)
    a.merge_state(b)
    merged = _compute(a)["episodes"]
    for key in got:
        assert torch.equal(merged[key], got[key]), key
    # and the plain metric is unchanged: no per-episode state unless asked
    assert "episodes" not in _compute(FewShotIoU(4)) and not hasattr(FewShotIoU(4), "ep_index")


def test_keeping_episodes_needs_their_indices() -> None:
    t = torch.tensor([[[1, 0]]])
    with pytest.raises(ValueError, match="needs episode_idx"):
        FewShotIoU(1, keep_episodes=True).update(t, t, torch.tensor([0]))


def _random_seed_episodes(n: int, classes: int, seed: int, images: int | None = None) -> SeedEpisodes:
    rng = np.random.default_rng(seed)
    union = rng.integers(0, 400, n)
    union[rng.random(n) < 0.1] = 0  # some episodes without foreground anywhere
    inter = (union * rng.random(n)).astype(np.int64)
    query = None if images is None else tuple(f"img{int(i)}" for i in rng.integers(0, images, n))
    return SeedEpisodes(rng.integers(0, classes, n), inter, union, query)


def test_a_weighted_miou_is_the_class_sums_of_its_episodes_counted_by_weight() -> None:
    ep = _random_seed_episodes(40, 5, seed=0)
    weights = np.random.default_rng(3).integers(0, 4, size=(6, 40)).astype(float)
    got = weighted_miou(weights, ep, 5)
    for r in range(6):  # a plain loop: episode i added weights[r, i] times
        inter, union = np.zeros(5), np.zeros(5)
        for i in range(40):
            for _ in range(int(weights[r, i])):
                inter[ep.class_idx[i]] += ep.fg_inter[i]
                union[ep.class_idx[i]] += ep.fg_union[i]
        want = np.mean([inter[c] / union[c] if union[c] > 0 else 0.0 for c in range(5)])
        assert got[r] == pytest.approx(want, abs=1e-12)


def test_the_observed_miou_is_the_metrics_miou_and_the_file_holds_the_queries() -> None:
    episodes = random_episodes(23, num_classes=3, seed=7)
    metric = FewShotIoU(3, keep_episodes=True)
    _feed_indexed(metric, episodes, list(range(23)), batch=5)
    values = _compute(metric)
    queries = [f"JPEGImages/{k % 9:04d}.jpg" for k in range(23)]
    record = episodes_record({321: values}, {321: TableInfo("digest", queries)}, [6, 7, 8])
    one = record["seeds"]["321"]
    assert record["classes"] == [6, 7, 8] and one["table"] == "digest" and one["query"] == queries
    assert one["index"] == list(range(23)) and sum(one["fg_union"]) == int(metric.fg_union.sum())
    assert observed_miou(seed_episodes(one), 3) == pytest.approx(float(values["miou"]), abs=1e-6)
    metrics = {"per_seed": {"321": {}}}
    with_intervals(metrics, record)
    lo, hi = metrics["miou_ci95"]
    assert metrics["per_seed"]["321"]["miou_ci95"] == [lo, hi] and lo <= float(values["miou"]) <= hi


def test_the_interval_is_reproducible_and_holds_the_observed_value() -> None:
    seeds = [_random_seed_episodes(200, 4, seed=s) for s in (1, 2)]
    lo, hi = bootstrap_interval(seeds, 4, resamples=500, seed=0)
    assert (lo, hi) == bootstrap_interval(seeds, 4, resamples=500, seed=0)
    observed = np.mean([observed_miou(s, 4) for s in seeds])
    assert lo < observed < hi and 0 < hi - lo < 0.2
    # one class whose episodes are all alike: every resample has the same mIoU
    same = SeedEpisodes(np.zeros(50, dtype=np.int64), np.full(50, 30), np.full(50, 120))
    assert bootstrap_interval([same], 1, resamples=200) == (0.25, 0.25)


def test_episodes_of_one_image_are_resampled_together() -> None:
    """The same 40 episodes asked twice each (two seeds over one image list): resampling images keeps the
    interval of one pass, where resampling the 80 episodes as if independent would shrink it by ~1.4."""
    one = _random_seed_episodes(40, 3, seed=4, images=None)
    once = SeedEpisodes(one.class_idx, one.fg_inter, one.fg_union, tuple(f"img{i}" for i in range(40)))
    lo1, hi1 = bootstrap_interval([once], 3, resamples=2000)
    lo2, hi2 = bootstrap_interval([once, once], 3, resamples=2000)  # every image in both seeds
    assert (lo2, hi2) == (lo1, hi1)  # each draw weighs an image in both seeds alike: the same resamples
    doubled = SeedEpisodes(
        np.tile(one.class_idx, 2), np.tile(one.fg_inter, 2), np.tile(one.fg_union, 2), once.query * 2
    )
    lo3, hi3 = bootstrap_interval([doubled], 3, resamples=2000)  # one table asking each image twice
    assert (lo3, hi3) == pytest.approx((lo1, hi1))  # each image counted twice: every resample the same
    independent = SeedEpisodes(doubled.class_idx, doubled.fg_inter, doubled.fg_union)  # no query names
    lo4, hi4 = bootstrap_interval([independent], 3, resamples=2000)
    assert (hi4 - lo4) < 0.85 * (hi1 - lo1)
    # without names, the episodes of two seeds are different images too (not episode i of each seed)
    lo5, hi5 = bootstrap_interval([one, one], 3, resamples=2000)
    assert (hi5 - lo5) < 0.85 * (hi1 - lo1)


def test_paired_difference_cancels_what_two_runs_share() -> None:
    a = [_random_seed_episodes(300, 5, seed=s, images=120) for s in (1, 2)]
    self_pair = paired_difference(a, a, 5, resamples=300)
    assert (
        self_pair.difference == 0.0 and self_pair.interval == (0.0, 0.0) and self_pair.share_not_above == 1.0
    )
    # B loses 3 foreground pixels of intersection on every episode that has some: A is better on every draw
    b = [SeedEpisodes(s.class_idx, np.maximum(s.fg_inter - 3, 0), s.fg_union, s.query) for s in a]
    result = paired_difference(a, b, 5, resamples=300)
    assert result.difference > 0 and result.interval[0] > 0 and result.share_not_above == 0.0
    assert result.n_episodes == 600 and result.n_images == len({q for s in a for q in s.query or ()})
    # the paired interval is far narrower than A's own interval
    lo, hi = bootstrap_interval(a, 5, resamples=300)
    assert result.interval[1] - result.interval[0] < (hi - lo) / 5
    other = [SeedEpisodes(np.roll(s.class_idx, 1), s.fg_inter, s.fg_union, s.query) for s in a]
    with pytest.raises(ValueError, match="not the same episodes"):
        paired_difference(a, other, 5, resamples=300)
