"""Validate a composed config before any data is read or any weight is loaded.

Every check names the offending key(s), the value and what is allowed, so a typo in a sweep fails in a
second rather than after hours of list building or training.
"""

from __future__ import annotations

import importlib.util
import inspect
import os
import sys
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NoReturn

import hydra
import torch
from lightning_fabric.plugins.environments import (
    LSFEnvironment,
    MPIEnvironment,
    SLURMEnvironment,
    TorchElasticEnvironment,
)
from omegaconf import DictConfig, OmegaConf

from svfseg.backbones.timm_cnn import check_timm_backbone_config
from svfseg.data.checks import check_root
from svfseg.data.layouts import LAYOUTS
from svfseg.data.lists.held_out import DEFAULT_SELECTION, check_selection
from svfseg.methods.bam import bam_backbone_problem
from svfseg.methods.pspnet import BaseLearnerCheckpointError, read_base_learner, stage1_command
from svfseg.methods.registry import method_options
from svfseg.precision import check_matmul_precision
from svfseg.run_spec import RunSpec

STAGES = ("meta", "base")
DEFAULT_DATAMODULE = "svfseg.data.datamodule.FewShotDataModule"
# Keys of conf/dataset/*.yaml that describe the run, not the DataModule: read by the run spec (name,
# coco_split), the trainer (epochs), the per-process batch (batch_size), BAM's stage 1 (base_stage).
DATASET_RUN_KEYS = (
    "_target_",
    "name",
    "num_classes",
    "epochs",
    "batch_size",
    "eval_batch_size",
    "coco_split",
    "base_stage",
)
# Keys of dataset.base_stage (BAM stage 1), read by tasks/base_stage.py: a misspelt one fails at start.
BASE_STAGE_KEYS = (
    "epochs",
    "lr",
    "encoder_lr_mult",
    "batch_size",
    "eval_batch_size",
    "train_size",
    "eval_size",
    "scale",
    "limit_val_batches",
)
# DataModule arguments the run supplies (from the spec, the trainer and the top-level seed).
RUN_SUPPLIED_ARGUMENTS = ("split", "batch_size", "eval_batch_size", "seed", "with_base_label")
# Batch sizes under DDP (docs/design.md, "DDP"). A training batch defines the optimisation: it is the total
# over all processes (the paper's 8 = 4 GPUs x 2) and must divide by the world size. An evaluation batch
# changes no result (metrics are exact pixel counts summed over ranks), so it never blocks a launch: the
# total is split as evenly as possible, ceil(total / world) per process. Only the running stage's keys count.
TRAIN_BATCH_KEYS = {"meta": "dataset.batch_size", "base": "dataset.base_stage.batch_size"}
EVAL_BATCH_KEYS = {"meta": "dataset.eval_batch_size", "base": "dataset.base_stage.eval_batch_size"}
# Lightning strategies (and their ``_find_unused_parameters_*`` forms) whose ranks are child processes of
# this one, and the start methods that make a strategy node one of them (see check_launcher).
CHILD_PROCESS_STRATEGIES = ("ddp_spawn", "ddp_fork", "ddp_notebook")
CHILD_PROCESS_START_METHODS = ("spawn", "fork", "forkserver")


class ConfigError(ValueError):
    """An invalid combination of config values; the message names the keys."""


def process_count(devices: Any) -> int | None:
    """Processes per machine that ``trainer.devices`` names, or None where Lightning counts them when it
    starts (``auto``, ``-1``)."""
    if isinstance(devices, bool):
        return None
    if isinstance(devices, int):
        return devices if devices >= 1 else None
    if isinstance(devices, str) and devices.isdigit():
        return int(devices)
    if isinstance(devices, str) and "," in devices:  # Lightning's "0,1": a list of device indices
        return len([part for part in devices.split(",") if part.strip()])
    if isinstance(devices, (list, tuple)) or OmegaConf.is_list(devices):
        return len(devices)
    return None


def world_size(trainer: DictConfig) -> int:
    """Processes a trainer config asks for (devices x nodes); ``auto`` counts as 1 until Lightning resolves it
    (checked again in the DataModule)."""
    return (process_count(trainer.get("devices", 1)) or 1) * int(trainer.get("num_nodes", 1) or 1)


def uses_multiprocess_ddp(trainer: DictConfig) -> bool:
    """True when Lightning would re-launch this script per rank: several processes under any strategy that
    starts them from the command line. ``auto`` picks DDP with such a launcher for several devices, as do
    ``ddp`` and ``fsdp``; ``devices: auto`` / ``-1`` count the visible GPUs. (Child-process strategies,
    ``ddp_spawn`` and kin, are refused by :func:`check_launcher`.)"""
    strategy = trainer.get("strategy", "auto")
    if not (OmegaConf.is_config(strategy) or isinstance(strategy, dict)) and str(strategy).startswith(
        CHILD_PROCESS_STRATEGIES
    ):
        return False
    world = world_size(trainer)
    on_gpus = str(trainer.get("accelerator", "auto")) in ("auto", "gpu", "cuda")
    if str(trainer.get("devices", 1)) in ("auto", "-1") and on_gpus:
        world = max(world, torch.cuda.device_count() * int(trainer.get("num_nodes", 1) or 1))
    return world > 1


class SweepJobRefused(Exception):
    """One job of a Hydra multirun was refused at start; its problems are printed, the sweep goes on."""


def report_config_problems(
    err: Exception,
    program: str,
    *,
    what: str = "in the config, nothing was run",
    sweep_job: bool = False,
) -> NoReturn:
    """Print an error's problems to stderr, one line each, and exit with status 2 (no traceback).

    ``sweep_job``: the command is one job of a Hydra multirun. Exiting there would end the whole sweep
    (Hydra runs jobs one after another and does not catch ``SystemExit``), so the jobs after a refused
    one never ran; raising :class:`SweepJobRefused` instead lets Hydra go on with the next job and report
    the refused ones when the sweep ends (exit status 1).
    """
    lines = [line for line in str(err).splitlines() if line.strip()]
    noun = "problem" if len(lines) == 1 else "problems"
    print(f"{program}: {len(lines)} {noun} {what}:", file=sys.stderr)
    for line in lines:
        print(f"  - {line}", file=sys.stderr)
    if sweep_job:
        raise SweepJobRefused(
            f"{program}: this job was refused at start ({len(lines)} {noun} above)"
        ) from None
    sys.exit(2)


def _collect(problems: list[str], check: Callable[[], Any]) -> Any:
    """Run one check; its ConfigError (or ValueError) becomes one line of ``problems``."""
    try:
        return check()
    except (ConfigError, ValueError, TypeError) as err:
        problems.append(str(err))
        return None


def _check_multirun(cfg: DictConfig, multirun: bool) -> None:
    if multirun and uses_multiprocess_ddp(cfg.trainer):
        raise ConfigError(
            "hydra multirun (-m) cannot drive multi-process DDP (trainer.strategy="
            f"{cfg.trainer.strategy}, trainer.devices={cfg.trainer.devices}): Lightning re-runs the script per "
            "rank and every rank would start its own sweep. Run the sweep on SLURM with hydra/launcher=slurm_4gpu "
            "(one SLURM job per sweep job, its tasks are the DDP ranks), with trainer.devices=1, or launch each "
            "job with torchrun (README, 'Multi-GPU')."
        )


def _check_precision(cfg: DictConfig) -> None:
    try:
        check_matmul_precision(cfg.get("matmul_precision", "highest"))
    except ValueError as err:
        raise ConfigError(str(err)) from err


def _check_bam(cfg: DictConfig, spec: RunSpec | None, stage: str) -> None:
    if cfg.method.name != "bam":
        return
    problem = bam_backbone_problem(str(cfg.backbone.name))
    if problem is not None:
        raise ConfigError(f"backbone={cfg.backbone.name}: {problem}")
    if stage != "meta" or spec is None:
        return
    debug = {"-tiny": "tiny", "-fdr": "fdr"}.get(str(cfg.get("run_tag") or ""))  # conf/debug's run_tag
    command = stage1_command(
        str(cfg.dataset.name),
        spec.fold.fold,
        str(cfg.backbone.name),
        float(cfg.backbone.get("width_mult", 1.0)),
        debug=debug,
    )
    stage1 = f"the stage-1 command: {command}"
    if cfg.method.get("base_learner") is None:
        raise ConfigError(
            f"method.base_learner is null: BAM's meta stage needs the stage-1 base learner. Make it with "
            f"{stage1}, then set method.base_learner to the written file."
        )
    _check_file(cfg.method.base_learner, "method.base_learner", stage1, nullable=False)
    try:  # its record (dataset, fold, backbone) before anything is built; the tensors are only mapped
        read_base_learner(
            str(cfg.method.base_learner),
            backbone_name=str(cfg.backbone.name),
            fold=spec.fold,
            width_mult=float(cfg.backbone.get("width_mult", 1.0)),
            mmap=True,
        )
    except BaseLearnerCheckpointError as err:
        raise ConfigError(f"method.base_learner: {err}") from err


def _check_timm_backbone(backbone: DictConfig) -> None:
    """timm CNN backbone options (``timm_cnn``'s model name, hub weights) before anything is built."""
    try:
        check_timm_backbone_config(OmegaConf.to_container(backbone, resolve=True))
    except ValueError as err:
        raise ConfigError(str(err)) from err


def check_dataset_root(name: str, root: Any) -> None:
    """The dataset root is a folder, with the command that makes it (the data is first read at fit start,
    after the model is built and the run folder claimed). A folder dataset is read at start by its run spec."""
    if name not in LAYOUTS or name == "folder":
        return
    try:
        check_root(name, str(root))
    except FileNotFoundError as err:
        raise ConfigError(str(err)) from err


def _check_ckpt(cfg: DictConfig, stage: str) -> None:
    """``ckpt_path``: null, ``last``, ``auto`` or a checkpoint file; BAM's stage 1 resumes its own folder only
    (``last`` / ``auto``): its checkpoints hold no run record to check another folder's against."""
    ckpt = cfg.get("ckpt_path")
    if stage == "base" and ckpt not in (None, "last", "auto"):
        raise ConfigError(
            f"ckpt_path={ckpt}: BAM's stage 1 (stage=base) resumes only its own run folder's last.ckpt; "
            "use ckpt_path=last (or auto) with the interrupted command, or hydra.run.dir=<its folder>"
        )
    if ckpt not in (None, "last", "auto") and not Path(str(ckpt)).is_file():
        raise ConfigError(f"ckpt_path={ckpt} does not exist (use a checkpoint file, 'last', 'auto' or null)")


@dataclass(frozen=True)
class CheckedRun:
    """What checking a train.py config resolved, so nothing after the checks computes it again.

    Args:
        spec: the run's :class:`RunSpec`.
        stage: ``meta`` (few-shot training) or ``base`` (BAM's stage 1).
        world_size: processes (devices x nodes) the trainer asks for.
        batch_size, eval_batch_size: the running stage's batches per process.
    """

    spec: RunSpec
    stage: str
    world_size: int
    batch_size: int
    eval_batch_size: int


def check_train_config(cfg: DictConfig, *, multirun: bool = False) -> RunSpec:
    """The run's :class:`RunSpec`, after every check of a train.py config (see :func:`check_train_run`)."""
    return check_train_run(cfg, multirun=multirun).spec


def check_train_run(cfg: DictConfig, *, multirun: bool = False) -> CheckedRun:
    """Every check of a train.py config; returns the run and its per-process batches.

    All problems are collected and raised together as one :class:`ConfigError`, one line each, so a
    config is fixed in one round instead of one error per attempt.
    """
    problems: list[str] = []
    stage = cfg.get("stage", "meta")
    if stage not in STAGES:
        problems.append(f"stage={stage!r} is invalid: choose one of {list(STAGES)}")
    spec: RunSpec | None = _collect(problems, lambda: RunSpec.from_config(cfg))
    if stage == "base" and cfg.method.name != "bam":
        problems.append(
            f"stage=base trains BAM's base learner; it needs method=bam (got method={cfg.method.name})"
        )
    world = world_size(cfg.trainer)
    batches = _collect(problems, lambda: stage_batch_sizes(cfg, stage, world)) if stage in STAGES else None
    checks: list[Callable[[], Any]] = [
        lambda: _check_sync_batchnorm(cfg.trainer.get("sync_batchnorm", "auto")),
        lambda: _check_precision(cfg),
        lambda: _check_deterministic(cfg.trainer),
        lambda: _check_multirun(cfg, multirun),
        lambda: _check_method_options(cfg.method),
        lambda: _check_dataset_keys(cfg.dataset),
        lambda: check_accelerator(cfg.trainer),
        lambda: check_devices(cfg.trainer),
        lambda: check_launcher(cfg.trainer),
        lambda: check_cluster_launch(cfg.trainer),
        lambda: check_training_length(cfg, str(stage)),
        lambda: check_loggers(cfg.get("logger")),
        lambda: _check_file(
            cfg.backbone.get("pretrained"),
            "backbone.pretrained",
            "python -m svfseg.weights fetch NAME (python -m svfseg.weights list shows the names; README "
            "'Getting the weights')",
        ),
        lambda: _check_timm_backbone(cfg.backbone),
        lambda: _check_bam(cfg, spec, stage),
        lambda: check_dataset_root(str(cfg.dataset.get("name")), cfg.dataset.get("root")),
        lambda: _check_ckpt(cfg, str(stage)),
        lambda: training_seed(cfg.get("seed")),
        lambda: check_episodes(cfg.dataset, "dataset.eval_seeds", "dataset.n_episodes"),
        lambda: check_selection(cfg.dataset.get("selection", DEFAULT_SELECTION)),
        lambda: check_writable_dir(cfg.paths.output_dir, "paths.output_dir"),
    ]
    for check in checks:
        _collect(problems, check)
    if problems:
        raise ConfigError("\n".join(dict.fromkeys(problems)))
    assert spec is not None and batches is not None
    return CheckedRun(spec, str(stage), world, *batches)


def eval_seeds(value: Any, key: str) -> list[int]:
    """``value`` as a non-empty list of distinct integer seeds >= 0 (one int counts as a list of one)."""
    example = f"e.g. {key}=[321,510] (or one seed: {key}=321)"
    if isinstance(value, int) and not isinstance(value, bool):
        value = [value]
    if not (isinstance(value, (list, tuple)) or OmegaConf.is_list(value)):
        raise ConfigError(f"{key}={value!r} is invalid: give a list of integer seeds, {example}")
    seeds = list(value)
    if not seeds:
        raise ConfigError(f"{key}=[] is invalid: give at least one evaluation seed, {example}")
    bad = [s for s in seeds if isinstance(s, bool) or not isinstance(s, int) or s < 0]
    if bad:
        raise ConfigError(
            f"{key}={seeds!r} is invalid: {bad!r} {'is not an integer' if len(bad) == 1 else 'are not integers'}"
            f" >= 0; give integer seeds, {example}"
        )
    repeated = sorted({s for s in seeds if seeds.count(s) > 1})
    if repeated:
        unique = list(dict.fromkeys(seeds))
        raise ConfigError(
            f"{key}={seeds!r} repeats {repeated}: each seed is one episode table, so a repeat would count the "
            f"same episodes twice in the mean and std; use {key}=[{','.join(map(str, unique))}]"
        )
    return [int(s) for s in seeds]


MAX_SEED = 2**32 - 1  # numpy's range, which Lightning's seed_everything enforces


def training_seed(value: Any, key: str = "seed") -> int:
    """``value`` as a training seed: an integer in numpy's range 0 .. 2**32 - 1 (Lightning refused any
    other only after the run folder was claimed; null would draw a random seed no record could repeat)."""
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= MAX_SEED:
        raise ConfigError(
            f"{key}={value!r} is invalid: the training seed is an integer from 0 to {MAX_SEED}, e.g. {key}=321"
        )
    return int(value)


def positive_count(value: Any, key: str, what: str) -> int:
    """``value`` as an integer >= 1, or a ConfigError naming ``key`` and what it counts."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ConfigError(f"{key}={value!r} is invalid: {what} is an integer >= 1")
    return int(value)


def check_episodes(dataset: DictConfig, seeds_key: str, episodes_key: str) -> None:
    """The evaluation seeds (non-empty, distinct integers) and episode count (>= 1) of a dataset config."""
    problems: list[str] = []
    if "eval_seeds" in dataset:
        _collect(problems, lambda: eval_seeds(dataset.eval_seeds, seeds_key))
    if "n_episodes" in dataset:
        _collect(
            problems, lambda: positive_count(dataset.n_episodes, episodes_key, "the episode count per seed")
        )
    if problems:
        raise ConfigError("\n".join(problems))


def per_process_batch(total: Any, world: int, key: str) -> int:
    """``total // world`` for a training batch ``key``: the total over ``world`` processes.

    Raises :class:`ConfigError` when it does not divide: the processes would not make the configured batch.
    """
    _check_positive_batch(total, key)
    if total % world:
        raise ConfigError(
            f"{key}={total!r} is the total training batch over {world} processes (trainer.devices x "
            f"trainer.num_nodes); it must be a positive multiple of {world}: set {key} to a multiple of "
            f"{world}, or run on a number of processes that divides {total}"
        )
    return total // world


def per_process_eval_batch(total: Any, world: int, key: str) -> int:
    """``ceil(total / world)`` for an evaluation batch ``key``: any positive total runs on any world size.

    Evaluation metrics are exact counts over the episodes, whatever the batch, so the total is only a
    memory budget, split as evenly as possible.
    """
    _check_positive_batch(total, key)
    return -(-total // world)


def stage_batch_sizes(cfg: DictConfig, stage: str, world: int, *, training: bool = True) -> tuple[int, int]:
    """(training, evaluation) batch per process of ``stage`` (``meta`` or ``base``) on ``world`` processes.

    ``training=False`` (evaluation only): the training batch is unused, so it is split like an evaluation
    batch instead of being held to the world size.
    """
    train_key, eval_key = TRAIN_BATCH_KEYS[stage], EVAL_BATCH_KEYS[stage]
    split = per_process_batch if training else per_process_eval_batch
    problems: list[str] = []
    train = _collect(problems, lambda: split(OmegaConf.select(cfg, train_key), world, train_key))
    evaluation = _collect(
        problems, lambda: per_process_eval_batch(OmegaConf.select(cfg, eval_key), world, eval_key)
    )
    if problems:
        raise ConfigError("\n".join(problems))
    return train, evaluation


def _check_positive_batch(total: Any, key: str) -> None:
    if isinstance(total, bool) or not isinstance(total, int) or total < 1:
        raise ConfigError(f"{key}={total!r} is invalid: a batch size is a positive integer")


def _check_deterministic(trainer: DictConfig) -> None:
    """``deterministic=true`` cannot run on CUDA: refuse it at start, with the setting that works."""
    accelerator = trainer.get("accelerator", "auto")
    on_cuda = accelerator in ("gpu", "cuda") or (accelerator == "auto" and torch.cuda.is_available())
    if trainer.get("deterministic") is True and on_cuda:
        raise ConfigError(
            "trainer.deterministic=true fails on CUDA at the first backward: bilinear upsampling's backward "
            "and index_add_ have no deterministic CUDA kernel. Use trainer.deterministic=warn (deterministic "
            "kernels where they exist, a warning for the others)."
        )


def _check_sync_batchnorm(value: Any) -> None:
    """``auto`` / true / false; anything else names the key."""
    if value not in ("auto", True, False):
        raise ConfigError(f"trainer.sync_batchnorm={value!r} is invalid: use auto, true or false")


def sync_batchnorm(trainer: DictConfig | dict[str, Any], bn_trains: bool) -> bool:
    """Resolve ``trainer.sync_batchnorm``: ``auto`` is on exactly when BN trains in train mode under DDP.

    Frozen BN (eval mode, every strategy but ``bn``) never uses batch statistics, so syncing it would
    only cost communication; BN in train mode (``finetune=bn``, BAM's stage 1) at 2-3 images per GPU
    needs the statistics of the whole batch, as BAM's SyncBN gives.
    """
    value = trainer.get("sync_batchnorm", "auto")
    _check_sync_batchnorm(value)
    on_cpu = trainer.get("accelerator", "auto") == "cpu" or (
        trainer.get("accelerator", "auto") == "auto" and not torch.cuda.is_available()
    )
    if value == "auto":
        # PyTorch's SyncBatchNorm has no CPU kernel: CPU DDP (tests, debugging) keeps per-process BN.
        return bn_trains and world_size(trainer) > 1 and not on_cpu
    if value and on_cpu and world_size(trainer) > 1:
        raise ConfigError(
            "trainer.sync_batchnorm=true needs GPUs: PyTorch's SyncBatchNorm has no CPU kernel; use auto or false"
        )
    return bool(value)


def check_accelerator(trainer: Any) -> None:
    """Refuse a GPU trainer on a machine without a visible CUDA device, naming the CPU equivalent."""
    accelerator = str(trainer.get("accelerator", "auto"))
    if accelerator in ("gpu", "cuda") and not torch.cuda.is_available():
        strategy = trainer.get("strategy", "auto")
        cpu = "trainer.accelerator=cpu" + (
            f" trainer.strategy={strategy}" if str(strategy).startswith("ddp") else ""
        )
        raise ConfigError(
            f"trainer.accelerator={accelerator} but no CUDA device is visible on this machine; run on CPU "
            f"with {cpu} (multi-process CPU DDP: trainer.accelerator=cpu trainer.strategy=ddp "
            "trainer.devices=2), or on a machine with GPUs"
        )


def check_devices(trainer: Any) -> None:
    """``trainer.devices`` and ``trainer.num_nodes`` ask for at least one process, in a form the accelerator
    takes (Lightning would stop on ``devices=0``, or on a GPU-style ``-1`` / list for the CPU, only once the
    model is built and the run folder is claimed)."""
    devices = trainer.get("devices", 1)
    text = str(devices).strip()
    count = (isinstance(devices, int) and not isinstance(devices, bool) and devices >= 1) or (
        isinstance(devices, str) and text.isdigit() and int(text) >= 1
    )
    accelerator = str(trainer.get("accelerator", "auto"))
    on_cpu = accelerator == "cpu" or (accelerator == "auto" and not torch.cuda.is_available())
    if on_cpu:
        valid = count or text == "auto"
        allowed = "on the CPU a process count >= 1 (e.g. trainer.devices=2 for 2 CPU DDP processes) or auto"
    else:
        if OmegaConf.is_list(devices) or isinstance(devices, (list, tuple)):
            valid = len(devices) > 0 and all(isinstance(i, int) and i >= 0 for i in devices)
        else:  # a count, "auto", -1, or Lightning's comma list of GPU indices "0,1"
            valid = (
                count
                or text in ("auto", "-1")
                or ("," in text and all(part.strip().isdigit() for part in text.split(",") if part.strip()))
            )
        allowed = (
            "a count >= 1 (trainer.devices=4 for 4 GPUs), -1 or auto (every visible GPU), or a list of GPU "
            "indices, e.g. trainer.devices=[0,1]"
        )
    if not valid:
        raise ConfigError(
            f"trainer.devices={devices!r} is invalid for trainer.accelerator={accelerator}: give {allowed}"
        )
    nodes = trainer.get("num_nodes", 1)
    if isinstance(nodes, bool) or not isinstance(nodes, int) or nodes < 1:
        raise ConfigError(
            f"trainer.num_nodes={nodes!r} is invalid: the number of machines is an integer >= 1"
        )


# The cluster environments Lightning detects, in its order (TorchElastic first: it can run inside SLURM).
# Without one, Lightning's own environment reads the machine's rank from NODE_RANK (or GROUP_RANK).
LAUNCHED_ENVIRONMENTS = (TorchElasticEnvironment, SLURMEnvironment, LSFEnvironment, MPIEnvironment)
NODE_RANK_VARIABLES = ("NODE_RANK", "GROUP_RANK")


def check_cluster_launch(trainer: Any) -> None:
    """The process layout the trainer asks for is the one this job was started with.

    ``trainer.num_nodes`` > 1 on a process that no multi-machine launcher started (no SLURM job step,
    torchrun, LSF or MPI, and no ``NODE_RANK``) made every rank wait for the missing machines until the
    process group's 30-minute timeout. Under SLURM or torchrun, devices and nodes that differ from the
    job's tasks stopped Lightning's Trainer only after the model was built and the run folder claimed;
    Lightning's own comparison runs here, at start. A cluster environment passed in ``trainer.plugins``
    is the user's own and is left to Lightning.
    """
    if trainer.get("plugins"):
        return
    nodes = trainer.get("num_nodes", 1)
    if isinstance(nodes, bool) or not isinstance(nodes, int) or nodes < 1:
        return  # check_devices names it
    with warnings.catch_warnings():  # SLURM's detection warns about srun; Lightning warns again itself
        warnings.simplefilter("ignore")
        launched = next((env for env in LAUNCHED_ENVIRONMENTS if env.detect()), None)
    if launched is None:
        if nodes > 1 and not any(var in os.environ for var in NODE_RANK_VARIABLES):
            raise ConfigError(
                f"trainer.num_nodes={nodes} asks for {nodes} machines, but no launcher started this process "
                "on several (no SLURM job step, torchrun, LSF or MPI environment, and NODE_RANK is not set): "
                "every rank would wait for the other machines until the 30-minute timeout. Launch it on a "
                f"cluster (e.g. -m hydra/launcher=slurm_4gpu hydra.launcher.nodes={nodes}), with torchrun "
                f"--nnodes={nodes}, or on each machine with MASTER_ADDR, MASTER_PORT and NODE_RANK set; "
                "on one machine, leave trainer.num_nodes=1"
            )
        return
    devices = process_count(trainer.get("devices", 1))
    if devices is None:  # "auto" / -1: Lightning counts the GPUs and compares when it starts
        return
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            launched().validate_settings(num_devices=devices, num_nodes=nodes)
    except (ValueError, RuntimeError) as err:  # RuntimeError: SLURM's --ntasks without --ntasks-per-node
        raise ConfigError(
            f"trainer.devices={trainer.get('devices')!r} and trainer.num_nodes={nodes} do not match the "
            f"processes this job was started with ({launched.__name__}): {err}"
        ) from None


def check_training_length(cfg: DictConfig, stage: str) -> None:
    """The fit trains at least one step and has an end (the lr schedule is laid out over it).

    ``dataset.epochs=0`` (or ``trainer.max_steps=0``) would fit nothing and still test and report the
    untrained weights as the run's result; ``max_epochs=-1`` with ``max_steps=-1`` never ends.
    """
    trainer = cfg.trainer
    if stage == "base":
        epochs_key, epochs = "dataset.base_stage.epochs", OmegaConf.select(cfg, "dataset.base_stage.epochs")
    elif OmegaConf.is_interpolation(trainer, "max_epochs"):  # conf/trainer: max_epochs: ${dataset.epochs}
        epochs_key, epochs = "dataset.epochs", trainer.get("max_epochs")
    else:
        epochs_key, epochs = "trainer.max_epochs", trainer.get("max_epochs")
    steps = trainer.get("max_steps", -1)
    problems: list[str] = []
    for key, value in ((epochs_key, epochs), ("trainer.max_steps", steps)):
        if value is None and key != "trainer.max_steps":
            continue  # Lightning's default: 1000 epochs unless max_steps ends the fit first
        if isinstance(value, bool) or not isinstance(value, int) or value < -1:
            problems.append(f"{key}={value!r} is invalid: an integer >= 1, or -1 for no limit")
        elif value == 0:
            problems.append(
                f"{key}=0 trains nothing: the run would test and report untrained weights as its result; "
                "give a length >= 1 (to evaluate a checkpoint without training: python eval.py ckpt_path=...)"
            )
    if not problems and epochs == -1 and steps == -1:
        problems.append(
            f"{epochs_key}=-1 and trainer.max_steps=-1 never end the fit, and the lr schedule is laid out over "
            "its length: set one of them"
        )
    if problems:
        raise ConfigError("\n".join(problems))


def check_launcher(trainer: Any) -> None:
    """Refuse strategies whose ranks run in child processes that Lightning starts (``ddp_spawn``,
    ``ddp_fork``, ``ddp_notebook``): they hand back only the trainer's state, so the test metrics, the
    best checkpoint's score and the built episodes never reach the process that writes ``metrics.json``."""
    strategy = trainer.get("strategy", "auto")
    if OmegaConf.is_config(strategy) or isinstance(strategy, dict):
        name = str(strategy.get("_target_", "")).rsplit(".", 1)[-1]
        method = str(strategy.get("start_method", "popen"))
        child = method in CHILD_PROCESS_START_METHODS
        shown = f"trainer.strategy.start_method={method} ({name})"
    else:
        name = str(strategy)
        child = name.startswith(CHILD_PROCESS_STRATEGIES)  # + _find_unused_parameters_*
        shown = f"trainer.strategy={name}"
    if child:
        raise ConfigError(
            f"{shown} runs every rank in a child process that Lightning starts and returns only the "
            "trainer's state, so the test metrics and episodes would not reach the process that writes "
            "metrics.json; use trainer.strategy=ddp (Lightning starts one script per rank, e.g. trainer=ddp) "
            "or torchrun (README, 'Multi-GPU')"
        )


def check_loggers(loggers: Any) -> None:
    """A logger whose package is missing fails here, with the install command, not after the model is built."""
    for name, node in (loggers or {}).items():
        target = str((node or {}).get("_target_", ""))
        if target.endswith("TensorBoardLogger") and not (
            importlib.util.find_spec("tensorboard") or importlib.util.find_spec("tensorboardX")
        ):
            raise ConfigError(
                f"logger={name} needs the tensorboard package, which is not installed: "
                "pip install -e '.[tensorboard]' (or choose logger=csv / wandb / none)"
            )


def check_writable_dir(path: Any, key: str) -> None:
    """Refuse an output folder that cannot be created or written, before any work (and create nothing).

    The folder need not exist yet: its nearest existing ancestor must be a writable directory.
    """
    target = Path(str(path)).expanduser().absolute()
    probe = target
    while not probe.exists():
        if probe.parent == probe:
            break
        probe = probe.parent
    how = f"set {key} (or hydra.run.dir) to a writable folder"
    if not probe.is_dir():
        raise ConfigError(f"{key}={target} cannot be created: {probe} is a file, not a folder; {how}")
    if not os.access(probe, os.W_OK | os.X_OK):
        what = "is not writable" if probe == target else f"cannot be created: {probe} is not writable"
        raise ConfigError(f"{key}={target} {what}; {how}")


def _check_dataset_keys(dataset: DictConfig) -> None:
    """Every key of ``dataset`` is a run-level key or an argument of its DataModule (typos fail here)."""
    target = str(dataset.get("_target_", DEFAULT_DATAMODULE))
    try:
        cls = hydra.utils.get_class(target)
    except Exception as err:
        raise ConfigError(f"dataset._target_={target} cannot be imported: {err}") from err
    unknown_stage = sorted(set(dataset.get("base_stage") or {}) - set(BASE_STAGE_KEYS))
    if unknown_stage:
        keys = ", ".join(f"dataset.base_stage.{k}" for k in unknown_stage)
        raise ConfigError(f"{keys}: not a key of BAM's stage 1; allowed: {list(BASE_STAGE_KEYS)}")
    arguments = set(inspect.signature(cls).parameters) - set(RUN_SUPPLIED_ARGUMENTS)
    unknown = sorted(set(dataset) - set(DATASET_RUN_KEYS) - arguments)
    if unknown:
        keys = ", ".join(f"dataset.{k}" for k in unknown)
        raise ConfigError(
            f"{keys}: not an argument of {cls.__name__} nor a run-level dataset key; allowed: "
            f"{sorted(arguments | set(DATASET_RUN_KEYS) - {'_target_'})}"
        )


def _check_method_options(method: DictConfig) -> None:
    """Unknown method keys (e.g. a misspelt loss weight) fail here, not when the model is built."""
    allowed = method_options(str(method.name))
    unknown = sorted(set(method) - {"name"} - set(allowed))
    if unknown:
        keys = ", ".join(f"method.{k}" for k in unknown)
        raise ConfigError(f"{keys}: not an option of method={method.name}; allowed: {sorted(allowed)}")


def _check_file(path: Any, key: str, how: str, *, nullable: bool = True) -> None:
    if path is None:
        return
    if not Path(str(path)).is_file():
        fallback = f", or set {key}=null" if nullable else ""
        raise ConfigError(f"{key}={path} does not exist. Make it with {how}{fallback}.")
