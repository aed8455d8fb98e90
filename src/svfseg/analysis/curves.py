"""mIoU of training vs validation episodes over epochs, several strategies in one plot (paper Figs 2, 3, 7).

Every run logs ``val/miou`` (novel classes) and ``train_episodes/miou`` (base-class episodes) each
validation epoch; the CSV logger writes them to ``<run>/csv/metrics.csv``. A widening gap between the two
curves is the over-fitting the paper attributes to fine-tuning the backbone without SVF.
"""

from __future__ import annotations

import csv
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from matplotlib.figure import Figure

VAL_KEY, TRAIN_KEY = "val/miou", "train_episodes/miou"


@dataclass(frozen=True)
class Curve:
    """Per-epoch values of one metric."""

    epochs: tuple[int, ...]
    values: tuple[float, ...]


def read_metric_curves(metrics_csv: Path, keys: tuple[str, ...] = (VAL_KEY, TRAIN_KEY)) -> dict[str, Curve]:
    """Read Lightning's CSVLogger file; rows without a value for a key are skipped."""
    if not metrics_csv.is_file():
        raise FileNotFoundError(f"{metrics_csv} not found: was the run logged with logger=csv?")
    with metrics_csv.open(newline="") as fh:
        rows = list(csv.DictReader(fh))
    curves = {}
    for key in keys:
        points = sorted(
            {int(float(r["epoch"])): float(r[key]) for r in rows if r.get(key) not in (None, "")}.items()
        )
        if not points:
            raise ValueError(
                f"{metrics_csv} has no values for {key!r}; columns: {list(rows[0]) if rows else []}"
            )
        curves[key] = Curve(tuple(e for e, _ in points), tuple(v for _, v in points))
    return curves


def find_metrics_csv(run_dir: Path) -> Path:
    """The CSV logger file of a run directory (``csv/metrics.csv`` or any ``metrics.csv`` below)."""
    direct = run_dir / "csv" / "metrics.csv"
    if direct.is_file():
        return direct
    found = sorted(run_dir.rglob("metrics.csv"))
    if not found:
        raise FileNotFoundError(f"no metrics.csv below {run_dir}")
    return found[0]


def plot_train_val_curves(runs: Mapping[str, Path], *, title: str = "mIoU over epochs") -> Figure:
    """One colour per strategy; solid = validation (novel) episodes, dashed = training (base) episodes."""
    fig = Figure(figsize=(7, 4.5))
    ax = fig.subplots()
    for i, (label, run_dir) in enumerate(runs.items()):
        curves = read_metric_curves(find_metrics_csv(Path(run_dir)))
        colour = f"C{i}"
        val, train = curves[VAL_KEY], curves[TRAIN_KEY]
        ax.plot(val.epochs, [100 * v for v in val.values], color=colour, label=f"{label}: val (novel)")
        ax.plot(
            train.epochs,
            [100 * v for v in train.values],
            color=colour,
            ls="--",
            label=f"{label}: train (base)",
        )
    ax.set_xlabel("epoch")
    ax.xaxis.get_major_locator().set_params(integer=True)
    ax.set_ylabel("mIoU (%)")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def mean_curve(curves: Sequence[Curve]) -> tuple[tuple[int, ...], list[float], list[float], list[float]]:
    """(epochs, mean, min, max) over runs, on the epochs every run has (seeds of one strategy)."""
    if not curves:
        raise ValueError("mean_curve needs at least one curve")
    epochs = tuple(sorted(set.intersection(*(set(c.epochs) for c in curves))))
    if not epochs:
        raise ValueError(f"the curves share no epoch: {[c.epochs for c in curves]}")
    table = [[dict(zip(c.epochs, c.values))[e] for c in curves] for e in epochs]
    return epochs, [sum(v) / len(v) for v in table], [min(v) for v in table], [max(v) for v in table]


def plot_strategy_panels(runs: Mapping[str, Sequence[Path]], *, title: str, unit: str = "seed") -> Figure:
    """The layout of the paper's Fig. 2: one panel per strategy, shared axes, train vs val mIoU per epoch.

    ``runs`` maps a strategy to its run directories (one per seed; ``unit`` names what one run is, e.g.
    "run" for folds x seeds): lines are the mean over runs, the band spans the lowest to highest run, so
    a reader sees the spread next to the trend.
    """
    if not runs:
        raise ValueError("plot_strategy_panels got no runs")
    fig = Figure(figsize=(3.6 * len(runs), 3.6))
    axes = fig.subplots(1, len(runs), sharex=True, sharey=True, squeeze=False)[0]
    for ax, (label, dirs) in zip(axes, runs.items()):
        curves = [read_metric_curves(find_metrics_csv(Path(d))) for d in dirs]
        for key, colour, name in (
            (TRAIN_KEY, "C1", "train episodes (base)"),
            (VAL_KEY, "C0", "val episodes (novel)"),
        ):
            epochs, mean, low, high = mean_curve([c[key] for c in curves])
            shown = [e + 1 for e in epochs]  # epoch 1 = after the first epoch
            ax.plot(shown, [100 * v for v in mean], color=colour, marker="o", ms=3, label=name)
            if len(curves) > 1:
                ax.fill_between(
                    shown, [100 * v for v in low], [100 * v for v in high], color=colour, alpha=0.2
                )
        ax.set_title(f"{label} ({len(curves)} {unit}{'s' if len(curves) > 1 else ''})", fontsize=10)
        ax.set_xlabel("epoch")
        ax.xaxis.get_major_locator().set_params(integer=True)
        ax.grid(alpha=0.3)
    # mIoU is never negative; an all-zero run would otherwise get a symmetric axis around 0.
    axes[0].set_ylim(0, max(axes[0].get_ylim()[1], 1.0))
    axes[0].set_ylabel("mIoU (%)")
    axes[0].legend(fontsize=8, loc="lower right")
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return fig
