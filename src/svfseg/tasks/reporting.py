"""Metric records (``metrics.json``), console tables and logger shutdown."""

from __future__ import annotations

import json
import logging
import statistics
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from omegaconf import DictConfig
from pytorch_lightning.loggers import WandbLogger
from rich.console import Console
from rich.table import Table

from svfseg.data.fold import FoldSpec
from svfseg.data.lists.held_out import DEFAULT_SELECTION
from svfseg.files import atomic_write_text
from svfseg.run_spec import RunSpec

log = logging.getLogger(__name__)


def _floats(values: dict[str, Any], class_ids: Sequence[int]) -> dict[str, Any]:
    ious = [float(v) for v in values["class_iou"]]
    if len(ious) != len(class_ids):
        raise ValueError(
            f"{len(ious)} class IoUs for the {len(class_ids)} evaluation classes {list(class_ids)}"
        )
    return {
        "miou": float(values["miou"]),
        "fbiou": float(values["fbiou"]),
        "class_iou": {str(c): iou for c, iou in zip(class_ids, ious, strict=True)},
        "n_episodes": int(values["n_episodes"]),
    }


def per_class_summary(per_seed: dict[int, dict[str, Any]], names: dict[int, str]) -> dict[str, Any]:
    """``{class id: {name, iou (mean over seeds), std (population), per_seed}}`` from ``_floats`` records."""
    first = next(iter(per_seed.values()))
    out: dict[str, Any] = {}
    for cid in first["class_iou"]:
        values = {str(seed): v["class_iou"][cid] for seed, v in per_seed.items()}
        ious = list(values.values())
        out[cid] = {
            "name": names[int(cid)],
            "iou": statistics.fmean(ious),
            "std": statistics.pstdev(ious) if len(ious) > 1 else 0.0,
            "per_seed": values,
        }
    return out


def seeds_summary(per_seed: dict[int, dict[str, Any]]) -> dict[str, Any]:
    """Mean and (population) std over episode seeds, the protocol of BAM's test.py."""
    mious = [v["miou"] for v in per_seed.values()]
    fbious = [v["fbiou"] for v in per_seed.values()]
    n = len(mious)
    return {
        "miou_mean": statistics.fmean(mious),
        "miou_std": statistics.pstdev(mious) if n > 1 else 0.0,
        "fbiou_mean": statistics.fmean(fbious),
        "fbiou_std": statistics.pstdev(fbious) if n > 1 else 0.0,
    }


def run_meta(cfg: DictConfig) -> dict[str, Any]:
    """What identifies a run in a sweep table (see svfseg.tables)."""
    return {
        "method": cfg.method.name,
        "backbone": cfg.backbone.name,
        "finetune": cfg.finetune.name,
        "dataset": cfg.dataset.name,
        "seed": int(cfg.seed),
        "row": cfg.get("row"),
        "table": cfg.get("table"),
    }


def trainable_counts(param_groups: Sequence[dict[str, Any]] | None) -> dict[str, Any] | None:
    """Trainable elements of the optimizer groups a strategy built (``FinetuneStrategy.apply``): the backbone's
    total (what ``python -m svfseg.finetune.budget`` prints as ``backbone``), the head's, and per group.
    None when no strategy was applied (nothing to count)."""
    if param_groups is None:
        return None
    per_group = {str(g["name"]): sum(p.numel() for p in g["params"]) for g in param_groups}
    backbone = sum(n for name, n in per_group.items() if name.startswith("backbone."))
    return {"backbone": backbone, "head": per_group.get("head", 0), "per_group": per_group}


def metrics_record(
    values: dict[str, Any] | dict[int, dict[str, Any]],
    *,
    cfg: DictConfig,
    checkpoint: str | None,
    n_episodes: int,
    seeds: Sequence[int],
    config: dict[str, Any] | None = None,
    fold: FoldSpec | None = None,
    trainable: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """The ``metrics.json`` record: headline numbers (mean over seeds), per-class and per-seed values, run identity.

    ``class_iou`` maps each evaluation class id to its name and IoU (mean and std over seeds, and per seed).
    ``fold``: the classes evaluated (default: the run's fold; another one for a cross-dataset evaluation).
    ``trainable``: :func:`trainable_counts` of the run's strategy, recorded when given.
    """
    per_seed = values if all(isinstance(k, int) for k in values) else {int(seeds[0]): values}
    fold = fold if fold is not None else RunSpec.from_config(cfg).fold
    per_seed = {int(s): _floats(v, fold.novel_classes) for s, v in per_seed.items()}  # type: ignore[union-attr]
    summary = seeds_summary(per_seed)
    record: dict[str, Any] = {
        "miou": summary["miou_mean"],
        "fbiou": summary["fbiou_mean"],
        "class_iou": per_class_summary(per_seed, fold.class_names()),
        **summary,
        "per_seed": {str(s): v for s, v in per_seed.items()},
        "n_episodes": int(n_episodes),
        "seeds": [int(s) for s in seeds],
        "fold": int(cfg.fold),
        "shot": int(cfg.shot),
        "checkpoint": checkpoint,
        # which episodes chose that checkpoint (held_out: the tested images never chose it)
        "selection": str(cfg.dataset.get("selection", DEFAULT_SELECTION)),
        "run": run_meta(cfg),
        "config": config,
    }
    if trainable is not None:
        record["trainable"] = trainable
    return record


def write_metrics_json(path: str | Path, record: dict[str, Any]) -> Path:
    """Write ``record`` as ``metrics.json`` (indented JSON), atomically: a full disk or a kill keeps the
    previous file whole, never a truncated one, and the error names ``path``."""
    return atomic_write_text(path, json.dumps(record, indent=2))


def percent_with_spread(mean: float, std: float, n_runs: int) -> str:
    """``mean ± std`` in percent; just the mean for a single run, which has no spread to show."""
    return f"{100 * mean:.2f}" if n_runs < 2 else f"{100 * mean:.2f} ± {100 * std:.2f}"


def print_metrics(record: dict[str, Any], *, title: str) -> None:
    table = Table(title=title)
    for col in ("seed", "mIoU", "FB-IoU", "episodes"):
        table.add_column(col, justify="right")
    for seed, v in record["per_seed"].items():
        table.add_row(seed, f"{100 * v['miou']:.2f}", f"{100 * v['fbiou']:.2f}", str(v["n_episodes"]))
    if len(record["per_seed"]) > 1:
        table.add_row(
            "mean ± std",
            f"{100 * record['miou_mean']:.2f} ± {100 * record['miou_std']:.2f}",
            f"{100 * record['fbiou_mean']:.2f} ± {100 * record['fbiou_std']:.2f}",
            "",
        )
    console = Console()
    console.print(table)
    n_seeds = len(record["per_seed"])
    per_class = Table(title="per class (mean ± std over seeds)" if n_seeds > 1 else "per class")
    for col in ("class", "name", "IoU"):
        per_class.add_column(col, justify="right" if col != "name" else "left")
    for cid, v in record["class_iou"].items():
        per_class.add_row(cid, v["name"], percent_with_spread(v["iou"], v["std"], n_seeds))
    console.print(per_class)


def close_loggers(loggers: Sequence[Any], *, status: str = "success") -> None:
    """Finalize every logger and finish the W&B run, even when the run failed.

    Lightning's ``WandbLogger.finalize`` does nothing on failure and never ends the run, so without this a
    failed job leaves its W&B run open (and a multirun's next job would log into it). The exit code
    marks the W&B run as failed when ``status != "success"``.
    """
    exit_code = 0 if status == "success" else 1
    for logger in loggers:
        try:
            logger.finalize(status)
        except Exception as err:  # a logger failing to close must not hide the run's own error
            log.warning("logger %s failed to finalize: %s", type(logger).__name__, err)
        run = getattr(logger, "_experiment", None) if isinstance(logger, WandbLogger) else None
        if run is not None:
            try:
                run.finish(exit_code=exit_code)
            except Exception as err:
                log.warning("could not finish the W&B run of %s: %s", type(logger).__name__, err)
            logger._experiment = None  # type: ignore[attr-defined]
    try:
        import wandb
    except ImportError:
        return
    if wandb.run is not None:
        wandb.finish(exit_code=exit_code)
