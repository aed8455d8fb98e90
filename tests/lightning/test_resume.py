"""Resumable training: step checkpoints, an exact resume after SIGKILL mid-epoch, NaN handling.

The runs use the tiny profile with 8 training steps per epoch, 2 epochs and ``last.ckpt`` every 2 steps.
One uninterrupted in-process run is the reference; ``train.py`` subprocesses are killed with SIGKILL at a
fixed step (a test-only callback hangs there and the test sends the signal), then resumed with
``ckpt_path=last``: every tensor of the final checkpoint (bitwise), the optimizer and lr state, the
episodes of every step and ``metrics.json`` must match the reference.
"""

from __future__ import annotations

import csv
import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import pytorch_lightning as pl
import torch
from omegaconf import DictConfig

from svfseg.data.samplers import EpisodeSampler, step_seed
from svfseg.lightning.checkpointing import LastCheckpoint, StepSeed, first_non_finite
from svfseg.tasks.train import train
from tests.helpers.hydra import tiny_train_config

REPO = Path(__file__).resolve().parents[2]
STEPS_PER_EPOCH, EPOCHS, EVERY = 8, 2, 2
BATCH = 2  # dataset.batch_size of debug=tiny
COMMON = [
    "finetune=svf",
    "trainer.deterministic=true",
    f"trainer.max_epochs={EPOCHS}",
    f"trainer.limit_train_batches={STEPS_PER_EPOCH}",
    f"callbacks.last_checkpoint.every_n_train_steps={EVERY}",
    # every step's row reaches metrics.csv at once (by default every 100 steps), so a killed run leaves rows
    "trainer.log_every_n_steps=1",
    "+logger.csv.flush_logs_every_n_steps=1",
]


# ------------------------------------------------------------------ test-only callbacks (also used by
# the train.py subprocesses, which import this module through Hydra's _target_)


class RecordEpisodes(pl.Callback):
    """Appends one JSON line per training batch: global step, epoch, batch index, episode indices."""

    def __init__(self, path: str) -> None:
        self.path = Path(path)

    def on_train_batch_start(self, trainer: pl.Trainer, pl_module: Any, batch: Any, batch_idx: int) -> None:
        row = {
            "step": trainer.global_step,
            "epoch": trainer.current_epoch,
            "batch": batch_idx,
            "episodes": batch["episode_idx"].tolist(),
        }
        with self.path.open("a") as f:
            f.write(json.dumps(row) + "\n")


class HangAfterStep(pl.Callback):
    """At global step ``step`` writes ``marker`` and sleeps until the test kills the process."""

    def __init__(self, step: int, marker: str) -> None:
        self.step, self.marker = step, Path(marker)

    def on_train_batch_end(
        self, trainer: pl.Trainer, pl_module: Any, outputs: Any, batch: Any, i: int
    ) -> None:
        if trainer.global_step == self.step:
            self.marker.write_text(str(os.getpid()))
            while True:
                time.sleep(0.5)


class PoisonBatch(pl.Callback):
    """Turns the query images of the batch at global step ``step`` into NaN (the loss becomes NaN)."""

    def __init__(self, step: int) -> None:
        self.step = step

    def on_train_batch_start(self, trainer: pl.Trainer, pl_module: Any, batch: Any, batch_idx: int) -> None:
        if trainer.global_step == self.step:
            batch["query_img"].fill_(float("nan"))


class PoisonWeight(pl.Callback):
    """After the optimizer step that reaches ``step``, sets one trainable weight to inf (as an overflow would).

    Plain callbacks run before checkpoint callbacks, so the step save of ``step`` sees the bad weight.
    """

    def __init__(self, step: int) -> None:
        self.step = step

    def on_train_batch_end(
        self, trainer: pl.Trainer, pl_module: Any, outputs: Any, batch: Any, i: int
    ) -> None:
        if trainer.global_step == self.step:
            name, param = next((n, p) for n, p in pl_module.named_parameters() if p.requires_grad)
            self.name = name
            with torch.no_grad():
                param.view(-1)[0] = float("inf")


# ------------------------------------------------------------------ helpers


def _callback(name: str, target: type, **kwargs: Any) -> list[str]:
    """Hydra overrides adding a callback ``name`` built from this module."""
    # tests is a package: pytest and train.py (repository root on sys.path) both import this module by this name
    out = [f"+callbacks.{name}._target_=tests.lightning.test_resume.{target.__name__}"]
    return out + [f"+callbacks.{name}.{k}={v}" for k, v in kwargs.items()]


def _load(path: Path) -> dict[str, Any]:
    return torch.load(path, map_location="cpu", weights_only=True)


def _assert_same_tree(a: Any, b: Any, where: str) -> None:
    """Tensors and everything else exactly equal, recursively (NaN equals NaN)."""
    if isinstance(a, torch.Tensor):
        assert isinstance(b, torch.Tensor), where
        # bitwise: same CPU kernels, one thread, deterministic algorithms on both sides
        torch.testing.assert_close(b, a, rtol=0, atol=0, msg=lambda m: f"{where}: {m}")
    elif isinstance(a, dict):
        assert isinstance(b, dict) and a.keys() == b.keys(), f"{where}: keys {sorted(a)} != {sorted(b)}"
        for k in a:
            _assert_same_tree(a[k], b[k], f"{where}.{k}")
    elif isinstance(a, (list, tuple)):
        assert isinstance(b, (list, tuple)) and len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b)):
            _assert_same_tree(x, y, f"{where}[{i}]")
    elif isinstance(a, float) and math.isnan(a):
        assert isinstance(b, float) and math.isnan(b), where
    else:
        assert a == b, f"{where}: {a!r} != {b!r}"


def _assert_same_training_state(ref: dict[str, Any], got: dict[str, Any]) -> None:
    assert (got["epoch"], got["global_step"]) == (ref["epoch"], ref["global_step"])
    assert ref["state_dict"].keys() == got["state_dict"].keys()
    _assert_same_tree(ref["state_dict"], got["state_dict"], "state_dict")
    _assert_same_tree(ref["optimizer_states"], got["optimizer_states"], "optimizer_states")  # momentum
    _assert_same_tree(ref["lr_schedulers"], got["lr_schedulers"], "lr_schedulers")


def _metric_numbers(record: dict[str, Any]) -> dict[str, Any]:
    keys = ("miou", "fbiou", "class_iou", "per_seed", "n_episodes", "seeds", "fold", "shot")
    return {k: record[k] for k in keys} | {"checkpoint": Path(record["checkpoint"]).name}


def _read_rows(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def _cli_overrides(synthetic_pascal, out: Path) -> list[str]:
    root, min_pixels = synthetic_pascal
    return [
        "dataset=synthetic",
        "debug=tiny",
        "logger=csv",
        f"dataset.root={root}",
        f"dataset.min_pixels={min_pixels}",
        f"paths.output_dir={out}",
        f"paths.log_dir={out}",
        "~callbacks.progress_bar",
        *COMMON,
    ]


def _env() -> dict[str, str]:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "WANDB_MODE": "offline", "TERM": "dumb", "COLUMNS": "120"}
    env.pop("HYDRA_FULL_ERROR", None)
    return env


def _as_a_terminal_job() -> None:
    """Ctrl-C's default action, as a shell gives its foreground job.

    An ignored SIGINT is inherited through exec, and Python then installs no KeyboardInterrupt handler. A
    non-interactive shell starts its background jobs with SIGINT ignored (``pytest ... &``, as CI scripts
    and batch jobs do), so without this the child would sleep through the signal.
    """
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def _popen(
    args: list[str], cwd: Path, log: Path, env: dict[str, str] | None = None, *, own_group: bool = False
) -> subprocess.Popen:
    """``train.py ARGS`` as a terminal job; ``own_group``: in a process group of its own (with the DDP ranks
    it starts), so that the test can kill the whole job at once as a scheduler does."""
    # Output goes to files: a pipe nobody reads would block the child once full.
    return subprocess.Popen(
        [sys.executable, str(REPO / "train.py"), *args],
        cwd=cwd,
        env={**_env(), **(env or {})},
        stdout=log.with_suffix(".out").open("w"),
        stderr=log.with_suffix(".err").open("w"),
        preexec_fn=_as_a_terminal_job,
        start_new_session=own_group,
    )


def _tail(log: Path) -> str:
    return "\n".join(
        f"--- {p.name}\n{p.read_text()[-4000:]}" for p in (log.with_suffix(".out"), log.with_suffix(".err"))
    )


# ------------------------------------------------------------------ the uninterrupted reference


@pytest.fixture(scope="module")
def reference(synthetic_pascal, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """One uninterrupted in-process run; records which file each checkpoint write went to, at which step."""
    out = tmp_path_factory.mktemp("reference")
    rows = out / "episodes.jsonl"
    root, min_pixels = synthetic_pascal
    cfg = tiny_train_config(
        root, out, min_pixels=min_pixels, extra=[*COMMON, *_callback("record", RecordEpisodes, path=rows)]
    )
    saves: list[tuple[str, int, int]] = []
    original = pl.Trainer.save_checkpoint

    def spy(self: pl.Trainer, filepath: Any, *args: Any, **kwargs: Any) -> None:
        saves.append((Path(filepath).name, self.global_step, self.current_epoch))
        original(self, filepath, *args, **kwargs)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(pl.Trainer, "save_checkpoint", spy)
        metrics = train(cfg)
    return {"out": out, "saves": saves, "metrics": metrics, "rows": _read_rows(rows), "cfg": cfg}


def test_last_checkpoint_every_n_steps_and_every_epoch_and_best_by_val_miou(reference) -> None:
    saves = reference["saves"]
    last = [(step, epoch) for name, step, epoch in saves if name == "last.ckpt"]
    # every 2 steps, but not on an epoch's last batch: the epoch save (after validation) follows
    assert last == [(2, 0), (4, 0), (6, 0), (8, 0), (10, 1), (12, 1), (14, 1), (16, 1)]
    assert {name for name, _, _ in saves} <= {"last.ckpt", "best.ckpt"}
    ckpt_dir = reference["out"] / "checkpoints"
    artifact = ["best.svf.pt"] if reference["cfg"].finetune.name == "svf" else []
    # no last-v1.ckpt; the SVF artifact sits next to best.ckpt only
    assert sorted(p.name for p in ckpt_dir.iterdir()) == sorted(["best.ckpt", "last.ckpt", *artifact])

    # best.ckpt: written only at epoch ends, by the val/miou saver (the step saver monitors nothing)
    best_steps = [step for name, step, _ in saves if name == "best.ckpt"]
    assert best_steps and set(best_steps) <= {8, 16}
    best = _load(ckpt_dir / "best.ckpt")
    final = _load(ckpt_dir / "last.ckpt")
    ((key, state),) = [(k, v) for k, v in final["callbacks"].items() if k.startswith("BestCheckpoint")]
    assert "'monitor': 'val/miou'" in key
    assert Path(state["best_model_path"]).name == "best.ckpt"
    assert best["global_step"] == best_steps[-1]
    with (reference["out"] / "csv" / "metrics.csv").open() as f:
        val = [float(r["val/miou"]) for r in csv.DictReader(f) if r.get("val/miou")]
    assert len(val) == EPOCHS
    assert float(state["best_model_score"]) == pytest.approx(max(val))
    # the reference tested best.ckpt
    assert Path(reference["metrics"]["checkpoint"]).name == "best.ckpt"

    # last.ckpt records where training stands: an epoch end points at the next epoch's start
    assert _train_position(final) == {"epoch": EPOCHS, "consumed": 0}
    assert final["global_step"] == EPOCHS * STEPS_PER_EPOCH
    # the reference trained 8 batches per epoch in the sampler's order
    rows = reference["rows"]
    assert [r["step"] for r in rows] == list(range(EPOCHS * STEPS_PER_EPOCH))
    n_train = _n_train(reference["cfg"])
    for epoch in range(EPOCHS):
        sampler = EpisodeSampler(n_train, shuffle=True, seed=321)
        sampler.set_epoch(epoch)
        keys = [i for _, i in sampler][: STEPS_PER_EPOCH * BATCH]
        got = [e for r in rows if r["epoch"] == epoch for e in r["episodes"]]
        assert got == keys


def _n_train(cfg: DictConfig) -> int:
    """Training queries in the list (the sampler's n)."""
    from svfseg.tasks.builders import build_datamodule
    from svfseg.tasks.resolve import TrainRun

    dm = build_datamodule(TrainRun.from_config(cfg))
    dm.setup("fit")
    return len(dm.train_dataset())


# How the second command resumes: as a user types it, as a re-launched sweep does, as SLURM requeues a job
# (the same command; the submitit launcher resubmits it, SLURM counts the restart).
LAST = (["ckpt_path=last"], {})
AUTO = (["ckpt_path=auto"], {})
REQUEUED = ([], {"SLURM_RESTART_COUNT": "1", "SLURM_JOB_ID": "4242"})


@pytest.mark.slow
@pytest.mark.parametrize(
    ("kill_at", "resume_step", "position", "sig", "resume"),
    [
        # epoch 0, 5 of 8 steps done, last.ckpt at step 4
        (5, 4, {"epoch": 0, "consumed": 4 * BATCH}, signal.SIGKILL, LAST),
        # epoch 1, last.ckpt from the end of epoch 0 (after validation)
        (9, 8, {"epoch": 1, "consumed": 0}, signal.SIGKILL, LAST),
        # Ctrl-C in epoch 1, mid-epoch after epoch 0's best.ckpt: Lightning shuts down, svfseg releases the
        # run's lock, the resume keeps the curve (a SIGKILL at this step resumes from the same checkpoint)
        (11, 10, {"epoch": 1, "consumed": 2 * BATCH}, signal.SIGINT, AUTO),
        # a job killed at its time limit and requeued by SLURM: the same command resumes
        (7, 6, {"epoch": 0, "consumed": 6 * BATCH}, signal.SIGKILL, REQUEUED),
        # killed before its first checkpoint (step 2's comes after the hang): auto starts again, and the
        # CSV log holds each step once
        (2, 0, None, signal.SIGKILL, AUTO),
    ],
    ids=["epoch0-last", "epoch-end-last", "sigint-auto", "slurm-requeue", "no-ckpt-auto"],
)
def test_sigkill_mid_epoch_then_resume_matches_the_uninterrupted_run(
    synthetic_pascal,
    tmp_path: Path,
    reference,
    kill_at: int,
    resume_step: int,
    position: dict[str, int] | None,
    sig: signal.Signals,
    resume: tuple[list[str], dict[str, str]],
) -> None:
    out = tmp_path / "run"
    rows = tmp_path / "episodes.jsonl"
    marker = tmp_path / "hanging"
    base = [*_cli_overrides(synthetic_pascal, out), *_callback("record", RecordEpisodes, path=rows)]

    proc = _popen(
        [*base, *_callback("hang", HangAfterStep, step=kill_at, marker=marker)], tmp_path, tmp_path / "a"
    )
    try:
        deadline = time.monotonic() + 150
        while not marker.exists():
            assert proc.poll() is None, (
                f"train.py exited with {proc.returncode} before step {kill_at}\n" + _tail(tmp_path / "a")
            )
            assert time.monotonic() < deadline, "train.py did not reach the kill step\n" + _tail(
                tmp_path / "a"
            )
            time.sleep(0.05)
        proc.send_signal(sig)
        code = proc.wait(timeout=150)  # a graceful shutdown saves and tears down: slow on a loaded CPU
        if sig == signal.SIGKILL:
            assert code == -signal.SIGKILL
        else:  # Lightning's graceful shutdown exits with 1; the lock is released on the way out
            assert code == 1, _tail(tmp_path / "a")
            assert not (out / ".svfseg.lock").exists()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()

    if position is None:
        assert not (out / "checkpoints" / "last.ckpt").exists()
        assert _csv_rows(out)  # the killed run's first rows, which the new start logs again
    else:
        killed = _load(out / "checkpoints" / "last.ckpt")
        assert killed["global_step"] == resume_step
        assert _train_position(killed) == position
    assert not (out / "metrics.json").exists()

    overrides, env = resume
    proc = _popen([*base, *overrides], tmp_path, tmp_path / "b", env=env)
    assert proc.wait(timeout=150) == 0, _tail(tmp_path / "b")
    assert "not resumable" not in (tmp_path / "b.err").read_text()  # Lightning's mid-epoch warning

    # the episodes of every step: the killed run's steps before the checkpoint, then the resumed run's
    got = _read_rows(rows)
    first = [r for r in got if r["step"] < resume_step]
    resumed = got[next(i for i, r in enumerate(got) if i > 0 and r["step"] <= got[i - 1]["step"]) :]
    assert resumed[0]["step"] == resume_step
    assert first + resumed == reference["rows"]

    ref_dir = reference["out"] / "checkpoints"
    _assert_same_training_state(_load(ref_dir / "last.ckpt"), _load(out / "checkpoints" / "last.ckpt"))
    _assert_same_tree(
        _load(ref_dir / "best.ckpt")["state_dict"],
        _load(out / "checkpoints" / "best.ckpt")["state_dict"],
        "best",
    )
    record = json.loads((out / "metrics.json").read_text())
    assert _metric_numbers(record) == _metric_numbers(
        json.loads((reference["out"] / "metrics.json").read_text())
    )
    # the CSV log (Figure 2's curves) holds every step once, as the uninterrupted run's does
    assert _csv_rows(out) == _csv_rows(reference["out"])


def _csv_rows(run: Path) -> list[dict[str, str]]:
    """metrics.csv rows without the columns that measure time."""
    with (run / "csv" / "metrics.csv").open(newline="") as f:
        rows = list(csv.DictReader(f))
    assert rows, run
    return [{k: v for k, v in r.items() if "time" not in k} for r in rows]


def _tiny(synthetic_pascal, out: Path, extra: list[str]) -> DictConfig:
    root, min_pixels = synthetic_pascal
    return tiny_train_config(
        root, out, min_pixels=min_pixels, extra=[*COMMON, "trainer.max_epochs=1", *extra]
    )


def _train_position(ckpt: dict) -> dict[str, int]:
    """The saved training position; the datamodule and the (only, stateful) training loader agree on it."""
    (loader,) = ckpt["loops"]["fit_loop"]["state_dict"]["combined_loader"]
    assert loader["train_position"] == ckpt["FewShotDataModule"]["train_position"]
    return loader["train_position"]


def _assert_finite_checkpoint(path: Path, step: int, position: dict[str, int]) -> None:
    ckpt = _load(path)
    assert ckpt["global_step"] == step
    assert first_non_finite(ckpt["state_dict"]) is None
    assert _train_position(ckpt) == position


def test_nan_loss_stops_with_step_and_episodes_and_keeps_the_last_good_checkpoint(
    synthetic_pascal, tmp_path: Path
) -> None:
    cfg = _tiny(synthetic_pascal, tmp_path, _callback("poison", PoisonBatch, step=5))
    with pytest.raises(FloatingPointError) as info:
        train(cfg)
    n_train = _n_train(cfg)
    order = [i for _, i in EpisodeSampler(n_train, shuffle=True, seed=321)]
    message = str(info.value)
    assert "non-finite training loss nan at global step 5 (epoch 0, batch 5, episodes " in message
    assert f"episodes {order[10:12]})" in message
    assert "last good checkpoint is kept" in message
    _assert_finite_checkpoint(tmp_path / "checkpoints" / "last.ckpt", 4, {"epoch": 0, "consumed": 4 * BATCH})
    assert not (tmp_path / "checkpoints" / "best.ckpt").exists()
    assert not (tmp_path / "metrics.json").exists()


def test_non_finite_weights_are_never_written(synthetic_pascal, tmp_path: Path) -> None:
    cfg = _tiny(synthetic_pascal, tmp_path, _callback("poison", PoisonWeight, step=4))
    with pytest.raises(
        FloatingPointError, match=r"refusing to write a checkpoint at global step 4 \(epoch 0\)"
    ):
        train(cfg)
    # last.ckpt stays at step 2 (the save of step 4 was refused before anything was written)
    _assert_finite_checkpoint(tmp_path / "checkpoints" / "last.ckpt", 2, {"epoch": 0, "consumed": 2 * BATCH})
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == ["last.ckpt"]


def test_nan_message_reaches_the_command_line_user(synthetic_pascal, tmp_path: Path) -> None:
    out = tmp_path / "run"
    args = [
        *_cli_overrides(synthetic_pascal, out),
        "trainer.max_epochs=1",
        *_callback("p", PoisonBatch, step=3),
    ]
    proc = _popen(args, tmp_path, tmp_path / "c")
    assert proc.wait(timeout=150) != 0
    err = (tmp_path / "c.err").read_text()
    assert "FloatingPointError: non-finite training loss nan at global step 3 (epoch 0, batch 3" in err, (
        _tail(tmp_path / "c")
    )
    _assert_finite_checkpoint(out / "checkpoints" / "last.ckpt", 2, {"epoch": 0, "consumed": 2 * BATCH})


# ------------------------------------------------------------------ units


@pytest.mark.parametrize("world", [1, 2, 3])
@pytest.mark.parametrize("consumed", [0, 6, 7, 30])
def test_sampler_start_skips_exactly_the_consumed_positions(world: int, consumed: int) -> None:
    n, epoch = 31, 3

    def keys(start: tuple[int, int] | None) -> list[list[tuple[int, int]]]:
        out = []
        for rank in range(world):
            s = EpisodeSampler(n, shuffle=True, seed=7, rank=rank, world_size=world, drop_last=False)
            s.set_epoch(epoch)
            if start is not None:
                s.set_start(*start)
            out.append(list(s))
        return out

    full = keys(None)
    # all-rank position p belongs to rank p % world, as the (p // world)-th key of that rank
    positions = {(p % world, p // world) for p in range(consumed, len(full[0]) * world)}
    expected = [[k for j, k in enumerate(full[r]) if (r, j) in positions] for r in range(world)]
    assert keys((epoch, consumed)) == expected
    assert keys((epoch + 1, consumed)) == full  # another epoch: untouched
    s = EpisodeSampler(n, shuffle=True, seed=7, world_size=world, drop_last=False)
    s.set_start(epoch, consumed)
    assert len(s) == len(full[0])  # Lightning's restored batch counter continues from the batches done


def test_sampler_start_refuses_positions_beyond_the_epoch() -> None:
    s = EpisodeSampler(10, shuffle=True, seed=0)
    with pytest.raises(ValueError, match="consumed=11 exceeds the 10 positions"):
        s.set_start(0, 11)
    with pytest.raises(ValueError, match="both must be >= 0"):
        s.set_start(-1, 0)


def test_step_seed_is_a_function_of_the_batch_position() -> None:
    assert step_seed(321, 1, 5) == step_seed(321, 1, 5)
    seeds = {step_seed(321, e, b, r) for e in range(2) for b in range(4) for r in range(2)}
    assert len(seeds) == 16
    assert step_seed(322, 0, 0) != step_seed(321, 0, 0)
    cb = StepSeed(321)

    class T:
        current_epoch, global_rank = 1, 0

    cb.on_train_batch_start(T(), None, None, 5)  # type: ignore[arg-type]
    a = torch.rand(3)
    torch.manual_seed(step_seed(321, 1, 5))
    assert torch.equal(a, torch.rand(3))


@pytest.mark.parametrize(("workers", "via"), [(0, "datamodule"), (2, "datamodule"), (2, "loader")])
def test_training_resumes_the_sampler_at_the_recorded_position(
    synthetic_pascal, tmp_path: Path, workers: int, via: str
) -> None:
    from svfseg.tasks.builders import build_datamodule
    from svfseg.tasks.resolve import TrainRun

    cfg = _tiny(synthetic_pascal, tmp_path, [f"dataset.num_workers={workers}"])
    dm = build_datamodule(TrainRun.from_config(cfg))
    dm.setup("fit")
    state = dm.state_dict()
    assert "train_position" not in state  # no trainer: nothing to record
    position = {"epoch": 1, "consumed": 6}
    dm.load_state_dict({**state, "train_position": position})
    loader = dm.train_dataloader()
    if via == "loader":  # Lightning then hands the loop's copy to the loader: only a consistency check
        assert loader.state_dict() == {}
        loader.load_state_dict({"train_position": position})
    sampler = loader.sampler
    assert isinstance(sampler, EpisodeSampler)
    # Lightning's order on resume: the iterator first (workers fetch their first indices at once), then
    # set_epoch; the sampler must already be in the resumed epoch.
    iterator = iter(loader)
    sampler.set_epoch(1)
    fresh = EpisodeSampler(len(dm.train_dataset()), shuffle=True, seed=321)
    fresh.set_epoch(1)
    expected = [i for _, i in fresh][6:]
    for b in range(3):
        assert next(iterator)["episode_idx"].tolist() == expected[b * BATCH : (b + 1) * BATCH]
    del iterator


def test_loader_state_without_the_datamodule_restore_is_refused(synthetic_pascal, tmp_path: Path) -> None:
    """The position is restored in one place (the DataModule); a loader that did not get it says so."""
    from svfseg.tasks.builders import build_datamodule
    from svfseg.tasks.resolve import TrainRun

    dm = build_datamodule(TrainRun.from_config(_tiny(synthetic_pascal, tmp_path, ["dataset.num_workers=0"])))
    dm.setup("fit")
    loader = dm.train_dataloader()
    loader.load_state_dict({"train_position": {"epoch": 1, "consumed": 0}})  # an epoch start: nothing to skip
    with pytest.raises(
        RuntimeError, match=r"sampler starts at None, the checkpoint's loader state says \(1, 6\)"
    ):
        loader.load_state_dict({"train_position": {"epoch": 1, "consumed": 6}})


def test_last_checkpoint_rejects_invalid_options(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"every_n_train_steps=-1 is invalid"):
        LastCheckpoint(tmp_path, every_n_train_steps=-1)
    with pytest.raises(ValueError, match=r"every_n_train_steps=2.5 is invalid"):
        LastCheckpoint(tmp_path, every_n_train_steps=2.5)  # type: ignore[arg-type]
    assert LastCheckpoint(tmp_path, every_n_train_steps=None).every_n_train_steps == 0
    with pytest.raises(ValueError, match="seed"):
        StepSeed(-1)


@pytest.mark.slow
@pytest.mark.parametrize("strategy", ["bn", "lora"])
def test_other_strategies_resume_to_the_uninterrupted_weights(
    synthetic_pascal, tmp_path: Path, strategy: str
) -> None:
    """BN in train mode (running statistics in the state) and peft's LoRA adapters (built by the callback
    before the restore) resume like SVF: killed mid-epoch, the resumed run ends with the uninterrupted run's
    weights, bit for bit, and its metrics. (Measured once for all eleven strategies; these two stand for the
    mechanisms that differ from SVF's.)"""
    ref, out, marker = tmp_path / "ref", tmp_path / "run", tmp_path / "hanging"
    proc = _popen([*_cli_overrides(synthetic_pascal, ref), f"finetune={strategy}"], tmp_path, tmp_path / "r")
    assert proc.wait(timeout=150) == 0, _tail(tmp_path / "r")
    base = [*_cli_overrides(synthetic_pascal, out), f"finetune={strategy}"]
    proc = _popen(
        [*base, *_callback("hang", HangAfterStep, step=11, marker=marker)], tmp_path, tmp_path / "a"
    )
    try:
        deadline = time.monotonic() + 150
        while not marker.exists():
            assert proc.poll() is None and time.monotonic() < deadline, _tail(tmp_path / "a")
            time.sleep(0.05)
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert _load(out / "checkpoints" / "last.ckpt")["global_step"] == 10
    proc = _popen([*base, "ckpt_path=last"], tmp_path, tmp_path / "b")
    assert proc.wait(timeout=150) == 0, _tail(tmp_path / "b")
    _assert_same_training_state(
        _load(ref / "checkpoints" / "last.ckpt"), _load(out / "checkpoints" / "last.ckpt")
    )
    assert _metric_numbers(json.loads((out / "metrics.json").read_text())) == _metric_numbers(
        json.loads((ref / "metrics.json").read_text())
    )
    assert _csv_rows(out) == _csv_rows(ref)


@pytest.mark.slow
def test_bam_stage1_killed_and_resumed_writes_the_uninterrupted_base_learner(
    synthetic_pascal, tmp_path: Path
) -> None:
    """BAM's stage 1 (it used to ignore ``ckpt_path``, and its folder was then refused): killed as soon as
    its first ``last.ckpt`` exists (mid-epoch), resumed as a requeued SLURM job is, it ends with the
    uninterrupted run's training state and writes the same base learner, bit for bit."""

    def command(out: Path) -> list[str]:
        return [
            *_cli_overrides(synthetic_pascal, out),  # deterministic, every step logged and flushed
            "stage=base",
            "method=bam",
            f"method.base_learner={out / 'pspnet.pt'}",
            "dataset.base_stage.epochs=2",
            "callbacks.last_checkpoint.every_n_train_steps=1",
        ]

    ref, out = tmp_path / "ref", tmp_path / "run"
    proc = _popen(command(ref), tmp_path, tmp_path / "r")
    assert proc.wait(timeout=150) == 0, _tail(tmp_path / "r")
    proc = _popen(command(out), tmp_path, tmp_path / "a")
    try:
        deadline = time.monotonic() + 150
        while not (out / "checkpoints" / "last.ckpt").exists():
            assert proc.poll() is None and time.monotonic() < deadline, _tail(tmp_path / "a")
            time.sleep(0.02)
        proc.send_signal(signal.SIGKILL)
        assert proc.wait(timeout=60) == -signal.SIGKILL
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    killed = _load(out / "checkpoints" / "last.ckpt")
    assert killed["global_step"] < 2 * STEPS_PER_EPOCH and not (out / "stage1.json").exists()
    proc = _popen(command(out), tmp_path, tmp_path / "b", env={"SLURM_RESTART_COUNT": "1"})
    assert proc.wait(timeout=150) == 0, _tail(tmp_path / "b")
    assert "not resumable" not in (tmp_path / "b.err").read_text()  # Lightning's mid-epoch warning

    _assert_same_training_state(
        _load(ref / "checkpoints" / "last.ckpt"), _load(out / "checkpoints" / "last.ckpt")
    )
    learner, uninterrupted = _load(out / "pspnet.pt"), _load(ref / "pspnet.pt")
    _assert_same_tree(uninterrupted["state_dict"], learner["state_dict"], "base learner")
    assert learner["meta"]["val_miou"] == uninterrupted["meta"]["val_miou"]
    assert json.loads((out / "stage1.json").read_text())["val_miou"] == learner["meta"]["val_miou"]
    assert _csv_rows(out) == _csv_rows(ref)


@pytest.mark.slow
def test_a_two_process_ddp_run_killed_and_requeued_resumes_to_the_uninterrupted_weights(
    synthetic_pascal, tmp_path: Path
) -> None:
    """The SLURM case with several ranks: both DDP processes killed mid-epoch (SIGKILL to the job's process
    group), the same command started again under a requeued job's ``SLURM_RESTART_COUNT``: every rank
    resumes its shard of the epoch, and the run ends with the uninterrupted 2-process run's weights."""
    ddp = ["trainer.accelerator=cpu", "trainer.devices=2", "trainer.strategy=ddp", "dataset.batch_size=4"]
    ref, out, marker = tmp_path / "ref", tmp_path / "run", tmp_path / "hanging"

    def start(args: list[str], log: Path, env: dict[str, str] | None = None) -> subprocess.Popen:
        return _popen(args, tmp_path, log, env, own_group=True)  # rank 1 is rank 0's child

    proc = start([*_cli_overrides(synthetic_pascal, ref), *ddp], tmp_path / "r")
    assert proc.wait(timeout=300) == 0, _tail(tmp_path / "r")
    base = [*_cli_overrides(synthetic_pascal, out), *ddp]
    proc = start([*base, *_callback("hang", HangAfterStep, step=7, marker=marker)], tmp_path / "a")
    try:
        deadline = time.monotonic() + 300
        while not marker.exists():
            assert proc.poll() is None and time.monotonic() < deadline, _tail(tmp_path / "a")
            time.sleep(0.05)
        time.sleep(1.0)  # the other rank reaches the same step (the step's all-reduce keeps them together)
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=60)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    killed = _load(out / "checkpoints" / "last.ckpt")
    assert killed["global_step"] == 6 and _train_position(killed) == {"epoch": 0, "consumed": 6 * 4}
    proc = start(base, tmp_path / "b", env={"SLURM_RESTART_COUNT": "1", "SLURM_JOB_ID": "4242"})
    assert proc.wait(timeout=300) == 0, _tail(tmp_path / "b")
    assert "not resumable" not in (tmp_path / "b.err").read_text()  # Lightning's mid-epoch warning
    _assert_same_training_state(
        _load(ref / "checkpoints" / "last.ckpt"), _load(out / "checkpoints" / "last.ckpt")
    )
    assert _metric_numbers(json.loads((out / "metrics.json").read_text())) == _metric_numbers(
        json.loads((ref / "metrics.json").read_text())
    )
    assert _csv_rows(out) == _csv_rows(ref)
