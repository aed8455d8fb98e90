"""Episodes, tables, samplers and collation: determinism, class membership, supports, masks, sharding."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from svfseg.data.collate import collate_samples, pad_square_stack
from svfseg.data.episodes import (
    EpisodePools,
    EpisodeTable,
    EvalEpisodes,
    TrainEpisodes,
    base_label_lut,
    binary_mask,
    build_eval_episodes,
)
from svfseg.data.fold import FoldSpec
from svfseg.data.lists.selection import FewShotList, build_list
from svfseg.data.samplers import EpisodeSampler, ShardedEvalSampler
from svfseg.data.splits import base_classes, novel_classes
from svfseg.data.transforms import EvalTransform, TrainTransform
from svfseg.dataprep.synthetic import make_synthetic

FOLD = 0
BASE, NOVEL = base_classes("pascal", FOLD), novel_classes("pascal", FOLD)
MIN_PIXELS = 100  # the 56 px synthetic images scale the reference 2048 down
SIZE = 40


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    root = make_synthetic(
        "pascal", tmp_path_factory.mktemp("synth") / "pascal", n_train=160, n_val=120, size=56
    )
    cache = tmp_path_factory.mktemp("cache")
    kw = {"min_pixels": MIN_PIXELS, "cache_dir": cache, "workers": 0, "progress": False}
    return {
        "root": root,
        "train": build_list(FoldSpec("synthetic", FOLD), root, "train", **kw),
        "val": build_list(FoldSpec("synthetic", FOLD), root, "val", **kw),
    }


def train_set(data: dict[str, Any], shot: int = 1, seed: int = 7, **kw: Any) -> TrainEpisodes:
    return TrainEpisodes(
        data["root"], data["train"], BASE, shot, TrainTransform(SIZE), seed, num_classes=20, **kw
    )


def eval_set(data: dict[str, Any], table: EpisodeTable) -> EvalEpisodes:
    return EvalEpisodes(data["root"], table, EvalTransform(SIZE), num_classes=20)


def assert_samples_equal(a: dict[str, Any], b: dict[str, Any]) -> None:
    assert a.keys() == b.keys()
    for k in a:
        if isinstance(a[k], torch.Tensor):
            assert torch.equal(a[k], b[k]), k
        else:
            assert a[k] == b[k], k


# ------------------------------------------------------------------------------------------ labels


def test_binary_mask_and_base_label() -> None:
    label = np.array([[0, 3, 7], [255, 3, 1]], np.uint8)
    assert binary_mask(label, 3).tolist() == [[0, 1, 0], [255, 1, 0]]
    lut = base_label_lut([6, 7, 8])
    assert lut[label].tolist() == [[0, 0, 2], [255, 0, 0]]


# ------------------------------------------------------------------------------------------ training


def test_training_sample_is_pure_function_of_seed_epoch_index(data: dict[str, Any]) -> None:
    a, b = train_set(data), train_set(data)
    assert_samples_equal(a[(3, 5)], b[(3, 5)])
    assert_samples_equal(a[5], b[(0, 5)])  # a plain index is epoch 0
    other_epochs = [a[(e, 5)] for e in (4, 5)]
    assert any(not torch.equal(a[(3, 5)]["query_img"], o["query_img"]) for o in other_epochs)
    assert not torch.equal(train_set(data, seed=8)[(3, 5)]["query_img"], a[(3, 5)]["query_img"])


def test_training_episodes_use_base_classes_distinct_supports(data: dict[str, Any]) -> None:
    ds = train_set(data, shot=5)
    pools = data["train"].by_class
    for index in range(0, len(ds), 9):
        for epoch in (0, 1):
            _, _, _, supports, cls = ds.episode((epoch, index))
            query = data["train"].pairs[index]
            assert cls in BASE and query in pools[cls]
            assert len(set(supports)) == 5 and query not in supports
            assert all(s in pools[cls] for s in supports)


def test_training_draws_every_pool_class_of_a_query(data: dict[str, Any]) -> None:
    ds = train_set(data)
    multi = next(i for i, p in enumerate(data["train"].pairs) if len(ds.pools.candidates[p]) > 1)
    drawn = {ds.episode((e, multi))[4] for e in range(40)}
    assert drawn == set(ds.pools.candidates[data["train"].pairs[multi]])


def test_five_shot_sample_shapes_masks_and_base_label(data: dict[str, Any]) -> None:
    ds = train_set(data, shot=5, with_base_label=True)
    s = ds[(0, 3)]
    assert s["query_img"].shape == (3, SIZE, SIZE) and s["query_img"].dtype == torch.float32
    assert s["query_mask"].shape == (SIZE, SIZE) and s["query_mask"].dtype == torch.int64
    assert s["support_img"].shape == (5, 3, SIZE, SIZE) and s["support_mask"].shape == (5, SIZE, SIZE)
    assert BASE[s["class_idx"]] == s["class_id"] and s["episode_idx"] == 3
    for m in (s["query_mask"], s["support_mask"]):
        assert set(m.unique().tolist()) <= {0, 1, 255}
    assert (s["support_mask"] == 1).flatten(1).any(1).all()  # every support shows the class
    base = s["query_base_label"]
    assert base.shape == (SIZE, SIZE) and set(base.unique().tolist()) <= set(range(len(BASE) + 1)) | {255}
    fg = s["query_mask"] == 1
    assert fg.any() and (base[fg] == s["class_idx"] + 1).all()  # jointly transformed, aligned
    assert (base[s["query_mask"] == 255] == 255).all()


def test_pool_too_small_and_orphan_images_are_refused() -> None:
    pairs = tuple(sorted((f"JPEGImages/{i}.jpg", f"SegmentationClassAug/{i}.png") for i in range(4)))
    lst = FewShotList(pairs, {6: pairs[:3], 7: pairs[2:]})
    EpisodePools(lst, [6, 7], 1, what="t")
    with pytest.raises(ValueError, match=r"\{7: 2\}.*too small for 2-shot"):
        EpisodePools(lst, [6, 7], 2, what="t")
    with pytest.raises(ValueError, match="in no pool of classes"):
        EpisodePools(lst, [6], 1, what="t")
    with pytest.raises(ValueError, match="shot=0"):
        EpisodePools(lst, [6, 7], 0, what="t")


# ------------------------------------------------------------------------------------------ tables


def test_eval_table_is_deterministic_novel_and_valid(data: dict[str, Any]) -> None:
    val = data["val"]
    t1 = build_eval_episodes(val, NOVEL, 5, 101, seed=321)
    t2 = build_eval_episodes(val, NOVEL, 5, 101, seed=321)
    assert t1 == t2 and t1.digest() == t2.digest() and len(t1) == 101
    assert build_eval_episodes(val, NOVEL, 5, 101, seed=322).digest() != t1.digest()
    for q, c, s in zip(t1.queries, t1.class_ids, t1.supports):
        assert c in NOVEL and q in val.by_class[c] and q not in s and len(set(s)) == 5
        assert all(p in val.by_class[c] for p in s)
    # Successive permutations of the whole list: each image is queried floor or ceil(n / len) times.
    uses = np.array([t1.queries.count(p) for p in val.pairs])
    assert uses.min() == 101 // len(val) and uses.max() == -(-101 // len(val))


def test_eval_table_prefix_and_shot_stability(data: dict[str, Any]) -> None:
    val = data["val"]
    long, short = build_eval_episodes(val, NOVEL, 1, 90, 5), build_eval_episodes(val, NOVEL, 1, 30, 5)
    assert long.queries[:30] == short.queries and long.supports[:30] == short.supports
    five = build_eval_episodes(val, NOVEL, 5, 90, 5)
    assert five.queries == long.queries and five.class_ids == long.class_ids
    assert [s[0] for s in five.supports] == [s[0] for s in long.supports]


def test_eval_table_json_round_trip_and_tamper_check(data: dict[str, Any], tmp_path: Path) -> None:
    table = build_eval_episodes(data["val"], NOVEL, 2, 25, 321)
    path = table.save(tmp_path / "t" / "val.json")
    assert EpisodeTable.load(path) == table
    raw = json.loads(path.read_text())
    raw["episodes"][0][1] = next(c for c in NOVEL if c != raw["episodes"][0][1])
    path.write_text(json.dumps(raw))
    with pytest.raises(ValueError, match="does not match the content"):
        EpisodeTable.load(path)
    with pytest.raises(ValueError, match="n_episodes=0"):
        build_eval_episodes(data["val"], NOVEL, 1, 0, 321)


def test_eval_sample_carries_original_label(data: dict[str, Any]) -> None:
    table = build_eval_episodes(data["val"], NOVEL, 2, 6, 321)
    s = eval_set(data, table)[4]
    assert s["episode_idx"] == 4 and NOVEL[s["class_idx"]] == s["class_id"] == table.class_ids[4]
    assert s["support_img"].shape == (2, 3, SIZE, SIZE) and s["query_mask"].shape == (SIZE, SIZE)
    h, w = s["ori_hw"]
    ori = s["label_ori"]
    assert ori.shape == (max(h, w), max(h, w)) and (ori[:h, :w] == 1).any()
    assert set(ori.unique().tolist()) <= {0, 1, 255}


# ------------------------------------------------------------------------------------------ loaders


def _episodes(loader: DataLoader) -> dict[int, dict[str, torch.Tensor]]:
    """Per-episode tensors of every batch of a loader, keyed by episode index."""
    out: dict[int, dict[str, torch.Tensor]] = {}
    for batch in loader:
        for i, e in enumerate(batch["episode_idx"].tolist()):
            assert e not in out, f"episode {e} seen twice"
            out[e] = {k: v[i] for k, v in batch.items()}
    return out


def _same(a: dict[int, dict[str, torch.Tensor]], b: dict[int, dict[str, torch.Tensor]]) -> None:
    assert a.keys() == b.keys()
    for e in a:
        for k in a[e]:
            same = torch.equal(a[e][k], b[e][k]) if torch.is_tensor(a[e][k]) else a[e][k] == b[e][k]
            assert same, (e, k)


def test_training_batches_independent_of_workers_and_batch_size(data: dict[str, Any]) -> None:
    ds = train_set(data, shot=2)
    sub = torch.utils.data.Subset(ds, [(1, i) for i in range(12)])
    runs = []
    for workers, bs in ((0, 1), (2, 3)):
        loader = DataLoader(sub, batch_size=bs, num_workers=workers, collate_fn=collate_samples)
        runs.append(_episodes(loader))
    _same(*runs)


def test_eval_batches_independent_of_workers_batch_size_and_world_size(data: dict[str, Any]) -> None:
    table = build_eval_episodes(data["val"], NOVEL, 1, 13, 321)
    ds = eval_set(data, table)
    single = _episodes(
        DataLoader(ds, batch_size=1, sampler=ShardedEvalSampler(13), collate_fn=collate_samples)
    )
    workers = _episodes(
        DataLoader(
            ds, batch_size=3, sampler=ShardedEvalSampler(13), num_workers=2, collate_fn=collate_samples
        )
    )
    _same(single, workers)
    merged: dict[int, dict[str, torch.Tensor]] = {}
    for rank in (0, 1):
        shard = _episodes(
            DataLoader(ds, batch_size=3, sampler=ShardedEvalSampler(13, rank, 2), collate_fn=collate_samples)
        )
        assert not merged.keys() & shard.keys()
        merged.update(shard)
    assert sorted(merged) == list(range(13))  # 13 is odd: 7 + 6, every episode exactly once
    for e in merged:  # the 255 padding to a batch's largest L keeps the original label's top-left block
        h, w = single[e]["ori_hw"]
        assert torch.equal(merged[e]["label_ori"][:h, :w], single[e]["label_ori"][:h, :w])
        assert torch.equal(merged[e]["query_img"], single[e]["query_img"])


# ------------------------------------------------------------------------------------------ samplers


def test_sharded_eval_sampler_partitions_without_padding() -> None:
    for n, world in ((13, 2), (10, 3), (2, 4)):
        shards = [list(ShardedEvalSampler(n, r, world)) for r in range(world)]
        assert sorted(i for shard in shards for i in shard) == list(range(n))
        assert [len(ShardedEvalSampler(n, r, world)) for r in range(world)] == [len(s) for s in shards]
    with pytest.raises(ValueError, match="rank=2"):
        ShardedEvalSampler(5, 2, 2)


def test_episode_sampler_epochs_ranks_and_resume() -> None:
    s = EpisodeSampler(11, shuffle=True, seed=3)
    s.set_epoch(0)
    e0 = list(s)
    s.set_epoch(1)
    e1 = list(s)
    assert {e for e, _ in e0} == {0} and {e for e, _ in e1} == {1}
    assert sorted(i for _, i in e0) == list(range(11)) and [i for _, i in e0] != [i for _, i in e1]
    fresh = EpisodeSampler(11, shuffle=True, seed=3)
    fresh.set_epoch(1)
    assert list(fresh) == e1  # a resumed run at epoch 1 sees the same order
    ranks = [EpisodeSampler(11, shuffle=True, seed=3, rank=r, world_size=2) for r in (0, 1)]
    for r in ranks:
        r.set_epoch(1)
    drop = [list(r) for r in ranks]
    assert len(drop[0]) == len(drop[1]) == 5 and not set(drop[0]) & set(drop[1])
    assert set(drop[0]) | set(drop[1]) <= set(e1)
    padded = [
        list(EpisodeSampler(11, shuffle=False, seed=3, rank=r, world_size=2, drop_last=False)) for r in (0, 1)
    ]
    assert [i for _, i in padded[0]] == [0, 2, 4, 6, 8, 10] and [i for _, i in padded[1]] == [
        1,
        3,
        5,
        7,
        9,
        0,
    ]


def test_pad_square_stack_pads_with_ignore() -> None:
    out = pad_square_stack([torch.zeros(2, 2, dtype=torch.long), torch.ones(3, 3, dtype=torch.long)])
    assert out.shape == (2, 3, 3) and (out[0, 2] == 255).all() and (out[0, :, 2] == 255).all()
    with pytest.raises(ValueError, match="square"):
        pad_square_stack([torch.zeros(2, 3)])
