"""DataLoaders over explicit samplers, the training loader that resumes mid-epoch, and what the two
DataModules (few-shot episodes, BAM's stage 1) share: :class:`FoldDataModule`.

The DataModules build their own samplers from the trainer's rank and world size, so Lightning must not
add a DistributedSampler (:func:`rank_and_world` refuses that under DDP).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
from pytorch_lightning.trainer.states import TrainerFn
from torch.utils.data import DataLoader, Dataset, Sampler

from svfseg.data.checks import MAX_IMAGE_SIZE, check_int, check_source_lists
from svfseg.data.collate import collate_samples
from svfseg.data.fold import FoldSpec
from svfseg.data.layouts import get_layout
from svfseg.data.samplers import EpisodeSampler, ShardedEvalSampler

log = logging.getLogger(__name__)


def rank_and_world(module: pl.LightningDataModule) -> tuple[int, int]:
    """(global rank, world size) of the attached trainer, or (0, 1) without one."""
    trainer = getattr(module, "trainer", None)
    if trainer is None:
        return 0, 1
    world = int(trainer.world_size)
    if world > 1 and getattr(
        getattr(trainer, "_accelerator_connector", None), "use_distributed_sampler", False
    ):
        raise RuntimeError(
            "svfseg shards its own episodes: create the Trainer with use_distributed_sampler=False "
            f"(world_size={world}); Lightning's DistributedSampler would re-shard and pad them"
        )
    return int(trainer.global_rank), world


def make_loader(
    dataset: Dataset,
    sampler: Sampler,
    batch_size: int,
    *,
    num_workers: int,
    train: bool,
    persistent_workers: bool = False,
    pin_memory: bool = False,
    collate_fn: Callable[[list[dict[str, Any]]], dict[str, Any]] = collate_samples,
    position: Callable[[], dict[str, int] | None] | None = None,
) -> DataLoader:
    """A DataLoader over an explicit sampler (training drops the last partial batch, as the BAM/SVF repos).

    ``position`` (the training position of the fitting trainer) makes it a :class:`ResumableEpisodeLoader`.
    """
    extra: dict[str, Any] = {} if position is None else {"position": position}
    return (DataLoader if position is None else ResumableEpisodeLoader)(
        dataset,
        batch_size=batch_size,
        sampler=sampler,
        num_workers=num_workers,
        collate_fn=collate_fn,
        drop_last=train,
        pin_memory=pin_memory,
        persistent_workers=persistent_workers and num_workers > 0,
        **extra,
    )


class ResumableEpisodeLoader(DataLoader):
    """The training loader: a DataLoader that saves and restores the training position (mid-epoch resume).

    Lightning counts only a loader with ``state_dict`` / ``load_state_dict`` as resumable mid-epoch (it
    warns that results are unreliable otherwise). The position is restored in one place: the copy in
    :meth:`~svfseg.data.datamodule.FewShotDataModule.state_dict`, read back before any loader exists and
    applied when the sampler is built. ``load_state_dict`` here only checks that this happened, so a
    Lightning release that restores in another order fails loudly instead of resuming at the wrong
    episode. ``position`` reads ``{"epoch", "consumed"}`` from the trainer's batch progress.
    """

    def __init__(self, *args: Any, position: Callable[[], dict[str, int] | None], **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._position = position

    def state_dict(self) -> dict[str, Any]:
        position = self._position()
        return {} if position is None else {"train_position": dict(position)}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        start = state_dict.get("train_position")
        if start is None or not isinstance(self.sampler, EpisodeSampler):
            return
        wanted = (int(start["epoch"]), int(start["consumed"]))
        if self.sampler.start != wanted and int(start["consumed"]) > 0:
            raise RuntimeError(
                f"resume: the training sampler starts at {self.sampler.start}, the checkpoint's loader state "
                f"says {wanted}; the DataModule's state was not restored before the loader was built "
                "(an unsupported Lightning version?)"
            )


def start_sampler_at(sampler: EpisodeSampler, position: Mapping[str, int]) -> None:
    """Make ``sampler`` start epoch ``position["epoch"]`` after its first ``position["consumed"]`` positions.

    Idempotent. Also sets the sampler's epoch: loader workers draw their first indices as soon as the
    iterator exists, which may precede Lightning's ``set_epoch``.
    """
    epoch, consumed = int(position["epoch"]), int(position["consumed"])
    sampler.set_epoch(epoch)
    sampler.set_start(epoch, consumed)
    if consumed:
        log.info("resuming epoch %d after its first %d training episodes (all ranks)", epoch, consumed)


class FoldDataModule(pl.LightningDataModule):
    """One fold's data with checked loader options, and its loaders over explicit samplers.

    The base of both DataModules: they differ in their datasets and samplers, not in how a size, a batch
    or a worker count is checked, nor in how a loader is made.
    """

    def __init__(
        self,
        split: FoldSpec,
        root: str | Path,
        *,
        train_size: int,
        eval_size: int,
        batch_size: int,
        eval_batch_size: int,
        num_workers: int,
        seed: int,
        source_lists: Mapping[str, Any] | None,
        persistent_workers: bool,
        pin_memory: bool,
    ) -> None:
        super().__init__()
        if not isinstance(split, FoldSpec):
            raise TypeError(
                f"split={split!r}: pass a svfseg.data.fold.FoldSpec(dataset, fold, shot, coco_split)"
            )
        self.split = split
        self.dataset, self.fold, self.shot = split.dataset, split.fold, split.shot
        self.root = Path(root)
        self.train_size = check_int("train_size", train_size, low=8, high=MAX_IMAGE_SIZE)
        self.eval_size = check_int("eval_size", eval_size, low=8, high=MAX_IMAGE_SIZE)
        self.batch_size = check_int("batch_size", batch_size)
        self.eval_batch_size = check_int("eval_batch_size", eval_batch_size)
        self.num_workers = check_int("num_workers", num_workers, low=0)
        self.seed = check_int("seed", seed, low=0)
        self.source_lists = check_source_lists(source_lists)
        self.persistent_workers = bool(persistent_workers)
        self.pin_memory = bool(pin_memory)
        self.layout = get_layout(self.dataset)
        self.base_classes = list(split.base_classes)
        self._restored: dict[str, Any] | None = None  # a resumed fit's state, read before any loader

    # -------------------------------------------------------------- resume
    def state_dict(self) -> dict[str, Any]:
        """What a resumed run must agree with (the data seed) and where training stands."""
        state: dict[str, Any] = {"seed": self.seed}
        position = self.train_position()
        if position is not None:
            state["train_position"] = position
        return state

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self._restored = dict(state_dict)
        self._check_restored()

    def _check_restored(self) -> None:
        """Refuse a resume whose training data order would differ (another data seed)."""
        if self._restored is None:
            return
        old_seed = self._restored.get("seed")
        if old_seed is not None and old_seed != self.seed:
            raise ValueError(
                f"the checkpoint was trained with data seed={old_seed}, this run has seed={self.seed}: "
                "resuming would change the episode order; resume with the same seed"
            )

    def train_position(self) -> dict[str, int] | None:
        """``{"epoch", "consumed"}``: the next training sample is at all-rank position ``consumed`` of ``epoch``.

        Read from the fitting trainer's batch progress at checkpoint time (batches done in the current
        epoch); a finished epoch points at the start of the next one. None outside ``fit``.
        """
        trainer = getattr(self, "trainer", None)
        if trainer is None or trainer.state.fn != TrainerFn.FITTING:
            return None
        per_epoch = trainer.num_training_batches
        if not per_epoch or not math.isfinite(per_epoch):
            return None
        done = int(trainer.fit_loop.epoch_loop.batch_progress.current.processed)
        epoch = int(trainer.current_epoch)
        if done >= per_epoch:
            epoch, done = epoch + 1, 0
        _, world = rank_and_world(self)
        # Training batches are full (drop_last), so this many all-rank positions were consumed.
        return {"epoch": epoch, "consumed": done * self.batch_size * world}

    def train_loader(self, dataset: Dataset, sampler: EpisodeSampler) -> DataLoader:
        """The training loader over ``sampler``, started where a resumed fit stopped (mid-epoch too)."""
        start = (self._restored or {}).get("train_position")
        if start is not None:
            start_sampler_at(sampler, start)
        return self.loader(dataset, sampler, train=True, position=self.train_position)

    def loader(
        self,
        dataset: Dataset,
        sampler: Sampler,
        *,
        train: bool,
        position: Callable[[], dict[str, int] | None] | None = None,
    ) -> DataLoader:
        """A loader of ``batch_size`` (training) or ``eval_batch_size`` batches over ``sampler``."""
        return make_loader(
            dataset,
            sampler,
            self.batch_size if train else self.eval_batch_size,
            num_workers=self.num_workers,
            train=train,
            persistent_workers=self.persistent_workers,
            pin_memory=self.pin_memory,
            position=position,
        )

    def eval_loader(self, dataset: Dataset) -> DataLoader:
        """This process's shard of ``dataset``, in order and without padding."""
        rank, world = rank_and_world(self)
        return self.loader(dataset, ShardedEvalSampler(len(dataset), rank, world), train=False)
