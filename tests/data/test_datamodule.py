"""FewShotDataModule / BaseSegDataModule: validation, setup, batch format, sharding, Lightning wiring."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import pytorch_lightning as pl
import torch
from torch import nn

from svfseg.data.base_seg import BaseSegDataModule
from svfseg.data.datamodule import FewShotDataModule
from svfseg.data.episodes import EpisodeTable
from svfseg.data.fold import FoldSpec
from svfseg.data.splits import base_classes, novel_classes
from svfseg.dataprep.synthetic import make_synthetic

BASE, NOVEL = base_classes("pascal", 0), novel_classes("pascal", 0)
SIZE = 40


@pytest.fixture(scope="module")
def root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_synthetic(
        "pascal", tmp_path_factory.mktemp("synth") / "pascal", n_train=160, n_val=120, size=56
    )


def dm(root: Path, tmp_path: Path, **kw: Any) -> FewShotDataModule:
    split = {"dataset": "synthetic", "fold": 0, "shot": 1, "coco_split": "interleaved"}
    split.update({k: kw.pop(k) for k in list(kw) if k in split})
    args: dict[str, Any] = {
        "split": FoldSpec(**split),
        "root": root,
        "train_size": SIZE,
        "eval_size": SIZE,
        "batch_size": 2,
        "eval_batch_size": 3,
        "num_workers": 0,
        "n_episodes": 11,
        "train_episodes_for_curve": 5,
        "min_pixels": 100,
        "cache_dir": tmp_path / "cache",
    }
    args.update(kw)
    return FewShotDataModule(**args)


@pytest.mark.parametrize(
    ("kw", "key"),
    [
        ({"fold": 4}, "fold=4"),
        ({"shot": 0}, "shot=0"),
        ({"dataset": "voc"}, "dataset='voc'"),
        ({"train_size": 0}, "train_size=0"),
        ({"eval_size": -3}, "eval_size=-3"),
        ({"batch_size": 0}, "batch_size=0"),
        ({"n_episodes": 0}, "n_episodes=0"),
        ({"eval_seeds": []}, "eval_seeds"),
        ({"eval_seeds": [1, 1]}, "eval_seeds"),
        ({"scale": [1.2, 0.9]}, "scale="),
        ({"coco_split": "random"}, "coco_split='random'"),
        ({"source_lists": {"test": "x.txt"}}, "source_lists="),
        ({"num_workers": -1}, "num_workers=-1"),
    ],
)
def test_invalid_arguments_fail_before_any_io(kw: dict[str, Any], key: str, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=key.replace("[", r"\[")):
        dm(tmp_path / "does-not-exist", tmp_path, **kw)


def test_missing_root_names_path_and_command(tmp_path: Path) -> None:
    module = dm(tmp_path / "nowhere", tmp_path)
    with pytest.raises(FileNotFoundError, match=r"nowhere.*python -m svfseg\.dataprep\.synthetic"):
        module.setup("fit")


@pytest.mark.parametrize("shot", [1, 5])
def test_synthetic_smoke_batches(root: Path, tmp_path: Path, shot: int) -> None:
    module = dm(root, tmp_path, shot=shot, with_base_label=True, table_dir=tmp_path / "tables")
    module.setup("fit")
    batch = next(iter(module.train_dataloader()))
    assert batch["query_img"].shape == (2, 3, SIZE, SIZE) and batch["query_img"].dtype == torch.float32
    assert batch["query_mask"].shape == (2, SIZE, SIZE) and batch["query_mask"].dtype == torch.int64
    assert batch["support_img"].shape == (2, shot, 3, SIZE, SIZE)
    assert batch["support_mask"].shape == (2, shot, SIZE, SIZE) and batch["support_mask"].dtype == torch.int64
    assert batch["query_base_label"].shape == (2, SIZE, SIZE)
    for key in ("class_idx", "class_id", "episode_idx"):
        assert batch[key].shape == (2,) and batch[key].dtype == torch.int64
    assert all(BASE[i] == c for i, c in zip(batch["class_idx"].tolist(), batch["class_id"].tolist()))

    val, curve = module.val_dataloader()
    vb = next(iter(val))
    assert vb["query_img"].shape == (3, 3, SIZE, SIZE) and vb["support_img"].shape == (3, shot, 3, SIZE, SIZE)
    assert set(vb["class_id"].tolist()) <= set(NOVEL) and len(vb["ori_hw"]) == 3
    side = max(max(hw) for hw in vb["ori_hw"])
    assert vb["label_ori"].shape == (3, side, side) and vb["label_ori"].dtype == torch.int64
    assert sum(len(b["episode_idx"]) for b in val) == 11
    cb = next(iter(curve))
    assert set(cb["class_id"].tolist()) <= set(BASE) and "label_ori" in cb
    assert set(module.table_digests) == {"val/seed321", "train_list", "train_episodes"}
    saved = EpisodeTable.load(tmp_path / "tables" / "val_seed321.json")
    assert saved.digest() == module.table_digests["val/seed321"]


def test_tables_are_stable_and_test_gives_one_loader_per_seed(root: Path, tmp_path: Path) -> None:
    a, b = dm(root, tmp_path, eval_seeds=[321, 5]), dm(root, tmp_path, eval_seeds=[321, 5], num_workers=2)
    a.setup("fit")
    b.setup("test")
    assert a.table_digests["val/seed321"] == b.table_digests["val/seed321"]
    assert a.table_digests["val/seed5"] != a.table_digests["val/seed321"]
    loaders = b.test_dataloader()
    assert (
        isinstance(loaders, list) and len(loaders) == 2 and b.train_list is None
    )  # test builds no train list


def test_ddp_shards_are_exact_and_lightning_sampler_refused(root: Path, tmp_path: Path) -> None:
    module = dm(root, tmp_path)
    module.setup("fit")
    seen: list[int] = []
    train_keys: list[set[Any]] = []
    for rank in (0, 1):
        connector = SimpleNamespace(use_distributed_sampler=False)
        module.trainer = SimpleNamespace(global_rank=rank, world_size=2, _accelerator_connector=connector)
        seen += [e for b in module.val_dataloader()[0] for e in b["episode_idx"].tolist()]
        train_keys.append(set(module.train_dataloader().sampler))
    assert sorted(seen) == list(range(11))  # 11 episodes over 2 ranks, none repeated or padded
    assert not train_keys[0] & train_keys[1]
    module.trainer = SimpleNamespace(
        global_rank=0, world_size=2, _accelerator_connector=SimpleNamespace(use_distributed_sampler=True)
    )
    with pytest.raises(RuntimeError, match="use_distributed_sampler=False"):
        module.val_dataloader()


def test_resume_with_other_seed_is_refused(root: Path, tmp_path: Path) -> None:
    module = dm(root, tmp_path)
    module.setup("fit")
    state = module.state_dict()
    same = dm(root, tmp_path)
    same.setup("fit")
    same.load_state_dict(state)
    other = dm(root, tmp_path, seed=1)
    other.setup("fit")
    with pytest.raises(ValueError, match="seed=321"):
        other.load_state_dict(state)


class _Recorder(pl.LightningModule):
    """Records the episodes each training epoch and validation loader sees."""

    def __init__(self) -> None:
        super().__init__()
        self.w = nn.Parameter(torch.zeros(1))
        self.train_seen: dict[int, list[int]] = {}
        self.val_seen: dict[int, list[int]] = {}

    def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        self.train_seen.setdefault(self.current_epoch, []).extend(batch["episode_idx"].tolist())
        return (self.w * batch["query_img"].mean()).sum()

    def validation_step(
        self, batch: dict[str, torch.Tensor], batch_idx: int, dataloader_idx: int = 0
    ) -> None:
        self.val_seen.setdefault(dataloader_idx, []).extend(batch["episode_idx"].tolist())

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=0.1)


def test_lightning_sets_epoch_and_runs_both_val_loaders(root: Path, tmp_path: Path) -> None:
    module, model = dm(root, tmp_path, batch_size=4), _Recorder()
    trainer = pl.Trainer(
        max_epochs=2,
        limit_train_batches=3,
        num_sanity_val_steps=0,
        use_distributed_sampler=False,
        accelerator="cpu",
        devices=1,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        default_root_dir=tmp_path,
    )
    trainer.fit(model, datamodule=module)
    sampler = module.train_dataloader().sampler
    expected = []
    for epoch in (0, 1):
        sampler.set_epoch(epoch)
        expected.append([i for _, i in list(sampler)[:12]])
    assert [model.train_seen[e] for e in (0, 1)] == expected and expected[0] != expected[1]
    # Validation ran after each of the 2 epochs: every episode of each table exactly once per run.
    assert sorted(model.val_seen[0]) == sorted(list(range(11)) * 2)
    assert sorted(model.val_seen[1]) == sorted(list(range(5)) * 2)


def test_base_seg_datamodule(root: Path) -> None:
    module = BaseSegDataModule(
        split=FoldSpec("synthetic", 0),
        root=root,
        train_size=SIZE,
        eval_size=SIZE,
        batch_size=2,
        eval_batch_size=3,
        num_workers=0,
    )
    module.setup("fit")
    assert module.num_seg_classes == 16 and len(module.pairs["train"]) == 160  # full list, no filtering
    batch = next(iter(module.train_dataloader()))
    assert batch["image"].shape == (2, 3, SIZE, SIZE) and batch["label"].shape == (2, SIZE, SIZE)
    assert set(batch["label"].unique().tolist()) <= set(range(16)) | {255}
    vb = next(iter(module.val_dataloader()))
    assert vb["label_ori"].shape[1:] == (56, 56) and vb["ori_hw"] == [(56, 56)] * 3
    assert set(vb["label_ori"].unique().tolist()) <= set(range(16)) | {255}
    with pytest.raises(ValueError, match="fold=7"):
        BaseSegDataModule(split=FoldSpec("synthetic", 7), root=root)
