"""Gather the ``metrics.json`` of a sweep into the paper's table form.

    python -m svfseg.tables SWEEP_DIR [--layout table1] [--metric miou] [--out OUT_PREFIX] [--per-class]

Each run directory holds a ``metrics.json`` (written by train.py and eval.py) with ``miou``, ``fbiou``,
``fold``, ``shot`` and a ``row`` label (set by the experiment file, e.g. "baseline + SVF"; derived from
method / backbone / finetune otherwise). Rows are settings, columns are folds 0-3 and their mean, per shot;
``delta`` is the difference of the mean from the layout's baseline row (the first row unless named).
Output: Markdown on stdout, plus ``OUT_PREFIX.md`` / ``OUT_PREFIX.csv`` when ``--out`` is given.
``--per-class`` adds one table per (shot, fold): settings x that fold's evaluation classes, by name.
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from svfseg.data.splits import NUM_FOLDS

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
                )
            )
        except (KeyError, ValueError, TypeError, json.JSONDecodeError) as err:
            raise ValueError(f"{path}: not a svfseg metrics.json ({err})") from err
    if not runs:
        raise FileNotFoundError(f"no metrics.json found below {sweep_dir}: did the runs finish?")
    return runs


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
    cells: dict[tuple[str, int, int], float]
    baseline: str

    def mean(self, row: str, shot: int) -> float:
        values = [self.cells.get((row, shot, f)) for f in FOLDS]
        if any(v is None for v in values):
            return math.nan
        return sum(values) / len(values)  # type: ignore[arg-type]

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
                    v = self.cells.get((row, shot, f))
                    rec.append("" if v is None else f"{v:.2f}")
                m, b = self.mean(row, shot), self.mean(self.baseline, shot)
                rec.append("" if math.isnan(m) else f"{m:.2f}")
                delta = m - b
                rec.append("" if math.isnan(delta) or row == self.baseline else f"{delta:+.2f}")
            out.append(rec)
        return out

    def to_markdown(self) -> str:
        head = self.header()
        lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
        lines += ["| " + " | ".join(r) + " |" for r in self.records()]
        return "\n".join(lines)

    def write_csv(self, path: Path) -> None:
        with path.open("w", newline="") as fh:
            writer = csv.writer(fh)
            writer.writerow(self.header())
            writer.writerows(self.records())


def build_table(
    runs: list[RunResult], *, metric: str = "miou", layout: str | None = None, baseline: str | None = None
) -> Table:
    """Arrange runs into a table; duplicate (row, fold, shot) cells are an error naming both files."""
    if layout:
        runs = [r for r in runs if r.table == layout]
        if not runs:
            raise ValueError(f"no run of layout {layout!r}: set `table: {layout}` in the experiment files")
    cells: dict[tuple[str, int, int], float] = {}
    origin: dict[tuple[str, int, int], Path] = {}
    rows: list[str] = []
    shots: set[int] = set()
    for run in runs:
        key = (run.row, run.shot, run.fold)
        if key in cells:
            raise ValueError(
                f"two runs for row {run.row!r} fold {run.fold} {run.shot}-shot: {origin[key]} and {run.path}"
            )
        cells[key] = 100.0 * run.metrics[metric]
        origin[key] = run.path
        shots.add(run.shot)
        if run.row not in rows:
            rows.append(run.row)
    base = baseline or rows[0]
    if base not in rows:
        raise ValueError(f"baseline row {base!r} not among {rows}")
    return Table(shots=sorted(shots), rows=rows, cells=cells, baseline=base)


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
    args = parser.parse_args(argv)
    try:
        runs = load_runs(args.sweep_dir)
        table = build_table(runs, metric=args.metric, layout=args.layout, baseline=args.baseline)
        md = table.to_markdown()
        if args.per_class:
            tables = per_class_tables(runs, layout=args.layout)
            md += "".join(f"\n\n{title}\n\n{body}" for title, body in tables)
    except (FileNotFoundError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(md)
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.with_suffix(".md").write_text(md + "\n")
        table.write_csv(args.out.with_suffix(".csv"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
