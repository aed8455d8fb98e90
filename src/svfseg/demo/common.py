"""What both demos share: composing a train.py config, owning their run folders, per-seed summaries."""

from __future__ import annotations

import shutil
import statistics
import time
from pathlib import Path
from typing import Any

import cv2
from hydra.errors import HydraException
from omegaconf.errors import OmegaConfBaseException
from rich.console import Console
from rich.table import Table

from svfseg.analysis import overlay_cues, plot_before_after, prepare_image, singular_value_changes
from svfseg.analysis.cues import cue_maps
from svfseg.analysis.curves import TRAIN_KEY, VAL_KEY, find_metrics_csv, read_metric_curves
from svfseg.analysis.png import save_png
from svfseg.compose import CONF_DIR, compose_train_config
from svfseg.labels import IGNORE_INDEX
from svfseg.run_dir import RECORD_FILE
from svfseg.tasks.reporting import percent_with_spread
from svfseg.tasks.train import train


class DemoInputError(ValueError):
    """A demo option that would otherwise fail only after minutes of data preparation and training."""


def check_run_configs(runs: dict[str, list[str]], *, experiment_rows: bool = False) -> None:
    """Compose the config of every run the demo will start (``label -> overrides``) before any work.

    A strategy that names no config (``--strategies nosuch``) failed only when its first run started, after
    the data, the weights, the baselines and a head had been made; every such problem is reported at once.
    ``experiment_rows``: the demo also takes experiment rows (``peft/lora_match``) as strategies.
    """
    problems = []
    for label, overrides in runs.items():
        try:
            compose_train_config(overrides)
        except (HydraException, OmegaConfBaseException) as err:
            first = next((line for line in str(err).splitlines() if line.strip()), type(err).__name__)
            problems.append(f"{label}: {first}")
    if problems:
        names = sorted(p.stem for p in (CONF_DIR / "finetune").glob("*.yaml"))
        rows = " or an experiment row such as peft/lora_match" if experiment_rows else ""
        problems.append(f"a strategy is a conf/finetune name ({', '.join(names)}){rows}")
        raise DemoInputError("\n".join(problems))


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


def train_run(run_dir: Path, overrides: list[str], console: Console, label: str) -> dict[str, Any]:
    """``python train.py OVERRIDES`` in the demo's own ``run_dir`` (a previous demo run there is replaced),
    printed as that command under ``label``; returns train.py's metrics."""
    replace_previous_demo_run(run_dir, console)
    console.print(f"[bold]{label}[/] python train.py {' '.join(overrides)}")
    return train(compose_train_config(overrides))


def run_result(run_dir: Path, overrides: list[str], console: Console, label: str) -> dict[str, Any]:
    """:func:`train_run`, kept as comparison.json keeps a run: test scores, checkpoint, time, curves."""
    began = time.perf_counter()
    metrics = train_run(run_dir, overrides, console, label)
    return {
        "miou": metrics["miou"],
        "fbiou": metrics["fbiou"],
        "class_iou": metrics["class_iou"],
        "n_episodes": metrics["n_episodes"],
        "checkpoint": metrics["checkpoint"],
        "seconds": round(time.perf_counter() - began, 1),
        **epoch_curves(run_dir),
    }


def strategy_cells(name: str, r: dict[str, Any]) -> list[str]:
    """The first cells of a strategy's row in a comparison table: name, mIoU (mean ± std), FB-IoU."""
    return [
        name,
        percent_with_spread(r["miou_mean"], r["miou_std"], len(r["seeds"])),
        f"{100 * r['fbiou_mean']:.2f}",
    ]


def print_table(title: str, columns: tuple[str, ...], rows: list[list[str]], console: Console) -> None:
    """A comparison table, every column right-aligned."""
    table = Table(title=title)
    for col in columns:
        table.add_column(col, justify="right")
    for row in rows:
        table.add_row(*row)
    console.print(table)


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


def svf_figures(
    out: Path,
    backbone: Any,
    layer: str,
    image: Any,
    *,
    size: int,
    title: str,
    setting: str,
    seed: int,
    initial_label: str,
    cues_name: str,
    mask: Any = None,
) -> dict[str, Path]:
    """Figure 4 (top-30 singular values of ``layer`` before / after) and the cue maps of ``layer`` on
    ``image``, for an SVF backbone; ``title`` names the scale ("at mini scale", "on real photos")."""
    change = singular_value_changes(backbone, [layer])[layer]
    plots = {"figure4": out / "figure4_singular_values.png", "cues": out / cues_name}
    fig = plot_before_after(
        change,
        k=30,
        title=f"Figure 4 {title}: top-30 singular values of {layer} before / after SVF (seed {seed})\n{setting}",
        initial_label=initial_label,
    )
    save_png(fig, plots["figure4"])
    shown, tensor = prepare_image(image, size)
    if mask is not None:
        mask = cv2.resize(mask, shown.shape[1::-1], interpolation=cv2.INTER_NEAREST)
        mask = (mask > 0) & (mask != IGNORE_INDEX)
    cues = cue_maps(backbone, layer, tensor, n_grown=3, n_shrunk=3)
    fig = overlay_cues(
        shown,
        cues.maps,
        cues.titles,
        mask=mask,
        ncols=4,
        suptitle=f"SVF cue maps of {layer}: directions whose singular value grew / shrank most\n{setting}, seed {seed}",
    )
    save_png(fig, plots["cues"], dpi=80)
    return plots
