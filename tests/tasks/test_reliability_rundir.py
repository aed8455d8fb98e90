"""A run directory belongs to one run: nothing lost, nothing silently overwritten (issue "reliability").

The user cases, each run through ``train.py`` as typed:

* two runs that differ only in ``optim.lr`` once shared a folder and the second overwrote the first's
  checkpoints, artifact, metrics and logs: now each gets its own folder (the config hash in its name);
* the same command again over a finished run, or another config aimed at its folder with
  ``hydra.run.dir``, is refused before anything is written, naming the differing keys;
* a command refused at start (``fold=4``) aimed at a finished run's folder rewrote its
  ``.hydra/config.yaml``: now every byte of the folder stays, and a refused command creates no folder;
* two trainings started at once into one folder both wrote it: the second is refused by the lock;
* extending a finished run (``dataset.epochs`` 1 -> 2, ``ckpt_path=last``) or resuming with another batch
  size was accepted silently: now refused unless named in ``resume_changes``;
* a stale lock (its process gone) is removed on this host, and named with its ``rm`` elsewhere;
* after a mid-epoch resume the progress log reported 211 s/batch for 2 s of work.
"""

from __future__ import annotations

import csv
import hashlib
import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import pytorch_lightning as pl

from svfseg.config_checks import CheckedRun, ConfigError
from svfseg.lightning.progress import EpochClock
from svfseg.run_dir import (
    LOCK_FILE,
    RECORD_FILE,
    RunDirError,
    check_ownership,
    is_recorded_run,
    remove_rank_folder,
    run_lock,
    slurm_restart_count,
    write_record,
)
from svfseg.tasks.resolve import TrainRun, resolve_train_run
from tests.helpers.cli import REPO, run_cli, tiny_overrides
from tests.helpers.hydra import tiny_train_config

RUN_PARENT = ("train", "synthetic", "baseline-resnet50-svf")


class WaitForRelease(pl.Callback):
    """After global step ``step`` writes ``marker`` (its pid) and waits until ``release`` exists."""

    def __init__(self, step: int, marker: str, release: str) -> None:
        self.step, self.marker, self.release = step, Path(marker), Path(release)

    def on_train_batch_end(
        self, trainer: pl.Trainer, pl_module: Any, outputs: Any, batch: Any, i: int
    ) -> None:
        if trainer.global_step == self.step:
            self.marker.write_text(str(os.getpid()))
            deadline = time.monotonic() + 240
            while not self.release.exists() and time.monotonic() < deadline:
                time.sleep(0.1)


def _train(
    synthetic_pascal, log_dir: Path, *extra: str, ok: bool = True, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess:
    return run_cli(
        [str(REPO / "train.py"), *tiny_overrides(synthetic_pascal), f"paths.log_dir={log_dir}", *extra],
        log_dir,
        timeout=300,
        ok=ok,
        env=env,
    )


def _run_dirs(log_dir: Path) -> list[Path]:
    return sorted(p for p in log_dir.joinpath(*RUN_PARENT).glob("fold0-1shot-seed321-*") if p.is_dir())


def _snapshot(folder: Path) -> dict[str, str]:
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


@pytest.fixture(scope="module")
def two_lrs(synthetic_pascal, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """The default command, then the same with only ``optim.lr`` changed, into the default run folders."""
    log_dir = tmp_path_factory.mktemp("two_lrs")
    _train(synthetic_pascal, log_dir)
    _train(synthetic_pascal, log_dir, "optim.lr=0.5")
    return {"log_dir": log_dir, "dirs": _run_dirs(log_dir)}


@pytest.mark.slow
def test_two_runs_that_differ_only_in_lr_keep_both_results(two_lrs: dict[str, Any]) -> None:
    dirs = two_lrs["dirs"]
    assert len(dirs) == 2, dirs
    lrs = set()
    for run in dirs:
        assert (run / "checkpoints" / "best.ckpt").is_file() and (
            run / "checkpoints" / "best.svf.pt"
        ).is_file()
        assert (run / "csv" / "metrics.csv").is_file()
        record = json.loads((run / RECORD_FILE).read_text())
        assert run.name.endswith(f"-{record['hash']}-tiny")
        metrics = json.loads((run / "metrics.json").read_text())
        assert metrics["config"]["optim"]["lr"] == record["config"]["optim"]["lr"]
        lrs.add(record["config"]["optim"]["lr"])
        assert not (run / LOCK_FILE).exists()  # released at the end
        assert (run / ".hydra" / "config.yaml").is_file()
    assert lrs == {0.015, 0.5}


@pytest.mark.slow
def test_the_same_command_again_is_refused_and_changes_nothing(synthetic_pascal, two_lrs) -> None:
    run = next(
        d
        for d in two_lrs["dirs"]
        if json.loads((d / RECORD_FILE).read_text())["config"]["optim"]["lr"] == 0.015
    )
    before = _snapshot(run)
    proc = _train(synthetic_pascal, two_lrs["log_dir"], ok=False)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert "already holds this run's results" in proc.stderr and "ckpt_path=last" in proc.stderr
    assert "ckpt_path=auto" in proc.stderr
    assert _snapshot(run) == before


@pytest.mark.slow
def test_auto_and_a_slurm_requeue_skip_the_finished_run_and_change_nothing(synthetic_pascal, two_lrs) -> None:
    """A sweep re-launched with ``ckpt_path=auto``, or a job SLURM requeued (same command, no ckpt_path),
    returns the finished run's metrics instead of failing on its folder."""
    log_dir = two_lrs["log_dir"]
    run = next(
        d
        for d in two_lrs["dirs"]
        if json.loads((d / RECORD_FILE).read_text())["config"]["optim"]["lr"] == 0.015
    )
    before, everything = _snapshot(run), sorted(str(p) for p in log_dir.rglob("*"))
    for extra, env in ((["ckpt_path=auto"], None), ([], {"SLURM_RESTART_COUNT": "2"})):
        proc = _train(synthetic_pascal, log_dir, *extra, env=env)
        assert f"already finished: {run}" in proc.stdout, proc.stdout
        assert "Traceback" not in proc.stderr
        assert _snapshot(run) == before
        assert sorted(str(p) for p in log_dir.rglob("*")) == everything
    # SLURM_RESTART_COUNT=0 is a first start: the finished folder is refused as before
    proc = _train(synthetic_pascal, log_dir, env={"SLURM_RESTART_COUNT": "0"}, ok=False)
    assert proc.returncode == 2 and "already holds this run's results" in proc.stderr


@pytest.mark.slow
def test_another_config_aimed_at_a_run_folder_is_refused_naming_the_keys(synthetic_pascal, two_lrs) -> None:
    run = next(
        d
        for d in two_lrs["dirs"]
        if json.loads((d / RECORD_FILE).read_text())["config"]["optim"]["lr"] == 0.015
    )
    before = _snapshot(run)
    proc = _train(
        synthetic_pascal, two_lrs["log_dir"], f"hydra.run.dir={run}", "optim.lr=0.1", "shot=2", ok=False
    )
    assert proc.returncode == 2
    assert "holds another run" in proc.stderr
    assert "optim.lr: 0.015 -> 0.1" in proc.stderr and "shot: 1 -> 2" in proc.stderr
    assert "hydra.run.dir=NEW_DIR" in proc.stderr
    assert _snapshot(run) == before


@pytest.mark.slow
def test_a_command_refused_at_start_writes_nothing_anywhere(synthetic_pascal, two_lrs) -> None:
    log_dir = two_lrs["log_dir"]
    run = two_lrs["dirs"][0]
    before = _snapshot(run)
    everything = sorted(str(p) for p in log_dir.rglob("*"))
    proc = _train(synthetic_pascal, log_dir, f"hydra.run.dir={run}", "fold=4", ok=False)
    assert proc.returncode == 2 and "fold=4 is invalid" in proc.stderr
    assert _snapshot(run) == before  # .hydra/config.yaml included
    proc = _train(synthetic_pascal, log_dir, "fold=4", ok=False)  # into its own (new) default folder
    assert proc.returncode == 2
    assert sorted(str(p) for p in log_dir.rglob("*")) == everything  # no folder was created


@pytest.mark.slow
def test_resume_refuses_an_optimisation_change_unless_named(synthetic_pascal, two_lrs) -> None:
    log_dir = two_lrs["log_dir"]
    run = next(
        d
        for d in two_lrs["dirs"]
        if json.loads((d / RECORD_FILE).read_text())["config"]["optim"]["lr"] == 0.5
    )
    base = ["optim.lr=0.5", "ckpt_path=last"]
    proc = _train(synthetic_pascal, log_dir, *base, f"hydra.run.dir={run}", "dataset.batch_size=4", ok=False)
    assert proc.returncode == 2 and "dataset.batch_size: 2 -> 4" in proc.stderr
    assert "resume_changes=[dataset.batch_size]" in proc.stderr
    # extending the finished run: refused, then accepted when named
    extend = [*base, f"hydra.run.dir={run}", "dataset.epochs=2", "trainer.max_epochs=2"]
    proc = _train(synthetic_pascal, log_dir, *extend, ok=False)
    assert proc.returncode == 2 and "dataset.epochs: 1 -> 2" in proc.stderr
    _train(synthetic_pascal, log_dir, *extend, "resume_changes=[dataset.epochs,trainer.max_epochs]")
    with (run / "csv" / "metrics.csv").open(newline="") as f:
        epochs = sorted({int(float(r["epoch"])) for r in csv.DictReader(f) if r.get("val/miou")})
    assert epochs == [0, 1]  # the first epoch's validation is still in the log
    record = json.loads((run / RECORD_FILE).read_text())
    assert record["config"]["dataset"]["epochs"] == 2  # the folder now records the extended run


@pytest.mark.slow
def test_a_second_launch_on_a_running_folder_is_refused_by_the_lock(synthetic_pascal, tmp_path: Path) -> None:
    marker, release = tmp_path / "waiting", tmp_path / "release"
    run = tmp_path / "run"
    wait = [
        "+callbacks.wait._target_=tests.tasks.test_reliability_rundir.WaitForRelease",
        "+callbacks.wait.step=1",
        f"+callbacks.wait.marker={marker}",
        f"+callbacks.wait.release={release}",
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "WANDB_MODE": "offline", "TERM": "dumb"}
    first = subprocess.Popen(
        [
            sys.executable,
            str(REPO / "train.py"),
            *tiny_overrides(synthetic_pascal),
            f"hydra.run.dir={run}",
            *wait,
        ],
        cwd=tmp_path,
        env=env,
        stdout=(tmp_path / "first.out").open("w"),
        stderr=(tmp_path / "first.err").open("w"),
    )
    try:
        deadline = time.monotonic() + 200
        while not marker.exists():
            assert first.poll() is None, (tmp_path / "first.err").read_text()[-3000:]
            assert time.monotonic() < deadline
            time.sleep(0.1)
        lock = json.loads((run / LOCK_FILE).read_text())
        assert (lock["pid"], lock["host"]) == (first.pid, socket.gethostname())
        before = _snapshot(run)
        second = run_cli(
            [
                str(REPO / "train.py"),
                *tiny_overrides(synthetic_pascal),
                f"hydra.run.dir={run}",
            ],
            tmp_path,
            timeout=200,
            ok=False,
        )
        assert second.returncode == 2
        assert f"is in use by process {first.pid} on {socket.gethostname()}" in second.stderr
        assert _snapshot(run) == before
        release.write_text("go")
        assert first.wait(timeout=200) == 0, (tmp_path / "first.err").read_text()[-3000:]
    finally:
        if first.poll() is None:
            first.kill()
            first.wait()
    assert (run / "metrics.json").is_file() and not (run / LOCK_FILE).exists()


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def _write_lock(folder: Path, **fields: Any) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / LOCK_FILE
    path.write_text(
        json.dumps({"pid": 1, "host": socket.gethostname(), "started": "2026-01-01T00:00:00+00:00", **fields})
    )
    return path


def test_a_stale_lock_of_this_host_is_removed_with_a_warning(tmp_path: Path, caplog) -> None:
    _write_lock(tmp_path, pid=_dead_pid())
    with caplog.at_level("WARNING"), run_lock(tmp_path) as path:
        assert json.loads(path.read_text())["pid"] == os.getpid()
    assert "removing the stale lock" in caplog.text and "has ended" in caplog.text
    assert not (tmp_path / LOCK_FILE).exists()


def test_a_lock_of_a_requeued_slurm_job_is_removed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SLURM_JOB_ID", "4242")
    _write_lock(tmp_path, host="node17", pid=99, slurm_job="4242")
    with run_lock(tmp_path):
        pass


@pytest.mark.parametrize(("value", "count"), [(None, 0), ("", 0), ("0", 0), ("3", 3), (" 1 ", 1), ("x", 0)])
def test_slurm_restart_count_reads_the_requeue_counter(
    monkeypatch: pytest.MonkeyPatch, value: str | None, count: int
) -> None:
    if value is None:
        monkeypatch.delenv("SLURM_RESTART_COUNT", raising=False)
    else:
        monkeypatch.setenv("SLURM_RESTART_COUNT", value)
    assert slurm_restart_count() == count


def test_auto_resolves_by_what_the_run_folder_holds(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """``ckpt_path=auto``: a new folder starts, a finished run of this config is returned, a folder of
    another config is not taken for this run (the claim refuses it, naming the keys)."""
    monkeypatch.delenv("SLURM_RESTART_COUNT", raising=False)
    out = tmp_path / "run"
    cfg = tiny_train_config(tmp_path / "data", out, min_pixels=64, extra=["ckpt_path=auto"])
    monkeypatch.setattr("svfseg.tasks.resolve.check_train_run", lambda c, multirun=False: _checked(c))
    run = resolve_train_run(cfg)
    assert run.finished is None and run.ckpt_path is None and not run.resuming
    out.mkdir()
    write_record(out, cfg)
    (out / "metrics.json").write_text(json.dumps({"miou": 0.25, "fbiou": 0.5}))
    assert resolve_train_run(cfg).finished == {"miou": 0.25, "fbiou": 0.5}
    other = tiny_train_config(tmp_path / "data", out, min_pixels=64, extra=["ckpt_path=auto", "optim.lr=0.5"])
    assert resolve_train_run(other).finished is None
    assert not is_recorded_run(out, other) and is_recorded_run(out, cfg)
    with pytest.raises(RunDirError, match=r"optim\.lr: 0\.015 -> 0\.5"):
        check_ownership(out, other, resuming=False, allowed=[])
    (out / "metrics.json").write_text("{not json")
    with pytest.raises(ConfigError, match=r"metrics\.json is unreadable .*ckpt_path=auto cannot tell"):
        resolve_train_run(cfg)


def test_a_rank_removes_its_own_folder_only_when_it_holds_nothing_but_its_log(tmp_path: Path) -> None:
    own = tmp_path / "eval" / "2026-12-07_14-58-46"
    own.mkdir(parents=True)
    (own / "eval.log").write_text("rank 1\n")
    shared = tmp_path / "eval" / "2026-12-07_14-58-45"
    (shared / ".hydra").mkdir(parents=True)  # rank 0's record: rank 0 uses this folder
    (shared / "eval.log").write_text("rank 0\n")
    other = tmp_path / "eval" / "other"
    other.mkdir()
    (other / "notes.txt").write_text("a user's file\n")
    for folder in (own, shared, other):
        remove_rank_folder(folder, "eval.log", stop=tmp_path)
    assert sorted(p.name for p in (tmp_path / "eval").iterdir()) == ["2026-12-07_14-58-45", "other"]
    assert (shared / "eval.log").read_text() == "rank 0\n"


def _checked(cfg: Any) -> CheckedRun:
    run = TrainRun.from_config(cfg)
    return CheckedRun(run.spec, run.stage, run.world_size, run.batch_size, run.eval_batch_size)


def test_a_lock_held_elsewhere_is_refused_with_the_command_that_clears_it(tmp_path: Path) -> None:
    path = _write_lock(tmp_path, host="node17", pid=4321)
    with pytest.raises(RunDirError) as err, run_lock(tmp_path):
        pass
    message = str(err.value)
    assert "in use by process 4321 on node17 since 2026-01-01" in message and f"rm {path}" in message
    assert path.exists()  # never removed on a guess
    # a live lock of this very process is refused too
    with (
        run_lock(tmp_path / "other"),
        pytest.raises(RunDirError, match="in use by process"),
        run_lock(tmp_path / "other"),
    ):
        pass


def test_the_time_per_batch_after_a_mid_epoch_resume_counts_this_process_batches(monkeypatch) -> None:
    now = [1000.0]
    monkeypatch.setattr(time, "perf_counter", lambda: now[0])
    clock = EpochClock()
    clock.tick(epoch=3, batch_idx=400)  # resumed: the first batch this process runs is batch 400
    for batch in range(401, 410):
        now[0] += 2.0
        clock.tick(epoch=3, batch_idx=batch)
    now[0] += 2.0
    done = 410
    assert clock.elapsed() / (done - clock.first_batch) == pytest.approx(2.0)


def test_eval_and_predict_refused_at_start_leave_no_folder(tmp_path: Path) -> None:
    """eval.py and predict.py write into new timestamped folders; a refused command leaves none behind."""
    proc = run_cli(
        [
            str(REPO / "eval.py"),
            f"ckpt_path={tmp_path / 'missing.ckpt'}",
            f"paths.log_dir={tmp_path / 'logs'}",
        ],
        tmp_path,
        ok=False,
    )
    assert proc.returncode == 2 and "missing.ckpt" in proc.stderr
    photo = tmp_path / "photo.png"
    photo.write_bytes(b"not an image")
    proc = run_cli(
        [
            str(REPO / "predict.py"),
            f"ckpt_path={tmp_path / 'missing.ckpt'}",
            f"support=[{photo}]",
            f"support_masks=[{photo}]",
            f"query={photo}",
            f"paths.log_dir={tmp_path / 'logs'}",
        ],
        tmp_path,
        ok=False,
    )
    assert proc.returncode != 0
    assert not (tmp_path / "logs").exists() or not any((tmp_path / "logs").rglob("*"))


def test_a_refused_command_removes_only_the_empty_folders_hydra_made(tmp_path: Path) -> None:
    from svfseg.run_dir import remove_if_empty

    (tmp_path / "work" / "outputs" / "train" / "x").mkdir(parents=True)
    (tmp_path / "work" / "keep.txt").write_text("mine")
    remove_if_empty(tmp_path / "work" / "outputs" / "train" / "x", stop=tmp_path / "work")
    assert sorted(p.name for p in (tmp_path / "work").iterdir()) == ["keep.txt"]  # outputs/train/x gone
    outside = tmp_path / "elsewhere" / "run"
    outside.mkdir(parents=True)
    remove_if_empty(outside, stop=tmp_path / "work")  # hydra.run.dir outside the working directory
    assert not outside.exists() and (tmp_path / "elsewhere").is_dir()  # never climbs out of the stop folder
