"""Gather the ``metrics.json`` of a sweep into the paper's table form.

    python -m svfseg.tables SWEEP_DIR [--layout table1] [--metric miou] [--out OUT_PREFIX] [--per-class]
                                      [--paired ROW] [--image-intervals]

Each run directory holds a ``metrics.json`` (written by train.py and eval.py) with ``miou``, ``fbiou``,
``fold``, ``shot`` and a ``row`` label (set by the experiment file, e.g. "baseline + SVF"; derived from
method / backbone / finetune otherwise). Rows are settings, columns are folds 0-3 and their mean, per shot;
``delta`` is the difference of the mean from the layout's baseline row (the first row unless named).
Output: Markdown on stdout, plus ``OUT_PREFIX.md`` / ``OUT_PREFIX.csv`` when ``--out`` is given.
``--per-class`` adds one table per (shot, fold): settings x that fold's evaluation classes, by name.
``--image-intervals`` adds each row's mean column with a 95 % bootstrap interval over the test images and
its paired difference from the baseline row (:mod:`svfseg.table_intervals`, from every run's
``episodes.json``). ``--paired ROW`` adds two tables (:func:`paired_report`): mean and sample std over training seeds per
(row, shot, fold), and every row's difference from ``ROW`` taken pair by pair (the same fold, shot and
training seed) with a 95 % t-interval over the pairs, each with the backbone's trainable parameter count
that train.py and eval.py record in ``metrics.json`` (``trainable.backbone``).
"""

from __future__ import annotations

import argparse
import csv
import datetime as _dt
import json
import math
import statistics
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from omegaconf import OmegaConf
from scipy import stats

from svfseg.data.lists.held_out import DEFAULT_SELECTION
from svfseg.data.splits import NUM_FOLDS
from svfseg.files import atomic_write, atomic_write_text
from svfseg.run_dir import RECORD_FILE, RESULT_FILES
from svfseg.table_intervals import image_intervals, intervals_markdown

FOLDS = tuple(range(NUM_FOLDS))


@dataclass(frozen=True)
class RunResult:
    """One finished run: the metrics of one (row, fold, shot)."""

    row: str
    table: str
    fold: int
    shot: int
    metrics: dict[str, float]
    path: Path
    # class id -> (name, IoU mean over seeds); empty for records written before class names existed
    class_iou: dict[int, tuple[str, float]] = field(default_factory=dict)
    checkpoint: str | None = None  # the evaluated checkpoint: re-evaluations of one are grouped
    train_seed: int | None = None  # the training run's seed: several seeds of a cell are averaged
    dataset: str = ""
    n_episodes: int = 0
    mtime: float = 0.0
    trainable: int | None = None  # trainable backbone parameters, when the record holds them
    # which episodes chose the checkpoint (records from before the key: the paper's protocol)
    selection: str = DEFAULT_SELECTION


def default_row_label(meta: dict[str, Any]) -> str:
    """A readable row name when the experiment file set none, e.g. 'baseline resnet50 svf'."""
    parts = [str(meta.get("method", "?")), str(meta.get("backbone", "?")), str(meta.get("finetune", "?"))]
    return " ".join(parts)


def load_runs(sweep_dir: Path) -> list[RunResult]:
    """Read every ``metrics.json`` below ``sweep_dir``; a malformed file is an error naming it."""
    if not sweep_dir.is_dir():
        raise FileNotFoundError(f"sweep directory {sweep_dir} does not exist")
    runs = []
    for path in sorted(sweep_dir.rglob("metrics.json")):
        try:
            data = json.loads(path.read_text())
            meta = data.get("run", {})
            runs.append(
                RunResult(
                    row=str(meta.get("row") or default_row_label(meta)),
                    table=str(meta.get("table") or ""),
                    fold=int(data["fold"]),
                    shot=int(data["shot"]),
                    metrics={"miou": float(data["miou"]), "fbiou": float(data["fbiou"])},
                    path=path,
                    class_iou=_class_iou(data.get("class_iou")),
                    checkpoint=data.get("checkpoint"),
                    train_seed=None if meta.get("seed") is None else int(meta["seed"]),
                    dataset=str(meta.get("dataset") or ""),
                    n_episodes=int(data.get("n_episodes") or 0),
                    mtime=path.stat().st_mtime,
                    trainable=_trainable(data.get("trainable")),
                    selection=str(data.get("selection") or DEFAULT_SELECTION),
                )
            )
        except (KeyError, ValueError, TypeError, json.JSONDecodeError) as err:
            raise ValueError(f"{path}: not a svfseg metrics.json ({err})") from err
    if not runs:
        raise FileNotFoundError(f"no metrics.json found below {sweep_dir}: did the runs finish?")
    return runs


def latest_evaluations(runs: list[RunResult]) -> tuple[list[RunResult], list[str]]:
    """One record per evaluated checkpoint and cell: the latest (by file time) wins; notes say what was dropped."""
    keep: dict[tuple[Any, ...], RunResult] = {}
    notes = []
    for run in runs:
        if run.checkpoint is None:
            keep[(run.row, run.shot, run.fold, "path", str(run.path))] = run
            continue
        key = (run.row, run.shot, run.fold, "ckpt", run.checkpoint)
        old = keep.get(key)
        if old is not None:
            newer, older = (run, old) if run.mtime >= old.mtime else (old, run)
            keep[key] = newer
            notes.append(f"{older.path}: an older evaluation of {run.checkpoint}; using {newer.path}")
        else:
            keep[key] = run
    return list(keep.values()), notes


def describe_runs(runs: list[RunResult]) -> str:
    """The header line: dataset(s), episodes per evaluation, number of runs (synthetic data marked)."""
    datasets = sorted({r.dataset for r in runs if r.dataset}) or ["unknown"]
    marked = [f"{d} (generated data: not the paper's benchmark)" if d == "synthetic" else d for d in datasets]
    episodes = sorted({r.n_episodes for r in runs if r.n_episodes})
    count = ", ".join(map(str, episodes)) if episodes else "unknown"
    return f"dataset: {', '.join(marked)}; evaluation episodes per run: {count}; runs: {len(runs)}"


def _trainable(value: Any) -> int | None:
    """``trainable.backbone`` of a record (absent in records written before train.py stored it)."""
    if not isinstance(value, dict) or value.get("backbone") is None:
        return None
    return int(value["backbone"])


def _class_iou(value: Any) -> dict[int, tuple[str, float]]:
    if not isinstance(value, dict):
        return {}
    return {int(cid): (str(v["name"]), float(v["iou"])) for cid, v in value.items()}


def per_class_tables(runs: list[RunResult], *, layout: str | None = None) -> list[tuple[str, str]]:
    """(title, Markdown) per (shot, fold): one row per setting, one column per evaluation class (IoU %)."""
    if layout:
        runs = [r for r in runs if r.table == layout]
    missing = [str(r.path) for r in runs if not r.class_iou]
    if missing:
        raise ValueError(
            f"{missing[0]} (and {len(missing) - 1} more) has no per-class record with class names; "
            "re-evaluate it with eval.py to write one"
        )
    groups: dict[tuple[int, int], list[RunResult]] = {}
    for run in runs:
        groups.setdefault((run.shot, run.fold), []).append(run)
    out = []
    for (shot, fold), group in sorted(groups.items()):
        classes = sorted({cid: name for r in group for cid, (name, _) in r.class_iou.items()}.items())
        head = ["setting", *[f"{name} ({cid})" for cid, name in classes], "mean"]
        lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
        for run in group:
            cells = [run.class_iou.get(cid) for cid, _ in classes]
            values = ["" if c is None else f"{100 * c[1]:.2f}" for c in cells]
            lines.append("| " + " | ".join([run.row, *values, f"{100 * run.metrics['miou']:.2f}"]) + " |")
        out.append((f"{shot}-shot, fold {fold}: IoU per class (%)", "\n".join(lines)))
    return out


@dataclass
class Table:
    """Rows x (shot, fold) cells in percent, with per-row means and deltas from the baseline row."""

    shots: list[int]
    rows: list[str]
    cells: dict[tuple[str, int, int], list[float]]  # one value per training seed (or run)
    baseline: str
    header_line: str = ""
    runs: list[RunResult] = field(default_factory=list)  # the runs behind the cells

    def cell(self, row: str, shot: int, fold: int) -> float | None:
        values = self.cells.get((row, shot, fold))
        return None if not values else statistics.fmean(values)

    def mean(self, row: str, shot: int) -> float:
        values = [self.cell(row, shot, f) for f in FOLDS]
        if any(v is None for v in values):
            return math.nan
        return sum(values) / len(values)  # type: ignore[arg-type]

    def seed_std(self, row: str, shot: int) -> float | None:
        """Std over training seeds of the fold mean, when every fold has the same k > 1 seeds."""
        per_fold = [self.cells.get((row, shot, f)) or [] for f in FOLDS]
        k = len(per_fold[0])
        if k < 2 or any(len(v) != k for v in per_fold):
            return None
        return statistics.pstdev(statistics.fmean(v[i] for v in per_fold) for i in range(k))

    def header(self) -> list[str]:
        cols = ["setting"]
        for shot in self.shots:
            cols += [f"{shot}-shot fold{f}" for f in FOLDS] + [f"{shot}-shot mean", f"{shot}-shot delta"]
        return cols

    def records(self) -> list[list[str]]:
        out = []
        for row in self.rows:
            rec = [row]
            for shot in self.shots:
                for f in FOLDS:
                    values = self.cells.get((row, shot, f)) or []
                    if not values:
                        rec.append("")
                    elif len(values) == 1:
                        rec.append(f"{values[0]:.2f}")
                    else:
                        rec.append(f"{statistics.fmean(values):.2f} ± {statistics.pstdev(values):.2f}")
                m, b = self.mean(row, shot), self.mean(self.baseline, shot)
                std = self.seed_std(row, shot)
                mean_text = "" if math.isnan(m) else f"{m:.2f}" + (f" ± {std:.2f}" if std is not None else "")
                rec.append(mean_text)
                delta = m - b
                rec.append("" if math.isnan(delta) or row == self.baseline else f"{delta:+.2f}")
            out.append(rec)
        return out

    def to_markdown(self) -> str:
        head = self.header()
        lines = [self.header_line, ""] if self.header_line else []
        lines += ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
        lines += ["| " + " | ".join(r) + " |" for r in self.records()]
        return "\n".join(lines)

    def write_csv(self, path: Path) -> None:
        def write(tmp: Path) -> None:
            with tmp.open("w", newline="") as fh:
                writer = csv.writer(fh)
                writer.writerow(self.header())
                writer.writerows(self.records())

        atomic_write(path, write)


def usable_runs(runs: list[RunResult], metric: str) -> list[RunResult]:
    """Runs that can fill a cell; each excluded one is reported on stderr, naming its file and why.

    A NaN (or infinite) ``metric`` has no place in a mean, and a fold outside the table's columns
    (``FOLDS``) has no cell; both are left out of the cells and of the header's run count.
    """
    keep = []
    for run in runs:
        value = run.metrics.get(metric)
        if value is None or not math.isfinite(value):
            print(
                f"excluded: {run.path}: {metric}={value} is not a number (a diverged or empty evaluation); "
                "re-evaluate the checkpoint with eval.py, or move the file out of the sweep folder",
                file=sys.stderr,
            )
        elif run.fold not in FOLDS:
            print(
                f"excluded: {run.path}: fold={run.fold} is outside the table's folds {list(FOLDS)}",
                file=sys.stderr,
            )
        else:
            keep.append(run)
    return keep


def build_table(
    runs: list[RunResult], *, metric: str = "miou", layout: str | None = None, baseline: str | None = None
) -> Table:
    """Arrange runs into a table; duplicate (row, fold, shot) cells are an error naming both files."""
    if layout:
        runs = [r for r in runs if r.table == layout]
        if not runs:
            raise ValueError(f"no run of layout {layout!r}: set `table: {layout}` in the experiment files")
    runs = usable_runs(runs, metric)
    if not runs:
        raise ValueError("no run left to tabulate: every metrics.json was excluded (see the lines above)")
    runs, notes = latest_evaluations(runs)
    for note in notes:
        print(f"note: {note}", file=sys.stderr)
    cells: dict[tuple[str, int, int], list[float]] = {}
    origin: dict[tuple[str, int, int], list[RunResult]] = {}
    rows: list[str] = []
    shots: set[int] = set()
    for run in sorted(runs, key=lambda r: (r.train_seed is None, r.train_seed or 0, str(r.path))):
        key = (run.row, run.shot, run.fold)
        seen = origin.setdefault(key, [])
        clash = next((o for o in seen if o.train_seed == run.train_seed), None)
        if clash is not None:
            raise ValueError(
                f"two runs for row {run.row!r} fold {run.fold} {run.shot}-shot with the same training seed "
                f"{run.train_seed}: {clash.path} and {run.path} (different checkpoints); move one out of the "
                "sweep folder or give them different rows"
            )
        other = next((o for o in seen if o.selection != run.selection), None)
        if other is not None:
            raise ValueError(
                f"row {run.row!r} fold {run.fold} {run.shot}-shot mixes checkpoint selections: {other.path} "
                f"(dataset.selection={other.selection}) and {run.path} (dataset.selection={run.selection}); "
                "a mean over both protocols means neither: move one out of the sweep folder or give it its own row"
            )
        seen.append(run)
        cells.setdefault(key, []).append(100.0 * run.metrics[metric])
        shots.add(run.shot)
        if run.row not in rows:
            rows.append(run.row)
    chosen_by = {run.row: run.selection for run in runs}
    if len(set(chosen_by.values())) > 1:
        print(
            "note: the rows chose their checkpoints differently (dataset.selection): "
            + ", ".join(f"{row}: {chosen_by[row]}" for row in rows),
            file=sys.stderr,
        )
    base = baseline or rows[0]
    if base not in rows:
        raise ValueError(f"baseline row {base!r} not among {rows}")
    return Table(
        shots=sorted(shots),
        rows=rows,
        cells=cells,
        baseline=base,
        header_line=describe_runs(runs),
        runs=[r for group in origin.values() for r in group],
    )


def sweep_gaps(sweep_dir: Path, table: Table, *, layout: str | None = None) -> list[str]:
    """What the table is still missing, one line each: run folders below ``sweep_dir`` that hold no result
    yet (still training, or interrupted), and the (row, shot) whose mean is blank because a fold has no run.

    A run folder is one with an ownership record (``svfseg-run.json``); with ``layout``, only the folders
    whose config (``.hydra/config.yaml``) names that table count.
    """
    lines = []
    for record in sorted(sweep_dir.rglob(RECORD_FILE)):
        folder = record.parent
        if any((folder / name).exists() for name in RESULT_FILES.values()):
            continue
        if layout and _config_table(folder) != layout:
            continue
        last = folder / "checkpoints" / "last.ckpt"
        saved = (
            f"last.ckpt saved {_dt.datetime.fromtimestamp(last.stat().st_mtime):%Y-%m-%d %H:%M}"
            if last.is_file()
            else "no checkpoint yet"
        )
        lines.append(
            f"unfinished: {folder} has no metrics.json ({saved}): still training, or interrupted; the sweep's "
            "command with ckpt_path=auto finishes it"
        )
    for row in table.rows:
        for shot in table.shots:
            missing = [f for f in FOLDS if not table.cells.get((row, shot, f))]
            if missing:
                lines.append(
                    f"incomplete: row {row!r} {shot}-shot has no run for fold(s) {missing}, so its mean and "
                    "delta are blank"
                )
    return lines


def _config_table(folder: Path) -> str | None:
    """The ``table`` label of a run folder's config, or None when the folder has no readable config."""
    try:
        value = OmegaConf.load(folder / ".hydra" / "config.yaml").get("table")
    except (OSError, ValueError, yaml.YAMLError):
        return None
    return None if value is None else str(value)


def t_interval(values: list[float], level: float = 0.95) -> tuple[float, float] | None:
    """The two-sided t-interval of the mean (n - 1 degrees of freedom); None below two values."""
    n = len(values)
    if n < 2:
        return None
    mean = statistics.fmean(values)
    half = float(stats.t.ppf(0.5 + level / 2, n - 1)) * statistics.stdev(values) / math.sqrt(n)
    return mean - half, mean + half


def _count_text(counts: set[int]) -> str:
    if not counts:
        return "not recorded"
    if len(counts) == 1:
        return f"{next(iter(counts)):,}"
    return f"{min(counts):,} to {max(counts):,} (differs between runs)"


def paired_report(table: Table, reference: str, *, metric: str = "miou") -> str:
    """Mean and sample std over training seeds per (row, shot, fold), and each row minus ``reference``.

    A pair is two runs of the same fold, shot and training seed, one of ``reference`` and one of the row;
    the difference (points of ``metric``, in percent) is taken per pair, and its mean comes with the 95 %
    t-interval over all pairs of that row and shot (folds pooled). Runs without a partner, or without a
    recorded training seed, are left out and counted. ``trainable`` is the backbone's trainable parameter
    count as the runs recorded it.
    """
    if reference not in table.rows:
        raise ValueError(f"--paired row {reference!r} not among {table.rows}")
    value = {
        (r.row, r.shot, r.fold, r.train_seed): 100.0 * r.metrics[metric]
        for r in table.runs
        if r.train_seed is not None
    }
    unseeded = {
        row: sum(1 for r in table.runs if r.row == row and r.train_seed is None) for row in table.rows
    }
    counts = {
        row: {r.trainable for r in table.runs if r.row == row and r.trainable is not None}
        for row in table.rows
    }
    lines = [
        f"Per fold: {metric} % over training seeds (mean ± sample std, n - 1)",
        "",
        "| setting | shot | fold | seeds | mean ± std | trainable (backbone) |",
        "|---|---|---|---|---|---|",
    ]
    for row in table.rows:
        for shot in table.shots:
            for fold in FOLDS:
                values = table.cells.get((row, shot, fold))
                if not values:
                    continue
                mean = statistics.fmean(values)
                spread = f" ± {statistics.stdev(values):.2f}" if len(values) > 1 else ""
                lines.append(
                    f"| {row} | {shot} | {fold} | {len(values)} | {mean:.2f}{spread} | {_count_text(counts[row])} |"
                )
    lines += [
        "",
        f"Paired differences from {reference!r} ({metric} points; pairs: same fold, shot and training seed; "
        "95 % t-interval over the pairs)",
        "",
        "| setting | shot | pairs | folds | mean difference | 95 % interval | unpaired runs | trainable (backbone) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for row in table.rows:
        for shot in table.shots:
            mine = {(f, s): v for (r, sh, f, s), v in value.items() if r == row and sh == shot}
            if not mine:
                continue
            if row == reference:
                lines.append(f"| {row} (reference) | {shot} | | | | | | {_count_text(counts[row])} |")
                continue
            theirs = {(f, s): v for (r, sh, f, s), v in value.items() if r == reference and sh == shot}
            keys = sorted(mine.keys() & theirs.keys())
            diffs = [mine[k] - theirs[k] for k in keys]
            unpaired = len(mine) - len(keys) + unseeded[row]
            folds = ",".join(str(f) for f in sorted({f for f, _ in keys})) or "-"
            mean = f"{statistics.fmean(diffs):+.2f}" if diffs else ""
            ci = t_interval(diffs)
            ci_text = "" if not diffs else "n/a (one pair)" if ci is None else f"[{ci[0]:+.2f}, {ci[1]:+.2f}]"
            lines.append(
                f"| {row} | {shot} | {len(keys)} | {folds} | {mean} | {ci_text} | {unpaired} | "
                f"{_count_text(counts[row])} |"
            )
    return "\n".join(lines)


def run_folders(table: Table) -> dict[tuple[str, int, int], list[Path]]:
    """Each cell's run folders, in training-seed order (the order of the cell's values)."""
    out: dict[tuple[str, int, int], list[Path]] = {}
    for run in sorted(table.runs, key=lambda r: (r.train_seed is None, r.train_seed or 0, str(r.path))):
        out.setdefault((run.row, run.shot, run.fold), []).append(run.path.parent)
    return out


def image_interval_report(table: Table, *, resamples: int, level: float = 0.95) -> str:
    items, notes = image_intervals(
        run_folders(table), table.rows, table.baseline, resamples=resamples, level=level
    )
    return intervals_markdown(items, notes, table.baseline, resamples=resamples, level=level)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m svfseg.tables", description=__doc__.splitlines()[0])
    parser.add_argument("sweep_dir", type=Path)
    parser.add_argument("--layout", default=None, help="keep only runs whose experiment set `table: NAME`")
    parser.add_argument("--metric", choices=("miou", "fbiou"), default="miou")
    parser.add_argument("--baseline", default=None, help="row label the delta column refers to")
    parser.add_argument("--out", type=Path, default=None, help="write OUT.md and OUT.csv")
    parser.add_argument(
        "--per-class", action="store_true", help="add a per-class IoU table per fold and shot"
    )
    parser.add_argument(
        "--paired",
        default=None,
        metavar="ROW",
        help="add mean ± std per (row, fold) and every row's paired difference from ROW (same fold, shot and "
        "training seed) with a 95 %% t-interval, and the trainable backbone parameters",
    )
    parser.add_argument(
        "--image-intervals",
        action="store_true",
        help="add each row's mean with a 95 %% bootstrap interval over the test images and its paired "
        "difference from the baseline row (reads every run's episodes.json)",
    )
    parser.add_argument(
        "--resamples", type=int, default=2000, help="bootstrap resamples of --image-intervals"
    )
    args = parser.parse_args(argv)
    if args.image_intervals and args.metric != "miou":
        parser.error("--image-intervals resamples the mIoU: leave out --metric fbiou")
    if args.resamples < 100:
        parser.error("--resamples must be >= 100")
    try:
        runs = load_runs(args.sweep_dir)
        table = build_table(runs, metric=args.metric, layout=args.layout, baseline=args.baseline)
        paired = None
        if args.paired is not None:
            paired = paired_report(table, args.paired, metric=args.metric)
            if args.baseline is None:
                table.baseline = args.paired  # the delta column refers to the paired row too
        md = table.to_markdown()
        if args.per_class:
            tables = per_class_tables(runs, layout=args.layout)
            md += "".join(f"\n\n{title}\n\n{body}" for title, body in tables)
        if paired is not None:
            md += "\n\n" + paired
        if args.image_intervals:
            md += "\n\n" + image_interval_report(table, resamples=args.resamples)
    except (FileNotFoundError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(md)
    for line in sweep_gaps(args.sweep_dir, table, layout=args.layout):
        print(line, file=sys.stderr)
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(args.out.with_suffix(".md"), md + "\n")
        table.write_csv(args.out.with_suffix(".csv"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
