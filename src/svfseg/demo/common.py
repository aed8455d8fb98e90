"""What both demos share: composing a train.py config, owning their run folders, per-seed summaries."""

from __future__ import annotations

import shutil
import statistics
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from omegaconf import open_dict
from rich.console import Console

from svfseg.analysis.curves import TRAIN_KEY, VAL_KEY, find_metrics_csv, read_metric_curves
from svfseg.run_dir import RECORD_FILE


def compose_train_config(overrides: Sequence[str]) -> Any:
    """``conf/train.yaml`` with ``overrides``, as ``python train.py`` composes it (no progress bar)."""
    conf_dir = Path(__file__).resolve().parents[3] / "conf"
    if not conf_dir.is_dir():
        raise FileNotFoundError(f"{conf_dir} not found: run the demo from a source checkout (make demo)")
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(conf_dir), version_base="1.3"):
        cfg = compose(config_name="train", overrides=list(overrides))
    with open_dict(cfg):
        cfg.callbacks.pop("progress_bar", None)
    return cfg


def replace_previous_demo_run(run_dir: Path, console: Console) -> None:
    """The demo's run folders are its own: a previous demo run there is replaced, anything else refused.

    train.py refuses to start over a folder holding a run's results (nothing silently overwritten); the
    demo opts in for the folders it made itself, recognised by their ownership record.
    """
    if not run_dir.exists() or not any(run_dir.iterdir()):
        return
    if not (run_dir / RECORD_FILE).is_file():
        raise FileExistsError(
            f"{run_dir} holds files that are not a demo run; choose another --out or remove the folder"
        )
    console.print(f"    replacing the previous demo run in {run_dir}")
    shutil.rmtree(run_dir)


def epoch_curves(run_dir: Path) -> dict[str, list[float]]:
    curves = read_metric_curves(find_metrics_csv(run_dir))
    return {
        "train_miou_per_epoch": list(curves[TRAIN_KEY].values),
        "val_miou_per_epoch": list(curves[VAL_KEY].values),
    }


def summarise(per_seed: dict[int, dict[str, Any]]) -> dict[str, Any]:
    """Mean and population std over training seeds, and the mean curves (what comparison.json holds)."""
    mious = [r["miou"] for r in per_seed.values()]
    fbious = [r["fbiou"] for r in per_seed.values()]
    n_epochs = min(len(r["val_miou_per_epoch"]) for r in per_seed.values())

    def mean_curve(key: str) -> list[float]:
        return [statistics.fmean(r[key][e] for r in per_seed.values()) for e in range(n_epochs)]

    return {
        "miou_mean": statistics.fmean(mious),
        "miou_std": statistics.pstdev(mious),
        "fbiou_mean": statistics.fmean(fbious),
        "fbiou_std": statistics.pstdev(fbious),
        "seeds": sorted(per_seed),
        "train_miou_per_epoch": mean_curve("train_miou_per_epoch"),
        "val_miou_per_epoch": mean_curve("val_miou_per_epoch"),
        "per_seed": {str(s): r for s, r in sorted(per_seed.items())},
    }
