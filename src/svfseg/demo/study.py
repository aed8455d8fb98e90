"""``python -m svfseg.demo --study``: the real-photo experiment over folds x seeds x strategies.

The demo's settings (:class:`~svfseg.demo.real.RealDemoSettings`) on every fold, with more seeds and
strategies. Each (fold, seed) trains one head and starts every strategy from it, so the strategies of one
(fold, seed) are paired: the differences SVF - freeze and SVF - full are taken pair by pair and reported
with a 95 % t-interval over all pairs. Finished runs (their ``metrics.json``) are kept, so an interrupted
study continues where it stopped; ``study.json`` and ``study.md`` are rewritten after every run.
"""

from __future__ import annotations

import json
import statistics
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from rich.console import Console
from scipy import stats

from svfseg.analysis import plot_strategy_panels
from svfseg.analysis.png import save_png
from svfseg.demo.common import epoch_curves
from svfseg.demo.real import (
    RealDemoSettings,
    check_demo_runs,
    is_svf,
    prepare_data,
    prepare_weights,
    run_head,
    run_strategy,
    score_baselines,
    singular_value_movement,
    strategy_dir,
)
from svfseg.files import atomic_write_text

STUDY_STRATEGIES = ("freeze", "full", "svf", "svf_bn", "bn", "part")
SVF_NAMES = ("svf", "peft/svf")  # the strategy every other one is paired against


@dataclass(frozen=True)
class StudySpec:
    settings: RealDemoSettings = field(
        default_factory=lambda: replace(
            RealDemoSettings(), strategies=STUDY_STRATEGIES, seeds=(0, 1, 2, 3, 4)
        )
    )
    folds: tuple[int, ...] = (0, 1, 2, 3)


STUDY = StudySpec()


def interval(values: list[float], level: float = 0.95) -> dict[str, float]:
    """Mean and the two-sided t-interval of the mean (n - 1 degrees of freedom)."""
    n = len(values)
    mean = statistics.fmean(values)
    if n < 2:
        return {"mean": mean, "low": float("nan"), "high": float("nan"), "n": n}
    half = stats.t.ppf(0.5 + level / 2, n - 1) * statistics.stdev(values) / n**0.5
    return {"mean": mean, "low": mean - half, "high": mean + half, "n": n}


def summarise_study(runs: dict[int, dict[str, dict[int, dict[str, Any]]]]) -> dict[str, Any]:
    """Per fold and overall mean +- std per strategy, and the paired differences with 95 % intervals."""
    strategies = list(dict.fromkeys(s for fold in runs.values() for s in fold))  # in the order run
    per_fold = {
        fold: {
            s: {
                "miou_mean": statistics.fmean(r["miou"] for r in seeds.values()),
                "miou_std": statistics.pstdev([r["miou"] for r in seeds.values()]),
                "n": len(seeds),
            }
            for s, seeds in by_strategy.items()
            if seeds
        }
        for fold, by_strategy in runs.items()
    }
    overall = {}
    for s in strategies:
        values = [r["miou"] for fold in runs.values() for r in fold.get(s, {}).values()]
        if values:
            overall[s] = {
                "miou_mean": statistics.fmean(values),
                "miou_std": statistics.pstdev(values),
                "n": len(values),
                **_means(runs, s),
            }
    paired = {}
    reference = next((s for s in SVF_NAMES if s in strategies), None)
    for a, b in ((reference, s) for s in strategies if reference is not None and s != reference):
        diffs = [
            fold[a][seed]["miou"] - fold[b][seed]["miou"]
            for fold in runs.values()
            if a in fold and b in fold
            for seed in fold[a]
            if seed in fold[b]
        ]
        if diffs:
            paired[f"{a} - {b}"] = interval(diffs)
    return {"per_fold": per_fold, "overall": overall, "paired": paired}


def _means(runs: dict[int, dict[str, dict[int, dict[str, Any]]]], strategy: str) -> dict[str, float]:
    """Means over every finished run of one strategy: last-epoch train / val mIoU, singular-value movement."""
    results = [r for fold in runs.values() for r in fold.get(strategy, {}).values()]
    out = {}
    for key, name in (("train_miou_per_epoch", "train_last"), ("val_miou_per_epoch", "val_last")):
        values = [r[key][-1] for r in results if r.get(key)]
        if values:
            out[name] = statistics.fmean(values)
    moved = [r["singular_values"] for r in results if "singular_values" in r]
    if moved:
        out["sv_mean_abs_relative_change"] = statistics.fmean(m["mean_abs_relative_change"] for m in moved)
        out["sv_max_abs_relative_change"] = max(m["max_abs_relative_change"] for m in moved)
    return out


def study_markdown(summary: dict[str, Any], baselines: dict[int, dict[str, Any]]) -> str:
    """The study's table (mIoU %, mean +- std over seeds) and the paired differences."""
    folds = sorted(summary["per_fold"])
    strategies = list(summary["overall"])
    head = "| strategy | " + " | ".join(f"fold {f}" for f in folds) + " | all folds |"
    lines = [head, "|" + "---|" * (len(folds) + 2)]
    for s in strategies:
        cells = []
        for f in folds:
            r = summary["per_fold"][f].get(s)
            cells.append(f"{100 * r['miou_mean']:.2f} ± {100 * r['miou_std']:.2f} (n={r['n']})" if r else "-")
        o = summary["overall"][s]
        lines.append(
            f"| {s} | "
            + " | ".join(cells)
            + f" | {100 * o['miou_mean']:.2f} ± {100 * o['miou_std']:.2f} (n={o['n']}) |"
        )
    for name in ("all_foreground", "cosine_prior"):
        cells = [f"{100 * baselines[f][name]['miou']:.2f}" if f in baselines else "-" for f in folds]
        lines.append(f"| {name} (no training) | " + " | ".join(cells) + " | |")
    lines += [
        "",
        "| strategy | last-epoch train-episode mIoU % | last-epoch val mIoU % | mean \\|Δs/s0\\| | largest \\|Δs/s0\\| |",
        "|---|---:|---:|---:|---:|",
    ]
    for s in strategies:
        o = summary["overall"][s]
        cells = [f"{100 * o[k]:.2f}" if k in o else "" for k in ("train_last", "val_last")]
        cells += [
            f"{100 * o[k]:.3f} %" if k in o else ""
            for k in ("sv_mean_abs_relative_change", "sv_max_abs_relative_change")
        ]
        lines.append(f"| {s} | " + " | ".join(cells) + " |")
    lines += ["", "| paired difference (mIoU points) | mean | 95 % interval | pairs |", "|---|---|---|---|"]
    for name, r in summary["paired"].items():
        lines.append(
            f"| {name} | {100 * r['mean']:+.2f} | [{100 * r['low']:+.2f}, {100 * r['high']:+.2f}] | {r['n']} |"
        )
    return "\n".join(lines) + "\n"


def resumed_result(run_dir: Path, metrics: dict[str, Any], finetune: str) -> dict[str, Any]:
    """A finished run's result as :func:`run_strategy` returns it, read back from its folder."""
    result = {
        "miou": metrics["miou"],
        "fbiou": metrics["fbiou"],
        "checkpoint": metrics.get("checkpoint"),
        **epoch_curves(run_dir),
    }
    if is_svf(finetune) and metrics.get("checkpoint"):
        result["singular_values"] = singular_value_movement(Path(metrics["checkpoint"]))
    return result


def write_study(
    out: Path,
    settings: RealDemoSettings,
    folds: tuple[int, ...] | list[int],
    baselines: dict[int, dict[str, Any]],
    runs: dict[int, dict[str, dict[int, dict[str, Any]]]],
    seconds: float,
) -> None:
    """``study.json`` (every run) and ``study.md`` (the tables), rewritten after every run."""
    summary = summarise_study(runs)
    record = {
        "setting": settings.setting,
        "settings": asdict(settings),
        "folds": list(folds),
        "baselines": {str(k): v for k, v in baselines.items()},
        "summary": summary,
        "runs": {
            str(f): {s: {str(k): v for k, v in r.items()} for s, r in by.items()} for f, by in runs.items()
        },
        "seconds": round(seconds, 1),
    }
    atomic_write_text(out / "study.json", json.dumps(record, indent=1, default=str) + "\n")
    atomic_write_text(out / "study.md", study_markdown(summary, baselines))


def write_study_figure(
    out: Path, settings: RealDemoSettings, runs: dict[int, dict[str, dict[int, dict[str, Any]]]]
) -> Path:
    """Figure 2 over the whole study: per strategy, train vs val mIoU per epoch, mean and range over
    every fold x seed finished so far."""
    dirs = {
        s: [
            out / f"fold{fold}" / strategy_dir(s) / f"seed{seed}"
            for fold, by in runs.items()
            for seed in by.get(s, {})
        ]
        for s in settings.strategies
    }
    dirs = {s: d for s, d in dirs.items() if d}
    n = len(next(iter(dirs.values())))
    title = f"Figure 2, study ({n} runs per strategy: folds x seeds): {settings.setting.replace(f'fold {settings.fold}', 'all folds')}"
    path = out / "figure2_miou_curves.png"
    save_png(plot_strategy_panels(dirs, title=title, unit="run"), path)
    return path


def check_same_settings(out: Path, settings: RealDemoSettings) -> None:
    """A study folder continues only with the settings it was started with (finished runs are reused)."""
    path = out / "study.json"
    if not path.is_file():
        return
    before = json.loads(path.read_text())["settings"]
    now = json.loads(json.dumps(asdict(settings)))
    changed = {
        k: (before.get(k), v)
        for k, v in now.items()
        if k not in ("seeds", "strategies") and before.get(k) != v
    }
    if changed:
        raise ValueError(
            f"{out} holds a study with other settings ({', '.join(f'{k}: {a} -> {b}' for k, (a, b) in changed.items())}); "
            "continue it with its settings or choose another --out"
        )


def _saved_baselines(out: Path) -> dict[int, dict[str, Any]]:
    path = out / "study.json"
    if not path.is_file():
        return {}
    return {int(fold): r for fold, r in json.loads(path.read_text()).get("baselines", {}).items()}


def _finished(run_dir: Path) -> dict[str, Any] | None:
    path = run_dir / "metrics.json"
    return json.loads(path.read_text()) if path.is_file() else None


def run_study(
    out: Path,
    data_root: Path,
    weights_dir: Path,
    settings: RealDemoSettings,
    *,
    folds: tuple[int, ...] | list[int] = STUDY.folds,
    src: str | None = None,
) -> dict[str, Any]:
    """Every fold x seed: one head, then every strategy from it; keeps finished runs; writes the summary."""
    console = Console()
    start = time.perf_counter()
    check_same_settings(out, settings)
    check_demo_runs(settings, data_root, weights_dir, out)
    data_root = prepare_data(data_root, src, settings.size, console)
    weights = prepare_weights(weights_dir, console)
    runs: dict[int, dict[str, dict[int, dict[str, Any]]]] = {
        fold: {s: {} for s in settings.strategies} for fold in folds
    }
    # The baselines depend only on the settings (checked above) and the fold: a resumed study reuses them.
    scored = _saved_baselines(out)
    baselines = {
        fold: scored.get(fold)
        or score_baselines(replace(settings, fold=fold), data_root, weights, out / f"fold{fold}")
        for fold in folds
    }
    # Seed-major: after each pass over the folds the finished part is balanced across folds, so a study
    # stopped early still reports every fold with the same seeds.
    for seed in settings.seeds:
        for fold in folds:
            fold_settings = replace(settings, fold=fold)
            fold_out = out / f"fold{fold}"
            head = fold_out / "head" / f"seed{seed}" / "checkpoints" / "last.ckpt"
            if not head.is_file():
                head = run_head(fold_settings, data_root, weights, fold_out, seed, console)
            for finetune in settings.strategies:
                run_dir = fold_out / strategy_dir(finetune) / f"seed{seed}"
                done = _finished(run_dir)
                if done is None:
                    result = run_strategy(
                        fold_settings, data_root, weights, fold_out, finetune, seed, head, console
                    )
                else:
                    result = resumed_result(run_dir, done, finetune)
                runs[fold][finetune][seed] = result
                write_study(out, settings, folds, baselines, runs, time.perf_counter() - start)
        write_study_figure(out, settings, runs)
    record = json.loads((out / "study.json").read_text())
    console.print((out / "study.md").read_text())
    return record
