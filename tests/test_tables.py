"""Sweep directories into paper tables."""

import json
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
