"""Sweep directories into paper tables."""

import json
import os
from pathlib import Path

import pytest

from svfseg.tables import build_table, load_runs, main


def _write(root: Path, name: str, row: str, fold: int, shot: int, miou: float, table: str = "table1") -> None:
    d = root / name
    d.mkdir(parents=True)
    record = {
        "miou": miou,
        "fbiou": miou + 0.1,
        "fold": fold,
        "shot": shot,
        "run": {"row": row, "table": table},
    }
    (d / "metrics.json").write_text(json.dumps(record))


def test_rows_folds_mean_and_delta(tmp_path: Path) -> None:
    base = [0.60, 0.70, 0.64, 0.56]
    svf = [0.62, 0.71, 0.66, 0.58]
    for f in range(4):
        _write(tmp_path, f"b{f}", "baseline", f, 1, base[f])
        _write(tmp_path, f"s{f}", "baseline + SVF", f, 1, svf[f])
    table = build_table(load_runs(tmp_path))
    assert table.rows == ["baseline", "baseline + SVF"]
    assert table.mean("baseline", 1) == pytest.approx(62.5)
    assert table.mean("baseline + SVF", 1) == pytest.approx(64.25)
    recs = table.records()
    assert recs[1][-1] == "+1.75"
    assert recs[1][1:5] == ["62.00", "71.00", "66.00", "58.00"]
    fb = build_table(load_runs(tmp_path), metric="fbiou")
    assert fb.mean("baseline", 1) == pytest.approx(72.5)


def test_cli_writes_markdown_and_csv(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    for f in range(4):
        _write(tmp_path / "sweep", f"r{f}", "freeze", f, 5, 0.5)
    assert main([str(tmp_path / "sweep"), "--out", str(tmp_path / "out" / "t1")]) == 0
    assert "| freeze | " in capsys.readouterr().out
    assert (tmp_path / "out" / "t1.csv").read_text().splitlines()[0].startswith("setting,5-shot fold0")
    assert (tmp_path / "out" / "t1.md").is_file()


def test_duplicates_and_empty_dirs_are_errors(tmp_path: Path) -> None:
    _write(tmp_path, "a", "freeze", 0, 1, 0.5)
    _write(tmp_path, "b", "freeze", 0, 1, 0.6)
    with pytest.raises(ValueError, match="two runs for row 'freeze' fold 0"):
        build_table(load_runs(tmp_path))
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(FileNotFoundError, match=r"no metrics\.json"):
        load_runs(empty)


def test_layout_filter(tmp_path: Path) -> None:
    _write(tmp_path, "a", "freeze", 0, 1, 0.5, table="table5")
    with pytest.raises(ValueError, match="no run of layout 'table7'"):
        build_table(load_runs(tmp_path), layout="table7")


def _record(
    root: Path, name: str, *, fold: int, miou: float, seed: int, ckpt: str, dataset: str = "pascal"
) -> Path:
    d = root / name
    d.mkdir(parents=True)
    record = {
        "miou": miou,
        "fbiou": miou,
        "fold": fold,
        "shot": 1,
        "n_episodes": 1000,
        "checkpoint": ckpt,
        "run": {"row": "svf", "table": "t", "seed": seed, "dataset": dataset},
    }
    path = d / "metrics.json"
    path.write_text(json.dumps(record))
    return path


def test_evaluations_of_one_checkpoint_are_grouped_latest_wins(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    old = _record(tmp_path, "eval_a", fold=0, miou=0.50, seed=0, ckpt="/runs/f0/best.ckpt")
    new = _record(tmp_path, "eval_b", fold=0, miou=0.55, seed=0, ckpt="/runs/f0/best.ckpt")
    os.utime(old, (1_000, 1_000))
    os.utime(new, (2_000, 2_000))
    table = build_table(load_runs(tmp_path))
    assert table.cells[("svf", 1, 0)] == [pytest.approx(55.0)]
    assert f"{old}: an older evaluation of /runs/f0/best.ckpt; using {new}" in capsys.readouterr().err


def test_training_seeds_give_mean_and_std_and_the_header_names_the_data(tmp_path: Path) -> None:
    values = {0: [0.60, 0.70, 0.64, 0.56], 1: [0.62, 0.72, 0.62, 0.60]}
    for seed, per_fold in values.items():
        for f, v in enumerate(per_fold):
            _record(
                tmp_path,
                f"s{seed}f{f}",
                fold=f,
                miou=v,
                seed=seed,
                ckpt=f"/runs/s{seed}f{f}.ckpt",
                dataset="synthetic",
            )
    table = build_table(load_runs(tmp_path))
    rec = table.records()[0]
    assert rec[1] == "61.00 ± 1.00" and rec[2] == "71.00 ± 1.00"
    fold_means = [sum(v) / 4 * 100 for v in values.values()]  # 62.5, 64.0
    assert rec[5] == f"{sum(fold_means) / 2:.2f} ± {abs(fold_means[0] - fold_means[1]) / 2:.2f}"
    md = table.to_markdown()
    assert md.splitlines()[0] == (
        "dataset: synthetic (generated data: not the paper's benchmark); evaluation episodes per run: 1000; runs: 8"
    )
