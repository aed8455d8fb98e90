"""``svfseg-tables --image-intervals``: the mean column's bootstrap over each fold's test images."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from svfseg.table_intervals import image_intervals
from svfseg.tables import build_table, load_runs, main, run_folders

N_IMAGES = 20  # per fold; 30 episodes ask 10 of them twice


def _episodes(fold: int, gain: int, repeat: int = 1) -> dict:
    """One seed's episodes as train.py writes them: fold-specific images and two classes."""
    rng = np.random.default_rng(100 + fold)  # the same draw for every row of a fold
    union = rng.integers(50, 200, 30)
    inter = np.minimum(union, (union * rng.uniform(0.2, 0.8, 30)).astype(int) + gain)
    query = [f"JPEGImages/f{fold}_{k % N_IMAGES:03d}.jpg" for k in range(30)]
    return {
        "table": f"digest-{fold}",
        "index": list(range(30 * repeat)),
        "query": query * repeat,
        "class_idx": [k % 2 for k in range(30)] * repeat,
        "fg_inter": inter.tolist() * repeat,
        "fg_union": union.tolist() * repeat,
        "bg_inter": [0] * 30 * repeat,
        "bg_union": [0] * 30 * repeat,
    }


def _miou(seed: dict) -> float:
    """The class-wise mIoU of one seed's episodes, by plain loops."""
    inter, union = [0, 0], [0, 0]
    for c, i, u in zip(seed["class_idx"], seed["fg_inter"], seed["fg_union"], strict=True):
        inter[c] += i
        union[c] += u
    return sum(i / u for i, u in zip(inter, union, strict=True)) / 2


def _run(root: Path, row: str, fold: int, shot: int, seed: int, gain: int = 0, repeat: int = 1) -> Path:
    """A run folder with the metrics.json and episodes.json of one training seed."""
    folder = root / f"{row}-f{fold}-s{shot}-seed{seed}".replace(" ", "_")
    folder.mkdir(parents=True)
    episodes = _episodes(fold, gain, repeat)
    record = {"format": 1, "classes": [10 + 2 * fold, 11 + 2 * fold], "seeds": {"321": episodes}}
    (folder / "episodes.json").write_text(json.dumps(record))
    miou = _miou(episodes)
    metrics = {"miou": miou, "fbiou": 0.5, "fold": fold, "shot": shot, "run": {"row": row, "seed": seed}}
    (folder / "metrics.json").write_text(json.dumps(metrics))
    return folder


def _sweep(root: Path, rows: dict[str, tuple[int, list[int]]], shot: int = 1) -> None:
    """``rows``: label -> (gain in pixels, training seeds)."""
    for row, (gain, seeds) in rows.items():
        for fold in range(4):
            for seed in seeds:
                _run(root, row, fold, shot, seed, gain + 2 * seed)  # seeds differ a little


def _plain_loop(root: Path, rows: list[str], resamples: int) -> dict[str, np.ndarray]:
    """The mean column's resamples, by loops over files: per fold one multinomial draw of its images."""
    out = {row: np.zeros(resamples) for row in rows}
    for fold in range(4):
        names = sorted({f"JPEGImages/f{fold}_{k:03d}.jpg" for k in range(N_IMAGES)})
        drawn = np.random.default_rng([0, fold]).multinomial(
            N_IMAGES, np.full(N_IMAGES, 1 / N_IMAGES), size=resamples
        )
        for row in rows:
            folders = sorted(root.glob(f"{row.replace(' ', '_')}-f{fold}-s1-seed*"))
            for b in range(resamples):
                values = []
                for folder in folders:
                    seed = json.loads((folder / "episodes.json").read_text())["seeds"]["321"]
                    inter, union = [0.0, 0.0], [0.0, 0.0]
                    for c, q, i, u in zip(
                        seed["class_idx"], seed["query"], seed["fg_inter"], seed["fg_union"], strict=True
                    ):
                        w = drawn[b, names.index(q)]
                        inter[c] += w * i
                        union[c] += w * u
                    values.append(np.mean([i / u if u else 0.0 for i, u in zip(inter, union, strict=True)]))
                out[row][b] += 100 * np.mean(values) / 4
    return out


def test_intervals_equal_a_plain_loop_over_the_files(tmp_path: Path) -> None:
    _sweep(tmp_path, {"baseline": (0, [0]), "baseline + SVF": (6, [0, 1])})
    table = build_table(load_runs(tmp_path))
    items, notes = image_intervals(run_folders(table), table.rows, "baseline", resamples=150)
    assert notes == []
    loop = _plain_loop(tmp_path, ["baseline", "baseline + SVF"], 150)
    base, svf = items
    assert (base.row, svf.row) == ("baseline", "baseline + SVF")
    assert base.mean == pytest.approx(table.mean("baseline", 1), abs=1e-9)  # the table's own mean column
    assert svf.mean == pytest.approx(table.mean("baseline + SVF", 1), abs=1e-9)
    assert base.interval == pytest.approx(tuple(np.quantile(loop["baseline"], [0.025, 0.975])), abs=1e-9)
    assert svf.interval == pytest.approx(tuple(np.quantile(loop["baseline + SVF"], [0.025, 0.975])), abs=1e-9)
    diff = loop["baseline + SVF"] - loop["baseline"]
    assert svf.delta_interval == pytest.approx(tuple(np.quantile(diff, [0.025, 0.975])), abs=1e-9)
    assert svf.share_not_above == pytest.approx(np.mean(diff <= 0))
    assert base.delta is None and svf.delta == pytest.approx(svf.mean - base.mean)


def test_paired_rows_cancel_what_the_images_share(tmp_path: Path) -> None:
    """A row equal to the baseline differs by exactly 0 on every resample; a row better on every episode
    is above it on every resample, with an interval much narrower than its own."""
    _sweep(tmp_path, {"freeze": (0, [0]), "copy": (0, [0]), "better": (3, [0])})
    table = build_table(load_runs(tmp_path))
    items = {it.row: it for it in image_intervals(run_folders(table), table.rows, "freeze", resamples=400)[0]}
    assert items["copy"].delta == 0.0 and items["copy"].delta_interval == (0.0, 0.0)
    assert items["copy"].share_not_above == 1.0
    lo, hi = items["better"].delta_interval
    assert 0 < lo < items["better"].delta < hi and items["better"].share_not_above == 0.0
    own = items["better"].interval
    assert hi - lo < 0.5 * (own[1] - own[0])


def test_an_image_asked_twice_as_often_leaves_the_interval_unchanged(tmp_path: Path) -> None:
    """Images are resampled with all their episodes: repeating a table adds no evidence."""
    for fold in range(4):
        _run(tmp_path / "once", "svf", fold, 1, 0)
        _run(tmp_path / "twice", "svf", fold, 1, 0, repeat=2)
    once, twice = (build_table(load_runs(tmp_path / d)) for d in ("once", "twice"))
    (a,), _ = image_intervals(run_folders(once), once.rows, "svf", resamples=300)
    (b,), _ = image_intervals(run_folders(twice), twice.rows, "svf", resamples=300)
    assert a.mean == pytest.approx(b.mean, abs=1e-9) and a.interval == pytest.approx(b.interval, abs=1e-9)


def test_runs_on_other_episodes_are_refused_naming_both_files(tmp_path: Path) -> None:
    _sweep(tmp_path, {"freeze": (0, [0]), "svf": (0, [0])})
    other = next(tmp_path.glob("svf-f2-*")) / "episodes.json"
    record = json.loads(other.read_text())
    record["seeds"]["321"]["table"] = "another n_episodes"
    other.write_text(json.dumps(record))
    table = build_table(load_runs(tmp_path))
    with pytest.raises(
        ValueError, match=r"1-shot fold 2: .*freeze-f2-.* and .*svf-f2-.* were tested on different"
    ):
        image_intervals(run_folders(table), table.rows, "freeze", resamples=100)


def test_cli_adds_the_section_and_names_what_it_cannot_do(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    _sweep(tmp_path, {"freeze": (0, [0]), "svf": (4, [0])})
    _run(tmp_path, "part", 0, 1, 0)  # one fold only: no mean, no interval
    assert main([str(tmp_path), "--image-intervals", "--resamples", "200"]) == 0
    out = capsys.readouterr().out
    assert "bootstrap over each fold's query images (200 resamples;" in out
    table = build_table(load_runs(tmp_path))
    svf_line = next(line for line in out.splitlines() if line.startswith("| svf | 1 | "))
    assert svf_line.split(" | ")[2] == f"{table.mean('svf', 1):.2f}"
    assert (
        "delta from 'freeze'" in out
        and "note: 'part' 1-shot: no interval, folds [1, 2, 3] have no run" in out
    )

    with pytest.raises(SystemExit) as exit_info:
        main([str(tmp_path), "--image-intervals", "--metric", "fbiou"])
    assert exit_info.value.code == 2
    assert "--image-intervals resamples the mIoU" in capsys.readouterr().err

    (next(tmp_path.glob("svf-f1-*")) / "episodes.json").unlink()
    assert main([str(tmp_path), "--image-intervals"]) == 2
    err = capsys.readouterr().err
    assert "svf-f1-s1-seed0/episodes.json does not exist" in err and "eval.py" in err
