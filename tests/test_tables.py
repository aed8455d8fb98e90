"""Sweep directories into paper tables."""

import json
import os
from pathlib import Path
from typing import Any

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

    from tests.project.test_docs_commands import ROOT, doc_commands

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
    from tests.helpers.hydra import compose_config

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
                run = run_config_from_checkpoint(_checkpoint_record(train_cfg, saved), cfg)
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


def _seeded(
    root: Path, row: str, *, fold: int, seed: int, miou: float, shot: int = 1, trainable: int | None = None
) -> None:
    """A train.py-style record of the PEFT layout: one run of ``row`` with a training seed."""
    d = root / f"{row}-f{fold}-s{seed}-{shot}shot".replace(" ", "_")
    d.mkdir(parents=True)
    record = {
        "miou": miou,
        "fbiou": miou,
        "fold": fold,
        "shot": shot,
        "n_episodes": 200,
        "checkpoint": f"/runs/{d.name}/last.ckpt",
        "run": {"row": row, "table": "peft", "seed": seed, "dataset": "folder"},
    }
    if trainable is not None:
        record["trainable"] = {"backbone": trainable, "head": 7, "per_group": {"head": 7}}
    (d / "metrics.json").write_text(json.dumps(record))


def _peft_sweep(root: Path) -> None:
    """SVF (the reference) and LoRA on folds 0 and 1 with seeds 0-2, LoRA = SVF + 1, 2, 3 points per seed;
    LoRA has an extra seed 3 (no SVF partner); freeze one run without a recorded count; a 5-shot pair."""
    svf = {0: [0.50, 0.52, 0.54], 1: [0.40, 0.40, 0.43]}
    for fold, values in svf.items():
        for seed, v in enumerate(values):
            _seeded(root, "SVF", fold=fold, seed=seed, miou=v, trainable=11_880)
            _seeded(root, "LoRA r=8", fold=fold, seed=seed, miou=v + (seed + 1) / 100, trainable=164_544)
    _seeded(root, "LoRA r=8", fold=0, seed=3, miou=0.60, trainable=164_544)
    _seeded(root, "freeze", fold=0, seed=0, miou=0.45)
    _seeded(root, "SVF", fold=0, seed=0, miou=0.65, shot=5, trainable=11_880)
    _seeded(root, "LoRA r=8", fold=0, seed=0, miou=0.70, shot=5, trainable=164_544)


def test_paired_differences_pair_fold_shot_and_seed_with_a_t_interval(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from svfseg.tables import paired_report, t_interval

    _peft_sweep(tmp_path)
    table = build_table(load_runs(tmp_path), layout="peft")
    text = paired_report(table, "SVF")
    lines = text.splitlines()
    # per fold, mean and sample std (n - 1) over seeds:
    # SVF fold 0: 50, 52, 54 -> 52 +- 2; fold 1: 40, 40, 43 -> 41 +- sqrt(3) = 1.73
    # LoRA fold 0: 51, 54, 57, 60 -> 55.5 +- sqrt(15) = 3.87; fold 1: 41, 42, 46 -> 43 +- sqrt(7) = 2.65
    assert "| SVF | 1 | 0 | 3 | 52.00 ± 2.00 | 11,880 |" in lines
    assert "| SVF | 1 | 1 | 3 | 41.00 ± 1.73 | 11,880 |" in lines
    assert "| LoRA r=8 | 1 | 0 | 4 | 55.50 ± 3.87 | 164,544 |" in lines
    assert "| LoRA r=8 | 1 | 1 | 3 | 43.00 ± 2.65 | 164,544 |" in lines
    assert "| freeze | 1 | 0 | 1 | 45.00 | not recorded |" in lines
    assert "| SVF | 5 | 0 | 1 | 65.00 | 11,880 |" in lines
    # paired: differences 1, 2, 3 on both folds (seed 3 has no partner): mean 2, sample std sqrt(4/5);
    # t(0.975, 5) = 2.5706 (t table): half width 2.5706 * 0.894427 / sqrt(6) = 0.93865 -> [1.06, 2.94]
    assert "| LoRA r=8 | 1 | 6 | 0,1 | +2.00 | [+1.06, +2.94] | 1 | 164,544 |" in lines
    assert "| SVF (reference) | 1 | | | | | | 11,880 |" in lines
    assert "| freeze | 1 | 1 | 0 | -5.00 | n/a (one pair) | 0 | not recorded |" in lines
    assert "| LoRA r=8 | 5 | 1 | 0 | +5.00 | n/a (one pair) | 0 | 164,544 |" in lines
    # the interval itself, against the hand computation (t quantile from a t table, 8 digits)
    low, high = t_interval([1.0, 2.0, 3.0, 1.0, 2.0, 3.0])  # type: ignore[misc]
    half = 2.5705818 * (0.8**0.5) / 6**0.5
    assert low == pytest.approx(2 - half, abs=1e-6) and high == pytest.approx(2 + half, abs=1e-6)
    # three values 1, 2, 3: t(0.975, 2) = 4.3026527, sd 1 -> 2 +- 4.3026527 / sqrt(3)
    low, high = t_interval([1.0, 2.0, 3.0])  # type: ignore[misc]
    assert high - 2 == pytest.approx(4.3026527 / 3**0.5, abs=1e-6) and low + high == pytest.approx(4.0)
    assert t_interval([1.0]) is None

    assert main([str(tmp_path), "--layout", "peft", "--paired", "SVF"]) == 0
    out = capsys.readouterr().out
    assert text in out
    # the main table (cells: mean +- population std, as it always had); its delta refers to the paired row
    assert "| SVF | 52.00 ± 1.63 | 41.00 ± 1.41 |" in out
    assert build_table(load_runs(tmp_path), layout="peft").baseline == "LoRA r=8"  # the first row otherwise


def test_paired_names_an_unknown_reference_row(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    _peft_sweep(tmp_path)
    assert main([str(tmp_path), "--layout", "peft", "--paired", "LoRA"]) == 2
    assert "--paired row 'LoRA' not among ['LoRA r=8', 'SVF', 'freeze']" in capsys.readouterr().err


def test_paired_row_is_the_delta_baseline_unless_one_is_named(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    for fold in range(4):
        _seeded(tmp_path, "A", fold=fold, seed=0, miou=0.5)
        _seeded(tmp_path, "SVF", fold=fold, seed=0, miou=0.4)
    assert main([str(tmp_path), "--layout", "peft"]) == 0
    assert "| SVF | 40.00 | 40.00 | 40.00 | 40.00 | 40.00 | -10.00 |" in capsys.readouterr().out
    assert main([str(tmp_path), "--layout", "peft", "--paired", "SVF"]) == 0
    out = capsys.readouterr().out
    assert "| A | 50.00 | 50.00 | 50.00 | 50.00 | 50.00 | +10.00 |" in out
    assert "| A | 1 | 4 | 0,1,2,3 | +10.00 | [+10.00, +10.00] | 0 | not recorded |" in out
    assert main([str(tmp_path), "--layout", "peft", "--paired", "SVF", "--baseline", "A"]) == 0
    assert "| SVF | 40.00 | 40.00 | 40.00 | 40.00 | 40.00 | -10.00 |" in capsys.readouterr().out


def _checkpoint_record(train_cfg: Any, saved: dict[str, Any]) -> Any:
    """The record eval.py reads from a checkpoint of ``train_cfg`` (run spec, strategy, saved config)."""
    from svfseg.lightning.checkpoint_record import CheckpointRecord
    from svfseg.run_spec import RunSpec

    return CheckpointRecord(RunSpec.from_config(train_cfg), strategy_applied=True, config=saved)


def test_unfinished_run_folders_and_blank_means_are_named_on_stderr(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A sweep in progress: two folds finished, one run folder training (record, last.ckpt, no metrics),
    one started without a checkpoint, and a stage-1 folder that finished (stage1.json)."""
    sweep = tmp_path / "sweep"
    for f in (0, 1):
        _write(sweep, f"{f}-svf", "baseline + SVF", f, 1, 0.5)
    for name, ckpt in (("2-svf", True), ("3-svf", False)):
        folder = sweep / name
        (folder / "checkpoints").mkdir(parents=True)
        (folder / "svfseg-run.json").write_text("{}")
        if ckpt:
            (folder / "checkpoints" / "last.ckpt").write_bytes(b"")
    (sweep / "stage1").mkdir()
    (sweep / "stage1" / "svfseg-run.json").write_text("{}")
    (sweep / "stage1" / "stage1.json").write_text("{}")
    assert main([str(sweep)]) == 0
    out, err = capsys.readouterr()
    lines = err.splitlines()
    assert len(lines) == 3, lines
    assert lines[0].startswith(f"unfinished: {sweep / '2-svf'} has no metrics.json (last.ckpt saved 20")
    assert lines[1].startswith(f"unfinished: {sweep / '3-svf'} has no metrics.json (no checkpoint yet)")
    assert "ckpt_path=auto finishes it" in lines[0]
    assert lines[2] == (
        "incomplete: row 'baseline + SVF' 1-shot has no run for fold(s) [2, 3], so its mean and delta are blank"
    )
    assert "| baseline + SVF | 50.00 | 50.00 |  |  |  |  |" in out


def test_with_a_layout_only_that_tables_unfinished_runs_are_named(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    sweep = tmp_path / "sweep"
    for f in range(4):
        _write(sweep, f"{f}-svf", "baseline + SVF", f, 1, 0.5, table="table4")
    for name, table in (("t4", "table4"), ("t1", "table1")):
        (sweep / name / ".hydra").mkdir(parents=True)
        (sweep / name / "svfseg-run.json").write_text("{}")
        (sweep / name / ".hydra" / "config.yaml").write_text(f"table: {table}\nfold: 0\n")
    assert main([str(sweep), "--layout", "table4"]) == 0
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 1 and err[0].startswith(f"unfinished: {sweep / 't4'} has no metrics.json")


def _chosen(root: Path, name: str, row: str, *, seed: int, miou: float, selection: str | None) -> None:
    """A train.py record of fold 0, 1-shot whose checkpoint ``selection`` chose (None: a record before the key)."""
    d = root / name
    d.mkdir(parents=True)
    record: dict[str, Any] = {
        "miou": miou,
        "fbiou": miou,
        "fold": 0,
        "shot": 1,
        "checkpoint": f"/runs/{name}/best.ckpt",
        "run": {"row": row, "table": "t", "seed": seed},
    }
    if selection is not None:
        record["selection"] = selection
    (d / "metrics.json").write_text(json.dumps(record))


def test_a_cell_mixing_checkpoint_selections_is_refused_naming_both_files(tmp_path: Path) -> None:
    _chosen(tmp_path, "a", "SVF", seed=0, miou=0.5, selection=None)  # before the key: the paper's protocol
    _chosen(tmp_path, "b", "SVF", seed=1, miou=0.6, selection="test_episodes")
    assert build_table(load_runs(tmp_path)).records()[0][1] == "55.00 ± 5.00"
    _chosen(tmp_path, "c", "SVF", seed=2, miou=0.4, selection="held_out")
    with pytest.raises(
        ValueError, match=r"row 'SVF' fold 0 1-shot mixes checkpoint selections: .*a/metrics.json"
    ):
        build_table(load_runs(tmp_path))


def test_rows_of_different_selections_tabulate_with_a_note(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    _chosen(tmp_path, "a", "SVF", seed=0, miou=0.5, selection="test_episodes")
    _chosen(tmp_path, "b", "SVF held-out", seed=0, miou=0.4, selection="held_out")
    table = build_table(load_runs(tmp_path))
    assert [r[1] for r in table.records()] == ["50.00", "40.00"]
    assert (
        "note: the rows chose their checkpoints differently (dataset.selection): SVF: test_episodes, SVF held-out: held_out"
        in capsys.readouterr().err
    )
