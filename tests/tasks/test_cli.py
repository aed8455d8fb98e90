"""The real command lines, run as subprocesses on the synthetic dataset with the tiny profile.

* ``train.py -m`` over two Table 1 experiment files and the four folds, then ``python -m svfseg.tables``:
  the table's cells, means and deltas are recomputed here from the runs' ``metrics.json``;
* BAM in two commands (stage 1 writes the base learner, stage 2 reads it by path) and the error a missing
  base learner gives;
* ``eval.py`` on the stage-2 checkpoint prints and writes the numbers ``train.py`` printed and wrote;
* a sweep with an invalid fold fails at validation, with the message on stderr.

Every command runs in a temporary working directory so nothing is written into the repository.
"""

from __future__ import annotations

import csv
import json
import re
import statistics
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from omegaconf import OmegaConf

from svfseg.table_intervals import image_intervals
from svfseg.tables import build_table, load_runs, run_folders
from tests.helpers.cli import REPO, run_cli, tiny_overrides

FOLDS = (0, 1, 2, 3)
ROWS = {"freeze": "baseline† (ResNet-50)", "svf": "baseline† + SVF (ResNet-50)"}
RECIPES = {"freeze": ("poly", 0.15), "svf": ("cosine", 0.015)}
# A printed metrics row of svfseg.tasks.reporting.print_metrics: seed | mIoU | FB-IoU | episodes
PRINTED_ROW = re.compile(r"[│|]\s*321\s*[│|]\s*([\d.]+)\s*[│|]\s*([\d.]+)\s*[│|]\s*(\d+)\s*[│|]")


def _printed(stdout: str) -> tuple[float, float, int]:
    rows = PRINTED_ROW.findall(stdout)
    assert len(rows) == 1, stdout[-2000:]
    miou, fbiou, episodes = rows[0]
    return float(miou), float(fbiou), int(episodes)


# ----------------------------------------------------------------------------------------- sweep -> table
@pytest.fixture(scope="module")
def sweep(synthetic_pascal, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Table 1's baseline rows on the four folds; two training steps so that the rows differ."""
    work = tmp_path_factory.mktemp("sweep")
    run_cli(
        [
            str(REPO / "train.py"),
            "-m",
            "experiment=table1/resnet50_baseline_freeze,table1/resnet50_baseline_svf",
            "fold=0,1,2,3",
            *tiny_overrides(synthetic_pascal),
            "trainer.limit_train_batches=2",
            f"hydra.sweep.dir={work / 'sweep'}",
        ],
        work,
    )
    return work


def _sweep_metrics(sweep_dir: Path) -> dict[tuple[str, int], dict]:
    found = {}
    for path in sweep_dir.rglob("metrics.json"):
        record = json.loads(path.read_text())
        found[(record["run"]["finetune"], record["fold"])] = record
    return found


@pytest.mark.slow
def test_multirun_sweep_gathers_into_the_paper_table(sweep: Path) -> None:
    runs = _sweep_metrics(sweep / "sweep")
    assert sorted(runs) == [(ft, f) for ft in ("freeze", "svf") for f in FOLDS]
    for (ft, fold), record in runs.items():
        assert record["run"]["table"] == "table1" and record["run"]["row"] == ROWS[ft]
        assert record["shot"] == 1 and record["n_episodes"] == 12 and record["run"]["dataset"] == "synthetic"
        assert record["checkpoint"].endswith("best.ckpt") and f"fold{fold}" in record["checkpoint"]
        # the command line's dataset=synthetic beats the experiment's pascal; its lr recipe stays
        job = OmegaConf.load(Path(record["checkpoint"]).parents[1] / ".hydra" / "config.yaml")
        assert job.dataset.name == "synthetic" and job.fold == fold
        assert (job.optim.schedule, job.optim.lr) == RECIPES[ft]
    # the two settings really differ (else the delta column would say nothing)
    assert any(runs[("freeze", f)]["fbiou"] != runs[("svf", f)]["fbiou"] for f in FOLDS)

    for metric in ("miou", "fbiou"):
        out = sweep / f"table_{metric}"
        proc = run_cli(
            [
                "-m",
                "svfseg.tables",
                str(sweep / "sweep"),
                "--layout",
                "table1",
                "--metric",
                metric,
                "--baseline",
                ROWS["freeze"],
                "--out",
                str(out),
            ],
            sweep,
            timeout=60,
        )
        with out.with_suffix(".csv").open(newline="") as fh:
            table = {r["setting"]: r for r in csv.DictReader(fh)}
        assert set(table) == set(ROWS.values())  # one row per setting
        header = list(next(iter(table.values())))
        assert header == ["setting", *(f"1-shot fold{f}" for f in FOLDS), "1-shot mean", "1-shot delta"]
        means = {}
        for ft, row_name in ROWS.items():
            row = table[row_name]
            values = [100.0 * runs[(ft, f)][metric] for f in FOLDS]
            for f, v in zip(FOLDS, values):
                assert float(row[f"1-shot fold{f}"]) == pytest.approx(v, abs=0.005 + 1e-9), (metric, ft, f)
            means[ft] = statistics.fmean(values)
            assert float(row["1-shot mean"]) == pytest.approx(means[ft], abs=0.005 + 1e-9)
        assert table[ROWS["freeze"]]["1-shot delta"] == ""
        delta = float(table[ROWS["svf"]]["1-shot delta"])
        assert delta == pytest.approx(means["svf"] - means["freeze"], abs=0.005 + 1e-9), metric
        markdown = out.with_suffix(".md").read_text()
        assert proc.stdout.strip() == markdown.strip()
        lines = markdown.strip().splitlines()
        n_runs = len(runs)
        assert lines[0] == (
            "dataset: synthetic (generated data: not the paper's benchmark); evaluation episodes per run: 12; "
            f"runs: {n_runs}"
        )
        assert lines[1] == "" and len(lines) == 2 + 2 + len(ROWS)
        svf_line = next(line for line in lines if line.startswith(f"| {ROWS['svf']} |"))
        assert svf_line.endswith(f"| {table[ROWS['svf']]['1-shot delta']} |")

    # the intervals of the mean column, from the episodes.json files train.py wrote beside each metrics.json
    tabled = build_table(load_runs(sweep / "sweep"), layout="table1", baseline=ROWS["freeze"])
    items, notes = image_intervals(run_folders(tabled), tabled.rows, ROWS["freeze"], resamples=200)
    assert notes == [] and {it.row for it in items} == set(ROWS.values())
    for it in items:  # the episodes' class sums give the table's own mean
        assert it.mean == pytest.approx(tabled.mean(it.row, 1), abs=1e-4)
    (svf,) = [it for it in items if it.delta is not None]
    assert svf.delta == pytest.approx(tabled.mean(svf.row, 1) - tabled.mean(ROWS["freeze"], 1), abs=2e-4)


# ----------------------------------------------------------------------------------------- BAM, eval.py
@pytest.fixture(scope="module")
def bam_runs(synthetic_pascal, tmp_path_factory: pytest.TempPathFactory) -> dict[str, object]:
    work = tmp_path_factory.mktemp("bam")
    learner = work / "weights" / "pspnet.pt"
    command = [
        str(REPO / "train.py"),
        "stage=base",
        "method=bam",
        *tiny_overrides(synthetic_pascal),
        "dataset.base_stage.epochs=1",
        f"method.base_learner={learner}",
        f"hydra.run.dir={work / 'base'}",
    ]
    stage1 = run_cli(command, work)
    stage2 = run_cli(
        [
            str(REPO / "train.py"),
            "method=bam",
            *tiny_overrides(synthetic_pascal),
            f"method.base_learner={learner}",
            f"hydra.run.dir={work / 'meta'}",
        ],
        work,
    )
    return {"work": work, "learner": learner, "stage1": stage1, "stage2": stage2, "command": command}


@pytest.mark.slow
def test_bam_stage2_reads_the_stage1_base_learner_by_path(bam_runs: dict) -> None:
    work, learner = bam_runs["work"], bam_runs["learner"]
    assert f"base learner written to {learner}" in bam_runs["stage1"].stdout
    saved = torch.load(learner, map_location="cpu", weights_only=True)
    assert saved["meta"]["dataset"] == "pascal" and saved["meta"]["fold"] == 0
    assert saved["meta"]["backbone"] == "resnet50" and saved["meta"]["width_mult"] == 0.125
    record = json.loads((work / "meta" / "metrics.json").read_text())
    assert record["run"]["method"] == "bam" and record["n_episodes"] == 12
    # the frozen base learner inside the stage-2 checkpoint is the stage-1 file, bit for bit
    state = torch.load(record["checkpoint"], map_location="cpu", weights_only=True)["state_dict"]
    prefix = "model.base_learner."
    inside = {k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix)}
    assert inside.keys() == saved["state_dict"].keys()
    for key, value in saved["state_dict"].items():
        assert torch.equal(inside[key], value), key


@pytest.mark.slow
def test_bam_stage1_records_its_result_and_auto_skips_it_when_finished(bam_runs: dict) -> None:
    work, learner = bam_runs["work"], bam_runs["learner"]
    record = json.loads((work / "base" / "stage1.json").read_text())
    assert record["base_learner"] == str(learner)
    assert (
        record["val_miou"] == torch.load(learner, map_location="cpu", weights_only=True)["meta"]["val_miou"]
    )
    stage1 = bam_runs["command"]  # the fixture's stage-1 command, again
    before = {p: p.stat().st_mtime_ns for p in [learner, *(work / "base").rglob("*")] if p.is_file()}
    # the same command again, as a sweep re-launched with ckpt_path=auto, or as SLURM requeues it
    for extra, env in ((["ckpt_path=auto"], None), ([], {"SLURM_RESTART_COUNT": "1"})):
        proc = run_cli([*stage1, *extra], work, env=env)
        assert f"already finished: {work / 'base'}" in proc.stdout
    assert {p: p.stat().st_mtime_ns for p in before} == before
    # without auto the folder is refused, naming the resume; a checkpoint of another folder is refused
    proc = run_cli(stage1, work, ok=False)
    assert proc.returncode == 2 and "already holds this run's results" in proc.stderr
    assert "ckpt_path=last" in proc.stderr
    other = work / "elsewhere.ckpt"
    other.write_bytes(b"")
    proc = run_cli([*stage1, f"ckpt_path={other}"], work, ok=False)
    assert proc.returncode == 2
    assert f"ckpt_path={other}: BAM's stage 1 (stage=base) resumes only its own run folder's" in proc.stderr


@pytest.mark.slow
def test_bam_without_its_base_learner_names_the_stage1_command(synthetic_pascal, tmp_path: Path) -> None:
    missing = tmp_path / "nowhere" / "pspnet.pt"
    proc = run_cli(
        [
            str(REPO / "train.py"),
            "method=bam",
            *tiny_overrides(synthetic_pascal),
            f"method.base_learner={missing}",
            f"hydra.run.dir={tmp_path / 'run'}",
        ],
        tmp_path,
        timeout=60,
        ok=False,
    )
    assert proc.returncode != 0
    assert f"method.base_learner={missing} does not exist" in proc.stderr
    assert "python train.py stage=base method=bam dataset=synthetic fold=0 backbone=resnet50" in proc.stderr
    assert not (tmp_path / "run" / "checkpoints").exists()


@pytest.mark.slow
def test_eval_cli_prints_and_writes_what_train_printed(bam_runs: dict) -> None:
    work = bam_runs["work"]
    trained = json.loads((work / "meta" / "metrics.json").read_text())
    printed_train = _printed(bam_runs["stage2"].stdout)
    assert printed_train == (
        round(100 * trained["miou"], 2),
        round(100 * trained["fbiou"], 2),
        trained["n_episodes"],
    )
    proc = run_cli(
        [
            str(REPO / "eval.py"),
            f"ckpt_path={trained['checkpoint']}",
            f"hydra.run.dir={work / 'eval'}",
            "trainer.accelerator=cpu",
            "num_workers=0",
        ],
        work,
        timeout=90,
    )
    assert _printed(proc.stdout) == printed_train
    evaluated = json.loads((work / "eval" / "metrics.json").read_text())
    for key in ("miou", "fbiou", "class_iou", "n_episodes", "fold", "shot"):
        assert evaluated[key] == trained[key], key
    assert evaluated["run"] == trained["run"]


# ----------------------------------------------------------------------------------------- validation
def test_a_sweep_with_an_invalid_fold_fails_before_any_work(synthetic_pascal, tmp_path: Path) -> None:
    proc = run_cli(
        [
            str(REPO / "train.py"),
            "-m",
            "fold=4",
            *tiny_overrides(synthetic_pascal),
            f"hydra.sweep.dir={tmp_path / 'sweep'}",
        ],
        tmp_path,
        timeout=150,
        ok=False,
    )
    # the job's problems, one line each; then Hydra names the refused job as it does any failed sweep job
    # (a refusal no longer exits the process, which ended the sweep: test_unattended.py)
    assert proc.returncode == 1
    assert re.search(r"\n  - fold=4 is invalid: choose one of \[0, 1, 2, 3\]", proc.stderr)
    assert "Error executing job with overrides:" in proc.stderr
    assert "SweepJobRefused: train.py: this job was refused at start (1 problem above)" in proc.stderr
    assert not list((tmp_path / "sweep").rglob("*.ckpt"))


@pytest.mark.slow
def test_bam_on_coco_contiguous_split_trains_both_stages(tmp_path: Path) -> None:
    """The COCO split travels to the model: stage 2 accepts the stage-1 file of its own split (it used
    to be built for 'interleaved' and refuse it), and a run of the other split still refuses it."""
    from svfseg.dataprep.synthetic import coverage_min_pixels, make_synthetic

    root = make_synthetic("coco", tmp_path / "coco", n_train=480, n_val=240, size=64)
    learner = tmp_path / "weights" / "pspnet.pt"
    common = [
        str(REPO / "train.py"),
        "method=bam",
        "dataset=coco",
        "debug=tiny",
        f"dataset.root={root}",
        f"dataset.min_pixels={coverage_min_pixels(64)}",
        "dataset.train_episodes_for_curve=0",
        f"method.base_learner={learner}",
        "~callbacks.progress_bar",
        "trainer.enable_model_summary=false",
        "trainer.max_epochs=1",
    ]
    stage1 = ["stage=base", "dataset.base_stage.epochs=1", "dataset.base_stage.batch_size=2"]
    stage1 += ["dataset.base_stage.train_size=65", "dataset.base_stage.eval_size=65"]
    contiguous = "dataset.coco_split=contiguous"
    run_cli([*common, *stage1, contiguous, f"hydra.run.dir={tmp_path / 'base'}"], tmp_path)
    assert torch.load(learner, map_location="cpu", weights_only=True)["meta"]["coco_split"] == "contiguous"
    run_cli([*common, contiguous, f"hydra.run.dir={tmp_path / 'meta'}"], tmp_path)
    record = json.loads((tmp_path / "meta" / "metrics.json").read_text())
    assert (
        record["run"]["method"] == "bam" and record["run"]["dataset"] == "coco" and record["n_episodes"] == 12
    )
    assert record["config"]["dataset"]["coco_split"] == "contiguous"
    ckpt = torch.load(record["checkpoint"], map_location="cpu", weights_only=True)
    assert ckpt["hyper_parameters"]["run"]["coco_split"] == "contiguous"
    other = run_cli([*common, f"hydra.run.dir={tmp_path / 'other'}"], tmp_path, ok=False)
    assert other.returncode != 0
    assert "coco_split: file has 'contiguous', run needs 'interleaved'" in other.stderr


def _folder_with_one_image_of_a_class(root: Path) -> Path:
    """A folder dataset (as a user writes one: JPEGs, class-id PNGs, text lists) where fold 0's novel
    class is in one val image: a 1-shot episode needs two."""
    classes = {"t1": 2, "t2": 2, "t3": 2, "v1": 1, "v2": 2}
    for name, value in classes.items():
        (root / "images").mkdir(parents=True, exist_ok=True)
        (root / "labels").mkdir(parents=True, exist_ok=True)
        cv2.imwrite(str(root / "images" / f"{name}.jpg"), np.full((48, 48, 3), 90, np.uint8))
        label = np.zeros((48, 48), np.uint8)
        label[8:40, 8:40] = value
        cv2.imwrite(str(root / "labels" / f"{name}.png"), label)
    (root / "classes.txt").write_text("a\nb\n")
    (root / "train.txt").write_text("t1\nt2\nt3\n")
    (root / "val.txt").write_text("v1\nv2\n")
    (root / "folds.json").write_text('{"0": [1], "1": [2]}')
    return root


def test_data_too_small_for_the_episodes_is_reported_without_a_traceback(tmp_path: Path) -> None:
    """Found when the lists are built at fit start; it ended in a traceback with the same message."""
    root = _folder_with_one_image_of_a_class(tmp_path / "mydata")
    proc = run_cli(
        [
            str(REPO / "train.py"),
            "dataset=folder",
            f"dataset.root={root}",
            "dataset.min_pixels=1",
            "debug=tiny",
            f"paths.output_dir={tmp_path / 'run'}",
        ],
        tmp_path,
        ok=False,
    )
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert "train.py: 1 problem in the data, nothing was trained:" in proc.stderr
    assert "class pools {1: 1} (class: images) are too small for 1-shot episodes" in proc.stderr
    assert "Traceback" not in proc.stderr
