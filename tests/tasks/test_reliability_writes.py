"""Nothing lost, nothing silently overwritten: every result file is written whole or not at all.

The user cases, one test (or parameter) each:

* ``test_a_full_disk_during_a_checkpoint_save_keeps_the_previous_checkpoint``: the disk fills while
  train.py writes ``best.ckpt`` (its first save, after a complete ``last.ckpt``) or rewrites ``last.ckpt``.
  Lightning's writer used to put a truncated checkpoint under the real name (predict and resume then fail
  on it); now the previous complete checkpoint stays and loads, no checkpoint name holds a truncated file,
  no temporary file is left, and the run's error names the checkpoint.
* ``test_a_full_disk_keeps_the_previous_svf_artifact``: the same for ``best.svf.pt``.
* ``test_a_full_disk_keeps_the_previous_metrics_json``: the same for ``metrics.json`` (``write_metrics_json``).
* ``test_export_refuses_a_folder_with_other_files_and_force_replaces_a_previous_export``: ``python -m
  svfseg.inference.export`` into a folder holding a user's file is refused without ``--force`` (and with it),
  the file byte-identical; ``--force`` replaces a previous export, and a freeze export over an SVF export
  leaves no stale ``svf.pt``.
* ``test_a_failed_prediction_or_figure_write_keeps_the_previous_file``: masks, overlays,
  ``predictions.json``, plots (``save_png``) and the example-prediction grids of the CSV logger.

The full disk is a real one where the test may mount a small tmpfs (root with CAP_SYS_ADMIN): writes
stop part-way with ENOSPC. Elsewhere (or with ``SVFSEG_TEST_SIMULATED_DISK=1``) a simulated disk stands in: ``open`` of a file
under it returns a file that writes the bytes that still fit, then raises ENOSPC. (Only the real disk
shows the old failure of Lightning's writer, which wrote the checkpoint in the system's temp folder and
copied it over the old file.)
"""

from __future__ import annotations

import builtins
import errno
import io
import json
import os
import shutil
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest
import pytorch_lightning as pl
import torch
from matplotlib.figure import Figure
from pytorch_lightning.loggers import CSVLogger

import svfseg.tasks.train as train_task
from svfseg.analysis.png import save_png
from svfseg.inference.export import main as export_main
from svfseg.inference.outputs import PredictionWriter
from svfseg.inference.predictor import Prediction
from svfseg.lightning.checkpointing import write_svf_artifact
from svfseg.lightning.media import ExamplePredictionLogger
from svfseg.lightning.module import FewShotSegModule
from svfseg.svf import svf_layers
from svfseg.tasks.reporting import write_metrics_json
from svfseg.tasks.train import train
from tests.helpers.hydra import tiny_train_config

DISK_SIZE = 16 << 20  # the small disk: room for the run's checkpoints, until it is filled
FREE_AFTER_FILL = 1 << 20  # what another writer leaves free: less than one tiny checkpoint (2.7 MB)
GROWTH = 2 << 20  # the checkpoint saved after the fill is this much larger (a callback's growing state)


# ------------------------------------------------------------------------------------------ the disk
class TmpfsDisk:
    """A real tmpfs of ``DISK_SIZE`` bytes; ``fill(free)`` writes a filler file until ``free`` bytes are left."""

    real = True

    def __init__(self, path: Path) -> None:
        self.path = path

    def free(self) -> int:
        stat = os.statvfs(self.path)
        return stat.f_bavail * stat.f_frsize

    def fill(self, leave: int) -> None:
        with (self.path / f"filler-{uuid.uuid4().hex}").open("wb") as fh:
            remaining = self.free() - leave
            while remaining > 0:
                fh.write(b"\0" * min(remaining, 1 << 20))
                remaining -= 1 << 20
        assert self.free() <= leave


class _FullDiskFile(io.RawIOBase):
    """A file on :class:`SimulatedDisk`: writes what still fits, then raises ENOSPC (as a full disk does)."""

    def __init__(self, raw: io.FileIO, disk: SimulatedDisk) -> None:
        self.raw, self.disk = raw, disk

    def writable(self) -> bool:
        return True

    def readable(self) -> bool:
        return self.raw.readable()

    def seekable(self) -> bool:
        return self.raw.seekable()

    def seek(self, offset: int, whence: int = 0) -> int:
        return self.raw.seek(offset, whence)

    def tell(self) -> int:
        return self.raw.tell()

    def readinto(self, buffer: Any) -> int:
        return self.raw.readinto(buffer)

    def fileno(self) -> int:
        return self.raw.fileno()

    def write(self, data: Any) -> int:
        data = memoryview(data).cast("B")
        fits = len(data) if self.disk.capacity is None else min(len(data), self.disk.capacity)
        written = self.raw.write(data[:fits]) or 0
        if self.disk.capacity is not None:
            self.disk.capacity -= written
        if written < len(data):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return written

    def close(self) -> None:
        self.raw.close()
        super().close()


class SimulatedDisk:
    """Where mounting is not permitted: ``open`` of a file under ``path`` returns a :class:`_FullDiskFile`."""

    real = False

    def __init__(self, path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
        self.path = path
        self.capacity: int | None = None  # unlimited until filled
        original = builtins.open

        def patched_open(file: Any, mode: str = "r", buffering: int = -1, *args: Any, **kwargs: Any) -> Any:
            inside = isinstance(file, (str, Path)) and Path(os.path.abspath(file)).is_relative_to(self.path)
            if not inside or not any(c in mode for c in "wax+"):
                return original(file, mode, buffering, *args, **kwargs)
            raw = original(file, mode.replace("t", "") + ("b" if "b" not in mode else ""), buffering=0)
            limited = io.BufferedWriter(_FullDiskFile(raw, self))
            if "b" in mode:
                return limited
            return io.TextIOWrapper(limited, encoding=kwargs.get("encoding"), newline=kwargs.get("newline"))

        monkeypatch.setattr(builtins, "open", patched_open)
        monkeypatch.setattr(io, "open", patched_open)

    def fill(self, leave: int) -> None:
        self.capacity = leave


def _can_mount(path: Path) -> bool:
    if os.environ.get("SVFSEG_TEST_SIMULATED_DISK") or shutil.which("mount") is None:
        return False
    result = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={DISK_SIZE}", "tmpfs", str(path)], capture_output=True
    )
    return result.returncode == 0


@pytest.fixture
def disk(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[TmpfsDisk | SimulatedDisk]:
    """A small disk that a test can fill: a real tmpfs where mounting works, else a simulated one."""
    path = tmp_path / "disk"
    path.mkdir()
    if _can_mount(path):
        try:
            yield TmpfsDisk(path)
        finally:
            if subprocess.run(["umount", str(path)], capture_output=True).returncode != 0:
                subprocess.run(["umount", "-l", str(path)], capture_output=True)
    else:
        yield SimulatedDisk(path, monkeypatch)


def _assert_no_temp_files(folder: Path) -> None:
    leftovers = [p.name for p in folder.rglob(".*") if p.name.endswith(".tmp")]
    assert not leftovers, leftovers


# ------------------------------------------------------------------------------------------ checkpoints
class FillDiskAt(pl.Callback):
    """Before the ``at``-th checkpoint save, another writer fills the disk to ``leave`` free bytes; from
    then on every checkpoint is ``GROWTH`` bytes larger (a callback whose state grows)."""

    def __init__(self, disk: TmpfsDisk | SimulatedDisk, at: int) -> None:
        self.disk, self.at, self.saves = disk, at, 0

    def on_save_checkpoint(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, checkpoint: dict[str, Any]
    ) -> None:
        self.saves += 1
        if self.saves >= self.at:
            checkpoint["test_growing_state"] = torch.ones(GROWTH // 4)
        if self.saves == self.at:
            self.disk.fill(FREE_AFTER_FILL)


def _tiny_cfg(synthetic_pascal: Any, out: Path, extra: list[str]) -> Any:
    root, min_pixels = synthetic_pascal
    return tiny_train_config(
        root,
        out,
        min_pixels=min_pixels,
        extra=[
            "trainer.max_epochs=1",
            "test_after_fit=false",
            "callbacks.example_predictions=null",
            "callbacks.sv_change=null",
            *extra,
        ],
    )


@pytest.mark.parametrize(
    ("at", "failing", "kept"),
    [
        # saves: last.ckpt at step 2, best.ckpt (+ best.svf.pt) after validation, last.ckpt at the epoch end
        (2, "best.ckpt", {"last.ckpt": 2}),
        (3, "last.ckpt", {"last.ckpt": 2, "best.ckpt": 4}),
    ],
    ids=["first-best-save", "last-rewrite"],
)
def test_a_full_disk_during_a_checkpoint_save_keeps_the_previous_checkpoint(
    synthetic_pascal: Any,
    tmp_path: Path,
    disk: TmpfsDisk | SimulatedDisk,
    at: int,
    failing: str,
    kept: dict[str, int],
) -> None:
    checkpoints = disk.path / "checkpoints"
    cfg = _tiny_cfg(
        synthetic_pascal,
        tmp_path / "run",
        [
            "finetune=svf",
            f"callbacks.model_checkpoint.dirpath={checkpoints}",
            f"callbacks.last_checkpoint.dirpath={checkpoints}",
            "callbacks.last_checkpoint.every_n_train_steps=2",
        ],
    )
    filler = FillDiskAt(disk, at)
    build_callbacks = train_task.build_callbacks

    def with_filler(*args: Any, **kwargs: Any) -> list[pl.Callback]:
        return [*build_callbacks(*args, **kwargs), filler]

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(train_task, "build_callbacks", with_filler)
        with pytest.raises(OSError) as info:
            train(cfg)
    assert filler.saves == at and info.value.errno == errno.ENOSPC
    # the previous complete checkpoints are there and load; nothing under a checkpoint name is truncated
    names = {p.name for p in checkpoints.iterdir() if not p.name.startswith("filler-")}
    expected = set(kept) | ({"best.svf.pt"} if "best.ckpt" in kept else set())
    assert names == expected, names
    for name, step in kept.items():
        state = torch.load(checkpoints / name, map_location="cpu", weights_only=True)
        assert state["global_step"] == step and "test_growing_state" not in state, name
    if "best.ckpt" in kept:
        torch.load(checkpoints / "best.svf.pt", weights_only=True)
    _assert_no_temp_files(checkpoints)
    assert f"could not write {checkpoints / failing}: " in str(info.value)
    assert "the previous file, if any, is kept" in str(info.value)


@pytest.fixture(scope="module")
def runs(synthetic_pascal: Any, tmp_path_factory: pytest.TempPathFactory) -> SimpleNamespace:
    """A complete tiny SVF run and a tiny freeze run (best.ckpt of each)."""
    found = {}
    for finetune in ("svf", "freeze"):
        out = tmp_path_factory.mktemp(f"run_{finetune}")
        train(_tiny_cfg(synthetic_pascal, out, [f"finetune={finetune}"]))
        found[finetune] = next(out.rglob("best.ckpt"))
    return SimpleNamespace(**found)


def test_a_full_disk_keeps_the_previous_svf_artifact(
    runs: SimpleNamespace, disk: TmpfsDisk | SimulatedDisk
) -> None:
    module = FewShotSegModule.load_from_checkpoint(
        runs.svf, map_location="cpu", weights_only=True, strict=True, load_pretrained=False
    )
    ckpt = disk.path / "best.ckpt"
    artifact = write_svf_artifact(module, ckpt)
    assert artifact == disk.path / "best.svf.pt"
    before = artifact.read_bytes()
    with torch.no_grad():  # a later, better epoch: other singular values
        for _, layer in svf_layers(module.model.backbone):
            for p in layer.parameters():
                p.add_(0.5)
    disk.fill(len(before) // 2)
    with pytest.raises(OSError, match=f"could not write {artifact}: ") as info:
        write_svf_artifact(module, ckpt)
    assert info.value.errno == errno.ENOSPC
    assert artifact.read_bytes() == before
    torch.load(artifact, weights_only=True)
    _assert_no_temp_files(disk.path)


def test_a_full_disk_keeps_the_previous_metrics_json(disk: TmpfsDisk | SimulatedDisk) -> None:
    path = disk.path / "metrics.json"
    first = {"miou": 0.5, "per_seed": {"0": {"miou": 0.5}}}
    assert write_metrics_json(path, first) == path
    assert json.loads(path.read_text()) == first
    disk.fill(1024)
    bigger = {"miou": 0.6, "per_seed": {str(s): {"miou": 0.6, "note": "x" * 100} for s in range(200)}}
    with pytest.raises(OSError, match=f"could not write {path}: ") as info:
        write_metrics_json(path, bigger)
    assert info.value.errno == errno.ENOSPC
    assert json.loads(path.read_text()) == first
    _assert_no_temp_files(disk.path)


# ------------------------------------------------------------------------------------------ export
def _export(ckpt: Path, out: Path, *extra: str) -> int:
    return export_main([str(ckpt), "--out", str(out), *extra])


def test_export_refuses_a_folder_with_other_files_and_force_replaces_a_previous_export(
    runs: SimpleNamespace, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # a folder with the user's own file: refused, with and without --force; the file is untouched
    mine = tmp_path / "mine"
    mine.mkdir()
    notes = mine / "notes.txt"
    notes.write_bytes(b"my notes\n")
    assert _export(runs.svf, mine) == 2
    err = capsys.readouterr().err
    assert f"--out {mine} is not empty (notes.txt)" in err and "--force" in err
    assert _export(runs.svf, mine, "--force") == 2
    err = capsys.readouterr().err
    assert f"--out {mine} holds files that are not a previous export's: notes.txt" in err
    assert sorted(p.name for p in mine.iterdir()) == ["notes.txt"]
    assert notes.read_bytes() == b"my notes\n"

    # an SVF export, then a freeze export over it: refused without --force, replaced whole with it
    out = tmp_path / "export"
    assert _export(runs.svf, out) == 0
    assert sorted(p.name for p in out.iterdir()) == ["model.pt", "run.json", "svf.pt"]
    svf_model = (out / "model.pt").read_bytes()
    capsys.readouterr()
    assert _export(runs.freeze, out) == 2
    assert "is not empty (model.pt, run.json, svf.pt)" in capsys.readouterr().err
    assert (out / "model.pt").read_bytes() == svf_model
    assert _export(runs.freeze, out, "--force") == 0
    assert sorted(p.name for p in out.iterdir()) == ["model.pt", "run.json"]  # no stale svf.pt
    record = json.loads((out / "run.json").read_text())
    assert record["files"] == {"model": "model.pt"} and record["run"]["finetune"]["name"] == "freeze"
    assert (out / "model.pt").read_bytes() != svf_model

    # a previous export's folder with a foreign file in it is refused even with --force
    (out / "README.md").write_text("mine")
    assert _export(runs.svf, out, "--force") == 2
    assert "README.md" in capsys.readouterr().err
    assert sorted(p.name for p in out.iterdir()) == ["README.md", "model.pt", "run.json"]


# ------------------------------------------------------------------------------------------ predictions, figures
def _figure(seed: int, inches: float, pixels: int) -> Figure:
    """A heatmap of ``pixels`` x ``pixels`` random values: more pixels, a larger PNG."""
    fig = Figure(figsize=(inches, inches))
    fig.add_subplot().imshow(np.random.default_rng(seed).random((pixels, pixels)), interpolation="nearest")
    return fig


def test_a_failed_prediction_or_figure_write_keeps_the_previous_file(
    disk: TmpfsDisk | SimulatedDisk,
) -> None:
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (120, 160, 3), dtype=np.uint8)
    query = Path("query.jpg")

    def prediction(fraction: float) -> Prediction:
        mask = (rng.random((120, 160)) < fraction).astype(np.uint8)
        return Prediction(path=query, image=image, mask=mask)

    writer = PredictionWriter(disk.path / "pred", [query])
    writer.write(prediction(0.2))
    writer.finish([], {"checkpoint": "x"})
    plot = save_png(_figure(0, 2, 4), disk.path / "plot.png")
    grids = ExamplePredictionLogger(n_examples=1, dirpath=str(disk.path / "grids"))
    trainer = SimpleNamespace(
        loggers=[CSVLogger(str(disk.path / "logs"))], global_step=1, current_epoch=0, default_root_dir="."
    )
    grids.log_grid(trainer, rng.integers(0, 256, (32, 48, 3), dtype=np.uint8), "epoch 0")
    grid = grids.png_path(trainer)
    files = [disk.path / "pred" / "masks" / "query.png", disk.path / "pred" / "overlays" / "query.png"]
    files += [disk.path / "pred" / "predictions.json", plot, grid]
    before = {path: path.read_bytes() for path in files}

    # the disk fills; each new file is larger than the old one and the space left
    disk.fill(0)
    errors = []
    for write in (
        lambda: writer.write(prediction(0.6)),
        lambda: writer.finish([], {"checkpoint": "y" * 100_000}),
        lambda: save_png(_figure(1, 6, 500), plot),
    ):
        with pytest.raises(OSError) as info:
            write()
        errors.append(str(info.value))
    big_grid = rng.integers(0, 256, (256, 384, 3), dtype=np.uint8)
    grids.log_grid(trainer, big_grid, "epoch 0 again")  # a failed grid only warns: the run goes on
    for path, content in before.items():
        assert path.read_bytes() == content, path
    _assert_no_temp_files(disk.path)
    assert "could not write " + str(files[0]) + ": " in errors[0]
    assert "could not write " + str(files[2]) + ": " in errors[1]
    assert "could not write " + str(plot) + ": " in errors[2]
