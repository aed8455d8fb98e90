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


def test_a_single_run_prints_its_value_without_a_spread(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    for f in range(4):
        _record(tmp_path / "one", f"f{f}", fold=f, miou=0.5 + f / 100, seed=0, ckpt=f"/runs/f{f}.ckpt")
    assert main([str(tmp_path / "one")]) == 0
    out = capsys.readouterr().out
    assert "±" not in out
    assert "| svf | 50.00 | 51.00 | 52.00 | 53.00 | 51.50 |" in out
    # fold 0 trained with two seeds, the others once: only that cell has a spread, the mean has none
    _record(tmp_path / "one", "f0s1", fold=0, miou=0.52, seed=1, ckpt="/runs/f0s1.ckpt")
    rec = build_table(load_runs(tmp_path / "one")).records()[0]
    assert rec[1:6] == ["51.00 ± 1.00", "51.00", "52.00", "53.00", "51.75"]


def _documented_table11_evaluations() -> list[list[list[str]]]:
    """The eval.py commands of docs/reproduce.md's Table 11 eval-only way: per command, one override list per job."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    from tests.test_docs_commands import ROOT, doc_commands

    commands = [
        c.words
        for c in doc_commands(ROOT / "docs" / "reproduce.md")
        if "eval.py" in c.words and "table=table11" in c.words
    ]
    assert len(commands) == 2, commands  # freeze and SVF checkpoints (the fold loop gives the same words)
    out = []
    for words in commands:
        assert "-m" in words
        overrides = [w for w in words[words.index("eval.py") + 1 :] if w != "-m"]
        parsed = OverridesParser.create().parse_overrides(overrides)
        sweep = [o for o in parsed if o.is_sweep_override()]
        assert [o.key_or_group for o in sweep] == ["n_episodes"]
        fixed = [o.input_line for o in parsed if not o.is_sweep_override()]
        out.append([[*fixed, f"n_episodes={v}"] for v in sweep[0].sweep_string_iterator()])
    return out


def test_table11_eval_only_sweep_gives_one_row_per_episode_count(tmp_path: Path) -> None:
    """docs/reproduce.md's re-evaluation of Table 2 checkpoints: distinct labels, one table row each."""
    from omegaconf import OmegaConf

    from svfseg.data.splits import novel_classes
    from svfseg.tasks.evaluate import run_config_from_checkpoint
    from svfseg.tasks.reporting import metrics_record
    from tests.hydra_helpers import compose_config

    freeze_jobs, svf_jobs = _documented_table11_evaluations()
    rows = [str(compose_config("eval", job).row) for job in [*freeze_jobs, *svf_jobs]]
    assert rows == [
        "baseline (1000 episodes)",
        "baseline (4000 episodes)",
        "baseline (5000 episodes)",
        "baseline + SVF (1000 episodes)",
        "baseline + SVF (4000 episodes)",
        "baseline + SVF (5000 episodes)",
    ]
    # eval.py on each fold's Table 2 checkpoint: the run config comes from the checkpoint, the labels and
    # the episode count from the command; metrics.json as evaluate() writes it
    for fold in range(4):
        for finetune, jobs in (("freeze", freeze_jobs), ("svf", svf_jobs)):
            train_cfg = compose_config(
                "train",
                [f"experiment=table2/resnet50_baseline_{finetune}", f"fold={fold}", "paths.output_dir=x"],
            )
            saved = OmegaConf.to_container(train_cfg, resolve=True)
            ckpt = f"/runs/table2/{finetune}-fold{fold}/checkpoints/best.ckpt"
            for n, job in enumerate(jobs):
                overrides = [f"ckpt_path={ckpt}" if o.startswith("ckpt_path=") else o for o in job]
                cfg = compose_config("eval", overrides)
                run = run_config_from_checkpoint({"svfseg": {"config": saved}}, cfg)
                miou = 0.40 + fold / 100 + n / 1000 + (finetune == "svf") / 50
                values = {
                    "miou": miou,
                    "fbiou": 0.6,
                    "class_iou": [miou] * len(novel_classes("coco", fold)),
                    "n_episodes": int(cfg.n_episodes),
                }
                record = metrics_record(
                    values, cfg=run, checkpoint=ckpt, n_episodes=int(run.dataset.n_episodes), seeds=[321]
                )
                out = tmp_path / "eval" / "multirun" / f"{finetune}-fold{fold}" / str(n)
                out.mkdir(parents=True)
                (out / "metrics.json").write_text(json.dumps(record, indent=2))
    table = build_table(load_runs(tmp_path / "eval"), layout="table11", baseline="baseline (1000 episodes)")
    assert sorted(table.rows) == sorted(rows)
    for row in rows:
        assert all(len(table.cells[(row, 1, f)]) == 1 for f in range(4)), row
    assert table.mean("baseline (4000 episodes)", 1) == pytest.approx(41.6)  # folds 40.1, 41.1, 42.1, 43.1
    assert table.mean("baseline + SVF (5000 episodes)", 1) == pytest.approx(43.7)
    assert table.header_line == "dataset: coco; evaluation episodes per run: 1000, 4000, 5000; runs: 24"
