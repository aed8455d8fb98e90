"""Gather the ``metrics.json`` of a sweep into the paper's table form.

    python -m svfseg.tables SWEEP_DIR [--layout table1] [--metric miou] [--out OUT_PREFIX]

Each run directory holds a ``metrics.json`` (written by train.py and eval.py) with ``miou``, ``fbiou``,
``fold``, ``shot`` and a ``row`` label (set by the experiment file, e.g. "baseline + SVF"; derived from
method / backbone / finetune otherwise). Rows are settings, columns are folds 0-3 and their mean, per shot;
``delta`` is the difference of the mean from the layout's baseline row (the first row unless named).
Output: Markdown on stdout, plus ``OUT_PREFIX.md`` / ``OUT_PREFIX.csv`` when ``--out`` is given.
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import sys
from dataclasses import dataclass
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
                )
            )
        except (KeyError, ValueError, TypeError, json.JSONDecodeError) as err:
            raise ValueError(f"{path}: not a svfseg metrics.json ({err})") from err
    if not runs:
        raise FileNotFoundError(f"no metrics.json found below {sweep_dir}: did the runs finish?")
    return runs


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
    args = parser.parse_args(argv)
    table = build_table(
        load_runs(args.sweep_dir), metric=args.metric, layout=args.layout, baseline=args.baseline
    )
    md = table.to_markdown()
    print(md)
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.with_suffix(".md").write_text(md + "\n")
        table.write_csv(args.out.with_suffix(".csv"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
