"""A run directory belongs to one run: the config hash in its name, its ownership record and its lock.

Two runs that differ in anything that changes the trained model (lr, epochs, a strategy option, ...) get
different default directories, because the directory name carries a short hash of the resolved config
without the keys that only say where files are or how a run is watched (:data:`HASH_EXCLUDED`). The
first process of a run writes ``svfseg-run.json`` (that hashed config) and holds ``.svfseg.lock``
(pid, host, start time) while it runs. A later command aimed at the same folder is refused before it
writes anything when the folder holds another run's results, when it holds this run's results and the
command does not resume them (``ckpt_path=last``), or while another process holds the lock.

This module imports no torch: train.py registers its resolver before Hydra composes the run directory.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
import logging
import os
import socket
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from svfseg.messages import preview
from svfseg.redaction import redact_override, redact_secrets

log = logging.getLogger(__name__)

RECORD_FILE = "svfseg-run.json"
LOCK_FILE = ".svfseg.lock"
# What a finished run leaves in its folder, per stage: the test metrics (few-shot training), and for BAM's
# stage 1 the written base learner's path and score. ``ckpt_path=auto`` skips a run whose file is there.
RESULT_FILES = {"meta": "metrics.json", "base": "stage1.json"}
HASH_RESOLVER = "svfseg_run_hash"
HASH_LENGTH = 8
# Keys that do not change the trained model: where files live, how the run is watched or labelled,
# evaluation-only settings, and the process layout (the training batch is the total, so a resume on
# another number of GPUs is the same run). Everything else is hashed.
HASH_EXCLUDED = (
    "hydra",
    "paths",
    "logger",
    "callbacks",
    "tags",
    "table",
    "row",
    "task_name",
    "ckpt_path",
    "test_after_fit",
    "optimized_metric",
    "resume_changes",
    "run_tag",
    "stage_dir_suffix",
    "backbone.pretrained",
    "method.base_learner",
    "dataset.root",
    "dataset.num_workers",
    "dataset.persistent_workers",
    "dataset.pin_memory",
    "dataset.cache_dir",
    "dataset.table_dir",
    "dataset.eval_batch_size",
    "dataset.train_episodes_for_curve",
    "dataset.base_stage.eval_batch_size",
    "trainer.default_root_dir",
    "trainer.accelerator",
    "trainer.devices",
    "trainer.num_nodes",
    "trainer.strategy",
    "trainer.enable_progress_bar",
    "trainer.enable_model_summary",
    "trainer.log_every_n_steps",
    "optim.nonfinite_check_every",
)


# Keys added after runs were recorded: at these values they are left out of the hash, so a run recorded
# before the key existed keeps its folder and its resume (a run that sets another value is another run).
# Each value is what runs before the key did, spelled out: it must not follow a later change of default.
HASH_DEFAULTS = {"dataset.selection": "test_episodes"}


class RunDirError(ValueError):
    """The run directory belongs to another run or process; the message gives the ways out."""


def _get(tree: dict[str, Any], dotted: str) -> Any:
    node: Any = tree
    for key in dotted.split("."):
        node = node.get(key) if isinstance(node, dict) else None
    return node


def _drop(tree: dict[str, Any], dotted: str) -> None:
    parent, _, leaf = dotted.rpartition(".")
    node = _get(tree, parent) if parent else tree
    if isinstance(node, dict):
        node.pop(leaf, None)


def hashed_config(cfg: DictConfig | Mapping[str, Any]) -> dict[str, Any]:
    """The resolved config without :data:`HASH_EXCLUDED`: what makes two runs the same run.

    ``paths`` is replaced by placeholders before resolving, so the hash neither depends on the machine
    nor needs Hydra's runtime (``paths.output_dir`` is the directory being named).
    """
    tree = OmegaConf.to_container(OmegaConf.create(cfg), resolve=False) if not isinstance(cfg, dict) else cfg
    tree = json.loads(json.dumps(tree, default=str))  # a private deep copy
    tree.pop("hydra", None)
    tree["paths"] = {key: f"<paths.{key}>" for key in tree.get("paths") or {}}
    resolved = OmegaConf.to_container(OmegaConf.create(tree), resolve=True)
    assert isinstance(resolved, dict)
    dataset = resolved.get("dataset") if isinstance(resolved.get("dataset"), dict) else {}
    folder = dataset.get("name") == "folder" and dataset.get("root")
    for key in HASH_EXCLUDED:
        _drop(resolved, key)
    for key, default in HASH_DEFAULTS.items():
        if _get(resolved, key) == default:
            _drop(resolved, key)
    if folder:  # a folder dataset is its folder: its name (not the machine's path to it) is hashed
        resolved["dataset"]["folder"] = Path(str(folder)).name
    return resolved


def config_hash(cfg: DictConfig | Mapping[str, Any]) -> str:
    """A short, stable hash of :func:`hashed_config` (sorted JSON, sha256)."""
    return _digest(hashed_config(cfg))


def _digest(hashed: Mapping[str, Any]) -> str:
    text = json.dumps(hashed, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:HASH_LENGTH]


def _hash_resolver(*, _root_: DictConfig) -> str:
    return config_hash(_root_)


def register_resolvers() -> None:
    """``${svfseg_run_hash:}`` in ``hydra.run.dir`` (idempotent)."""
    if not OmegaConf.has_resolver(HASH_RESOLVER):
        OmegaConf.register_new_resolver(HASH_RESOLVER, _hash_resolver)


def _flatten(tree: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(tree, dict) and tree:
        out: dict[str, Any] = {}
        for key, value in tree.items():
            out.update(_flatten(value, f"{prefix}{key}."))
        return out
    return {prefix.rstrip("."): tree}


def differing_keys(old: Mapping[str, Any], new: Mapping[str, Any]) -> list[str]:
    """Dotted keys whose values differ between two hashed configs (missing on one side included)."""
    a, b = _flatten(dict(old)), _flatten(dict(new))
    return sorted(k for k in set(a) | set(b) if a.get(k, "<absent>") != b.get(k, "<absent>"))


def describe_changes(old: Mapping[str, Any], new: Mapping[str, Any], keys: list[str], limit: int = 8) -> str:
    a, b = _flatten(dict(old)), _flatten(dict(new))
    return preview(
        (f"{k}: {a.get(k, '<absent>')!r} -> {b.get(k, '<absent>')!r}" for k in keys), limit, sep="; "
    )


def is_global_rank_zero() -> bool:
    """True in the first process of a run (and outside DDP): the one that owns the run directory.

    Lightning's re-launched ranks set ``LOCAL_RANK``; torchrun sets ``RANK``; srun sets ``SLURM_PROCID``.
    """
    for var in ("RANK", "SLURM_PROCID", "LOCAL_RANK"):
        if os.environ.get(var) not in (None, ""):
            return int(os.environ[var]) == 0
    return True


def has_results(out: Path) -> bool:
    """Checkpoints, test metrics or logs of a run are in ``out``."""
    ckpts = out / "checkpoints"
    return (ckpts.is_dir() and any(ckpts.iterdir())) or any((out / f).exists() for f in RESULT_FILES.values())


def slurm_restart_count() -> int:
    """How many times SLURM has requeued this job (``SLURM_RESTART_COUNT``): 0 on a first start and outside
    SLURM. A requeued job (a timeout or a preemption under the submitit launcher) runs the same command
    again, so train.py resumes it as ``ckpt_path=auto`` would."""
    value = os.environ.get("SLURM_RESTART_COUNT", "").strip()
    return int(value) if value.isdigit() else 0


def is_recorded_run(out: Path, cfg: DictConfig) -> bool:
    """``out``'s ownership record holds exactly ``cfg``'s hashed config (the folder belongs to this run)."""
    try:
        old = json.loads((out / RECORD_FILE).read_text())["config"]
    except (OSError, ValueError, KeyError, TypeError):
        return False
    return not differing_keys(old, hashed_config(cfg))


def check_ownership(out: Path, cfg: DictConfig, *, resuming: bool, allowed: list[str]) -> None:
    """Refuse a run aimed at a folder that holds another run's results (before anything is written).

    ``resuming``: the command resumes (``ckpt_path=last`` or a checkpoint inside ``out``); ``allowed``:
    the keys that the command may change on resume (``resume_changes``).
    """
    record_path = out / RECORD_FILE
    new = hashed_config(cfg)
    ways_out = (
        "choose a new folder (leave hydra.run.dir at its default, which names the config's hash, or set "
        "hydra.run.dir=NEW_DIR), or resume that run with ckpt_path=last and its own settings"
    )
    if record_path.is_file():
        try:
            record = json.loads(record_path.read_text())
            old = record["config"]
        except (OSError, ValueError, KeyError, TypeError) as err:
            raise RunDirError(
                f"{record_path} is unreadable ({err}): this folder's owner is unknown; choose a new folder "
                "with hydra.run.dir=NEW_DIR, or remove the folder if its results are not needed"
            ) from err
        keys = [k for k in differing_keys(old, new) if not (resuming and _allowed(k, allowed))]
        if keys:
            raise RunDirError(
                f"{out} holds another run (config {record.get('hash', '?')}), which differs from this one in "
                f"{len(keys)} key(s): {describe_changes(old, new, keys)}. Nothing was written. Ways out: "
                + ways_out
                + (
                    "; a resume may change a key on purpose only when named, e.g. "
                    f"resume_changes=[{keys[0]}] (README, 'Resuming')"
                    if resuming
                    else ""
                )
            )
        if has_results(out) and not resuming:
            raise RunDirError(
                f"{out} already holds this run's results (checkpoints / metrics.json); starting it again "
                "would overwrite them. Nothing was written. Resume it with ckpt_path=last (or ckpt_path=auto, "
                "which also skips a finished run), or start a second copy in a new folder with "
                "hydra.run.dir=NEW_DIR (or a different seed)."
            )
    elif has_results(out) and not resuming:
        raise RunDirError(
            f"{out} holds results of a run without an ownership record ({RECORD_FILE}; written by an older "
            f"svfseg or another tool). Nothing was written. Ways out: {ways_out}"
        )


def _allowed(key: str, allowed: list[str]) -> bool:
    return any(key == a or key.startswith(f"{a}.") for a in allowed)


def write_record(out: Path, cfg: DictConfig) -> Path:
    """``svfseg-run.json``: the hashed config that owns ``out`` (atomically replaced)."""
    from svfseg.files import atomic_write_text

    config = hashed_config(cfg)
    record = {
        "hash": _digest(config),
        "config": config,
        "written": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
    }
    path = out / RECORD_FILE
    atomic_write_text(path, json.dumps(record, indent=2, sort_keys=True, default=str) + "\n")
    return path


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


@contextmanager
def run_lock(out: Path) -> Iterator[Path]:
    """Hold ``out/.svfseg.lock`` (pid, host, start time) for the duration; a second holder is refused."""
    out.mkdir(parents=True, exist_ok=True)
    path = out / LOCK_FILE
    info = {
        "pid": os.getpid(),
        "host": socket.gethostname(),
        "started": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "slurm_job": os.environ.get("SLURM_JOB_ID"),
    }
    try:
        fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
    except FileExistsError:
        reason = stale_reason(path)
        if reason is None:
            raise RunDirError(lock_message(path)) from None
        log.warning("removing the stale lock %s: %s", path, reason)
        path.unlink(missing_ok=True)
        try:
            fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:  # another process took it in between
            raise RunDirError(lock_message(path)) from None
    with os.fdopen(fd, "w") as handle:
        handle.write(json.dumps(info) + "\n")
    try:
        yield path
    finally:
        path.unlink(missing_ok=True)


def _read_lock(path: Path) -> dict[str, Any] | None:
    try:
        held = json.loads(path.read_text())
        return {
            "pid": int(held["pid"]),
            "host": str(held["host"]),
            "started": str(held["started"]),
            "slurm_job": held.get("slurm_job"),
        }
    except (OSError, ValueError, KeyError, TypeError):
        return None


def stale_reason(path: Path) -> str | None:
    """Why the lock at ``path`` is provably stale, or None.

    Stale: its process is gone from this host (a crash, SIGKILL, an out-of-memory kill), or it was
    taken by this same SLURM job before a requeue (a preempted job resumes under its job id).
    """
    held = _read_lock(path)
    if held is None:
        return None
    if held["host"] == socket.gethostname() and not _pid_alive(held["pid"]):
        return f"process {held['pid']} on this host has ended"
    job = os.environ.get("SLURM_JOB_ID")
    if job and held["slurm_job"] == job:
        return f"it was taken by this SLURM job ({job}) before it was requeued"
    return None


def lock_message(path: Path) -> str:
    """Who holds the lock, and whether it looks stale (same host, process gone)."""
    held = _read_lock(path)
    if held is None:
        return (
            f"{path} exists but is unreadable: another process may be writing this run directory. If no "
            f"svfseg process runs on it, remove the lock with: rm {path}"
        )
    pid, host, started = held["pid"], held["host"], held["started"]
    state = f"if that process has ended (check with ps or your scheduler on {host}), remove the lock with rm {path}"
    return (
        f"{path.parent} is in use by process {pid} on {host} since {started}; two processes must not write "
        f"one run directory. Nothing was written. Wait for it, or choose another folder with "
        f"hydra.run.dir=NEW_DIR; {state}"
    )


@contextmanager
def claim_run_dir(out: Path, cfg: DictConfig, *, resuming: bool, allowed: list[str]) -> Iterator[None]:
    """Hold ``out`` for this run while the body runs (the first process only; the others share it).

    The folder is checked to be free for this run (:func:`check_ownership`), locked, and only then are
    the ownership record and ``.hydra/`` written.
    """
    if not is_global_rank_zero():
        yield
        return
    check_ownership(out, cfg, resuming=resuming, allowed=allowed)
    with run_lock(out):
        write_record(out, cfg)
        save_hydra_record(out, cfg)
        log.info("run directory %s (config hash %s)", out, config_hash(cfg))
        yield


def save_hydra_record(out: Path, cfg: DictConfig) -> None:
    """Write ``.hydra/{config,hydra,overrides}.yaml`` as Hydra would, once the run has passed its checks.

    Hydra's own writing is off (``hydra.output_subdir: null``) so that a refused command leaves a
    finished run's ``.hydra`` untouched.
    """
    from hydra.core.hydra_config import HydraConfig

    from svfseg.files import atomic_write_text

    folder = out / ".hydra"
    folder.mkdir(parents=True, exist_ok=True)
    # Unlike Hydra's own copy, credential-like values (a key typed into a config) are redacted.
    atomic_write_text(folder / "config.yaml", OmegaConf.to_yaml(redact_secrets(cfg)))
    if HydraConfig.initialized():
        hydra_cfg = OmegaConf.to_container(HydraConfig.get(), resolve=False)
        overrides = hydra_cfg.get("overrides") or {}
        for group in ("task", "hydra"):
            overrides[group] = [redact_override(o) for o in overrides.get(group) or []]
        hydra_cfg["job"] = redact_secrets(hydra_cfg.get("job") or {})
        atomic_write_text(folder / "hydra.yaml", OmegaConf.to_yaml({"hydra": hydra_cfg}))
        atomic_write_text(folder / "overrides.yaml", OmegaConf.to_yaml(overrides["task"]))


def remove_if_empty(out: Path, stop: Path | None = None) -> None:
    """Remove ``out`` when a refused command left it empty, and its empty parents inside ``stop``.

    Hydra creates the run folder (and missing parents) before svfseg's checks run; a refused command
    removes what is empty again, but never climbs above ``stop`` (the working directory).
    """
    out = out.absolute()
    limit = stop.absolute() if stop is not None else None
    current = out
    try:
        while current.is_dir() and not any(current.iterdir()):
            if current != out and (limit is None or current == limit or not current.is_relative_to(limit)):
                break
            current.rmdir()
            current = current.parent
    except OSError:
        return


def remove_rank_folder(out: Path, log_name: str, stop: Path | None = None) -> None:
    """On a rank other than 0, after its work: remove ``out`` when it holds nothing but this rank's log.

    Under torchrun each rank composes its run folder itself; eval.py's default one carries a timestamp,
    so a rank that starts a second later names another folder, which then holds only its log while rank
    0's folder holds the results. A folder that rank 0 also uses holds its ``.hydra`` record, written
    before the first collective step, so it is never taken for such a leftover.
    """
    try:
        names = {p.name for p in out.iterdir()}
    except OSError:
        return
    if not names <= {log_name}:
        return
    if names:
        (out / log_name).unlink(missing_ok=True)
    remove_if_empty(out, stop=stop)
