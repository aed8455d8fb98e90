"""LightningDataModule for few-shot training and exact-N episode evaluation.

Samplers are built here from the trainer's rank and world size, so run Lightning with
``use_distributed_sampler=False`` (refused otherwise under DDP: Lightning would shard our shards again).
Training order and samples depend only on ``(seed, epoch, index)``; evaluation episodes are fixed tables
built in :meth:`setup`, hashed (``table_digests``) and sharded without padding.

Loaders: ``val_dataloader`` returns ``[novel-class episodes of the first eval seed, base-class "train
episodes"]`` (the second one feeds the train-episodes mIoU curve of the paper's Figs 2, 3, 7, and is left
out when ``train_episodes_for_curve=0``). Validation uses only the first eval seed, as the SVF repo
selects its checkpoint on one fixed 1000-episode draw; ``test_dataloader`` gives one loader per eval seed.
With ``selection=held_out`` the validation episodes come from one half of the novel-class images and the
test episodes from the other (:mod:`svfseg.data.lists.held_out`).

Resume: ``state_dict`` records the training position (epoch, all-rank positions consumed) read from the
trainer's batch progress when a checkpoint is written; a resumed run's sampler starts that epoch after
those positions, so a run killed mid-epoch continues with exactly the episodes it had not yet seen. The
training loader (:class:`~svfseg.data.loaders.ResumableEpisodeLoader`) carries the same position for
Lightning's loop state.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from torch.utils.data import DataLoader

from svfseg.data.checks import check_int, check_root, check_scale
from svfseg.data.episodes import (
    EpisodeDataError,
    EpisodeTable,
    EvalEpisodes,
    TrainEpisodes,
    build_eval_episodes,
)
from svfseg.data.fold import FoldSpec
from svfseg.data.lists.held_out import DEFAULT_SELECTION, check_selection, split_held_out
from svfseg.data.lists.selection import DEFAULT_MIN_PIXELS, FewShotList, build_list, list_digest
from svfseg.data.loaders import FoldDataModule, rank_and_world
from svfseg.data.samplers import EpisodeSampler
from svfseg.data.transforms import SCALE_RANGES, EvalTransform, TrainTransform

log = logging.getLogger(__name__)


class FewShotDataModule(FoldDataModule):
    """Few-shot episodes of one dataset, fold and shot.

    Args:
        split: dataset (``pascal`` | ``coco`` | ``synthetic``: Pascal layout, 20 classes, lists in
            ``ROOT/lists``), fold, shot, COCO class split and the fold's classes (:class:`FoldSpec`).
        root: dataset root.
        train_size: training crop side (473 Pascal, 641 COCO). eval_size: evaluation canvas side.
        batch_size, eval_batch_size: per process.
        seed: training sampler/episode seed. eval_seeds: one episode table per seed (first: validation).
        n_episodes: evaluation episodes per seed (BAM/SVF repos: 1000; paper Table 11 COCO also 4000/5000).
        train_episodes_for_curve: size of the base-class episode table for the train-episodes curve (0: none).
        filter_novel: leakage filter on training lists.
        min_pixels: pool threshold. source_lists: optional ``{"train": path, "val": path}``.
        cache_dir: list cache folder (default ``ROOT/.svfseg_cache``).
        with_base_label: add BAM's ``query_base_label`` to training batches.
        scale: training scale range; default per dataset (Pascal [0.9, 1.1], COCO [0.8, 1.25]).
        table_dir: if set, every episode table is also written there as ``<name>.json``.
        selection: which episodes choose the best checkpoint (:mod:`svfseg.data.lists.held_out`):
            ``test_episodes`` (the paper's protocol: validation = the first eval seed's test episodes),
            ``held_out`` (validation on one half of the novel-class images, testing on the other) or
            ``last`` (the validation episodes are the test episodes; train.py tests the last weights).
    """

    def __init__(
        self,
        split: FoldSpec,
        root: str | Path = "data/VOCdevkit/VOC2012",
        train_size: int = 473,
        eval_size: int = 473,
        batch_size: int = 8,
        eval_batch_size: int = 8,
        num_workers: int = 8,
        seed: int = 321,
        eval_seeds: Sequence[int] = (321,),
        n_episodes: int = 1000,
        train_episodes_for_curve: int = 200,
        filter_novel: bool = True,
        min_pixels: int = DEFAULT_MIN_PIXELS,
        source_lists: Mapping[str, Any] | None = None,
        cache_dir: str | Path | None = None,
        with_base_label: bool = False,
        scale: Sequence[float] | None = None,
        persistent_workers: bool = False,
        pin_memory: bool = False,
        table_dir: str | Path | None = None,
        selection: str = DEFAULT_SELECTION,
    ) -> None:
        super().__init__(
            split,
            root,
            train_size=train_size,
            eval_size=eval_size,
            batch_size=batch_size,
            eval_batch_size=eval_batch_size,
            num_workers=num_workers,
            seed=seed,
            source_lists=source_lists,
            persistent_workers=persistent_workers,
            pin_memory=pin_memory,
        )
        seeds = list(eval_seeds) if not isinstance(eval_seeds, (int, str)) else [eval_seeds]
        if not seeds:
            raise ValueError("eval_seeds=[] is invalid: give at least one seed, e.g. [321]")
        self.eval_seeds = [check_int(f"eval_seeds[{i}]", s, low=0) for i, s in enumerate(seeds)]
        if len(set(self.eval_seeds)) != len(self.eval_seeds):
            raise ValueError(f"eval_seeds={self.eval_seeds} has repeats: each seed is one episode table")
        self.n_episodes = check_int("n_episodes", n_episodes)
        self.train_episodes_for_curve = check_int("train_episodes_for_curve", train_episodes_for_curve, low=0)
        self.filter_novel = bool(filter_novel)
        self.min_pixels = check_int("min_pixels", min_pixels)
        self.cache_dir = cache_dir
        self.with_base_label = bool(with_base_label)
        default_scale = SCALE_RANGES.get(self.dataset, SCALE_RANGES["pascal"])
        self.scale = check_scale("scale", scale) if scale is not None else default_scale
        self.table_dir = Path(table_dir) if table_dir is not None else None
        self.selection = check_selection(selection)
        self.novel_classes = list(split.novel_classes)
        self.train_list: FewShotList | None = None
        self.val_list: FewShotList | None = None  # the test episodes' list (held_out: its test half)
        self.val_tables: dict[int, EpisodeTable] = {}  # the test episodes per eval seed
        self.selection_table: EpisodeTable | None = None  # held_out only: the episodes that choose best.ckpt
        self.train_curve_table: EpisodeTable | None = None
        self.table_digests: dict[str, str] = {}
        self._train_set: TrainEpisodes | None = None

    # -------------------------------------------------------------- setup
    @property
    def num_classes(self) -> int:
        return self.split.num_classes

    def _hint(self) -> str:
        return self.layout.hint(self.root)

    def _build_list(self, split: str) -> FewShotList:
        return build_list(
            self.split,
            self.root,
            split,
            filter_novel=self.filter_novel,
            min_pixels=self.min_pixels,
            source_list=self.source_lists.get(split),
            cache_dir=self.cache_dir,
            progress=False,
        )

    def _add_table(self, name: str, table: EpisodeTable) -> EpisodeTable:
        self.table_digests[name] = table.digest()
        if self.table_dir is not None:
            table.save(self.table_dir / f"{name.replace('/', '_')}.json")
        return table

    def setup(self, stage: str | None = None) -> None:
        """Build the lists and the evaluation episode tables (cached lists make this cheap after the first run)."""
        check_root(self.dataset, self.root)
        if self.val_list is None:
            val_list = self._build_list("val")
            prefix = "val"
            if self.selection == "held_out":
                names = self.split.class_names()
                selection_list, val_list = split_held_out(val_list, self.novel_classes, self.shot, names)
                table = build_eval_episodes(
                    selection_list, self.novel_classes, self.shot, self.n_episodes, self.eval_seeds[0]
                )
                self.selection_table = self._add_table(f"selection/seed{self.eval_seeds[0]}", table)
                prefix = "test"
            self.val_list = val_list
            for s in self.eval_seeds:
                table = build_eval_episodes(self.val_list, self.novel_classes, self.shot, self.n_episodes, s)
                self.val_tables[s] = self._add_table(f"{prefix}/seed{s}", table)
        # Testing needs only novel-class episodes; every other stage also trains or draws the train curve.
        if stage != "test" and self.train_list is None:
            self.train_list = self._build_list("train")
            self.table_digests["train_list"] = list_digest(self.train_list)
            if self.train_episodes_for_curve > 0:
                table = build_eval_episodes(
                    self.train_list,
                    self.base_classes,
                    self.shot,
                    self.train_episodes_for_curve,
                    self.eval_seeds[0],
                )
                self.train_curve_table = self._add_table("train_episodes", table)
        self._check_restored()

    def _require(self, what: str) -> None:
        raise RuntimeError(
            f"{what} is not built: call datamodule.setup() (the Trainer does) before asking for loaders"
        )

    # -------------------------------------------------------------- datasets
    def train_dataset(self) -> TrainEpisodes:
        if self.train_list is None:
            self._require("the training list")
        assert self.train_list is not None
        if self._train_set is None:
            self._train_set = TrainEpisodes(
                self.root,
                self.train_list,
                self.base_classes,
                self.shot,
                TrainTransform(self.train_size, self.scale),
                self.seed,
                num_classes=self.num_classes,
                with_base_label=self.with_base_label,
                hint=self._hint(),
            )
        return self._train_set

    def eval_dataset(self, table: EpisodeTable) -> EvalEpisodes:
        return EvalEpisodes(
            self.root, table, EvalTransform(self.eval_size), num_classes=self.num_classes, hint=self._hint()
        )

    def val_table(self, seed: int | None = None) -> EpisodeTable:
        """The novel-class table of ``seed`` (default: the first eval seed), built on first use."""
        if self.val_list is None:
            self._require("the validation list")
        assert self.val_list is not None
        seed = self.eval_seeds[0] if seed is None else check_int("seed", seed, low=0)
        if seed not in self.val_tables:
            table = build_eval_episodes(self.val_list, self.novel_classes, self.shot, self.n_episodes, seed)
            prefix = "test" if self.selection == "held_out" else "val"
            self.val_tables[seed] = self._add_table(f"{prefix}/seed{seed}", table)
        return self.val_tables[seed]

    # -------------------------------------------------------------- loaders
    def train_dataloader(self) -> DataLoader:
        ds = self.train_dataset()
        rank, world = rank_and_world(self)
        sampler = EpisodeSampler(
            len(ds), shuffle=True, seed=self.seed, rank=rank, world_size=world, drop_last=True
        )
        if len(sampler) < self.batch_size:
            raise EpisodeDataError(
                f"batch_size={self.batch_size} exceeds the {len(sampler)} training queries per process "
                f"({len(ds)} in the list, world size {world}); with drop_last no batch would be formed"
            )
        return self.train_loader(ds, sampler)

    def eval_dataloader(self, seed: int | None = None) -> DataLoader:
        """Novel-class test episodes of one eval seed (default: the first), for scripts that loop over seeds."""
        return self.eval_loader(self.eval_dataset(self.val_table(seed)))

    def selection_dataloader(self) -> DataLoader:
        """The novel-class episodes that choose the best checkpoint (validation during fit).

        ``held_out``: episodes of the selection half, never tested; otherwise the first eval seed's test episodes.
        """
        if self.selection_table is None:
            return self.eval_dataloader()
        return self.eval_loader(self.eval_dataset(self.selection_table))

    def train_eval_dataloader(self) -> DataLoader:
        """Fixed base-class episodes on the training list (eval transforms), for the train-episodes curve."""
        if self.train_curve_table is None:
            self._require("the train-episodes table (train_episodes_for_curve > 0 and setup('fit'))")
        assert self.train_curve_table is not None
        return self.eval_loader(self.eval_dataset(self.train_curve_table))

    def val_dataloader(self) -> DataLoader | list[DataLoader]:
        val = self.selection_dataloader()
        if self.train_curve_table is None:
            return val
        return [val, self.train_eval_dataloader()]

    def test_dataloader(self) -> DataLoader | list[DataLoader]:
        loaders = [self.eval_dataloader(s) for s in self.eval_seeds]
        return loaders[0] if len(loaders) == 1 else loaders

    # -------------------------------------------------------------- resume
    def state_dict(self) -> dict[str, Any]:
        """The shared resume state, plus the digests of the training list and episode tables."""
        return {**super().state_dict(), "table_digests": dict(self.table_digests)}

    def _check_restored(self) -> None:
        """Refuse a resume whose training data order would differ; warn when evaluation episodes differ."""
        super()._check_restored()
        if self._restored is None:
            return
        old = self._restored.get("table_digests", {})
        for name, digest in self.table_digests.items():
            if name in old and old[name] != digest:
                if name == "train_list":
                    raise ValueError(
                        "the training list differs from the checkpoint's (different root, source list, "
                        "min_pixels or filter_novel?): resuming would not reproduce the data order"
                    )
                log.warning(
                    "episode table %s differs from the checkpoint's; evaluation episodes changed", name
                )
