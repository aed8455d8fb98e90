"""svfseg-compare: the paired comparison of two runs' episodes.json, and what it refuses."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest

from svfseg.compare import main


def _write(
    folder: Path, *, fg_inter_shift: int = 0, table: str = "t321", classes=(6, 7), seeds=(321,)
) -> Path:
    """An episodes.json as train.py writes it: 60 episodes per seed over two classes."""
    rng = np.random.default_rng(0)
    record = {"format": 1, "classes": list(classes), "seeds": {}}
    for s in seeds:
        union = rng.integers(50, 200, 60)
        inter = (union * 0.5).astype(int) - fg_inter_shift
        record["seeds"][str(s)] = {
            "table": table if s == 321 else f"t{s}",
            "index": list(range(60)),
            "query": [f"JPEGImages/{k % 40:04d}.jpg" for k in range(60)],  # 40 images, 20 of them asked twice
            "class_idx": [k % 2 for k in range(60)],
            "fg_inter": inter.tolist(),
            "fg_union": union.tolist(),
            "bg_inter": [0] * 60,
            "bg_union": [0] * 60,
        }
    folder.mkdir(parents=True)
    (folder / "episodes.json").write_text(json.dumps(record))
    return folder


def test_a_run_better_on_every_episode_is_reported_with_its_paired_interval(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    a = _write(tmp_path / "a", seeds=(321, 5))
    b = _write(tmp_path / "b", fg_inter_shift=5, seeds=(321, 5))
    assert main([str(a), str(b / "episodes.json"), "--resamples", "400"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].startswith(f"A: {a}  mIoU ") and out[1].startswith(f"B: {b}  mIoU ")
    assert out[2].startswith("A - B: +")
    assert (
        "(400 resamples of the same 40 query images; 120 episodes, seeds [5, 321]); A <= B in 0.0 % of them"
        in out[2]
    )


@pytest.mark.parametrize(
    ("b_kwargs", "message"),
    [
        ({"table": "other"}, "seed 321: .* were tested on different episodes"),
        ({"classes": (6, 8)}, r"different classes \(\[6, 7\] vs \[6, 8\]\)"),
        ({"seeds": (5,)}, "share no evaluation seed"),
    ],
)
def test_runs_not_tested_on_the_same_episodes_are_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], b_kwargs: dict, message: str
) -> None:
    a = _write(tmp_path / "a")
    b = _write(tmp_path / "b", **b_kwargs)
    assert main([str(a), str(b)]) == 2
    assert re.search(message, capsys.readouterr().err)


def test_a_run_without_episodes_or_a_foreign_file_is_refused_naming_it(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    a = _write(tmp_path / "a")
    (tmp_path / "old").mkdir()
    assert main([str(a), str(tmp_path / "old")]) == 2
    assert f"{tmp_path / 'old' / 'episodes.json'} does not exist" in capsys.readouterr().err
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "episodes.json").write_text(json.dumps({"format": 9}))
    assert main([str(a), str(tmp_path / "bad")]) == 2
    assert "not a svfseg episodes.json (format 9, expected 1)" in capsys.readouterr().err
