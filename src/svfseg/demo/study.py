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

from svfseg.demo.real import (
    RealDemoSettings,
    prepare_data,
    prepare_weights,
    run_head,
    run_strategy,
    score_baselines,
)
from svfseg.files import atomic_write_text

STUDY_STRATEGIES = ("freeze", "full", "svf", "svf_bn", "bn", "part")
PAIRS = (("svf", "freeze"), ("svf", "full"))


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
    strategies = sorted({s for fold in runs.values() for s in fold}, key=STUDY_STRATEGIES.index)
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
            }
    paired = {}
    for a, b in PAIRS:
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
    lines += ["", "| paired difference (mIoU points) | mean | 95 % interval | pairs |", "|---|---|---|---|"]
    for name, r in summary["paired"].items():
        lines.append(
            f"| {name} | {100 * r['mean']:+.2f} | [{100 * r['low']:+.2f}, {100 * r['high']:+.2f}] | {r['n']} |"
        )
    return "\n".join(lines) + "\n"


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
    data_root = prepare_data(data_root, src, settings.size, console)
    weights = prepare_weights(weights_dir, console)
    runs: dict[int, dict[str, dict[int, dict[str, Any]]]] = {}
    baselines: dict[int, dict[str, Any]] = {}
    record: dict[str, Any] = {}
    for fold in folds:
        fold_settings = replace(settings, fold=fold)
        fold_out = out / f"fold{fold}"
        baselines[fold] = score_baselines(fold_settings, data_root, weights, fold_out)
        runs[fold] = {s: {} for s in settings.strategies}
        for seed in settings.seeds:
            head = fold_out / "head" / f"seed{seed}" / "checkpoints" / "last.ckpt"
            if not head.is_file():
                head = run_head(fold_settings, data_root, weights, fold_out, seed, console)
            for finetune in settings.strategies:
                run_dir = fold_out / finetune / f"seed{seed}"
                done = _finished(run_dir)
                if done is None:
                    runs[fold][finetune][seed] = run_strategy(
                        fold_settings, data_root, weights, fold_out, finetune, seed, head, console
                    )
                else:
                    runs[fold][finetune][seed] = {
                        "miou": done["miou"],
                        "fbiou": done["fbiou"],
                        "checkpoint": done.get("checkpoint"),
                    }
                summary = summarise_study(runs)
                record = {
                    "settings": asdict(settings),
                    "folds": list(folds),
                    "baselines": {str(k): v for k, v in baselines.items()},
                    "summary": summary,
                    "runs": {
                        str(f): {s: {str(k): v for k, v in r.items()} for s, r in by.items()}
                        for f, by in runs.items()
                    },
                    "seconds": round(time.perf_counter() - start, 1),
                }
                atomic_write_text(out / "study.json", json.dumps(record, indent=1, default=str) + "\n")
                atomic_write_text(out / "study.md", study_markdown(summary, baselines))
    console.print((out / "study.md").read_text())
    return record
