"""Issue 20 (inputs checked where they enter, each message naming the real cause): one test per user case.

1. eval.py ``seeds=[]`` (StatisticsError), ``seeds=abc`` (iterated characters), ``seeds=[5,5]`` (recorded
   twice), ``n_episodes=0`` / ``eval_batch_size=0`` (passed the start-up checks); train.py
   ``dataset.n_episodes=0`` and ``dataset.eval_seeds=[]`` / repeats:
   ``test_eval_cli_refuses_bad_seeds_and_counts_at_start``, ``test_eval_seed_forms``,
   ``test_train_config_refuses_no_episodes_and_bad_eval_seeds``.
2. eval.py ``ckpt_path=<run dir>`` said "does not exist" while predict.py accepts run directories:
   ``test_eval_cli_accepts_a_run_directory``, ``test_a_folder_without_checkpoint_names_what_was_looked_for``.
3. ``best.svf.pt`` given as a checkpoint was said to be written by eval.py:
   ``test_the_svf_artifact_is_named_and_the_checkpoint_beside_it_given``.
4. ``SVFSEG_DATA`` set to a file got a fix that cannot work: ``test_svfseg_data_pointing_to_a_file``.
5. predict.py ``support_class=255`` made the ignore band the foreground:
   ``test_support_class_outside_the_class_ids_is_refused``.
6. EXIF orientation ignored (a sideways phone support refused by size, a query's mask written rotated):
   ``test_images_are_read_at_their_exif_orientation_labels_as_stored``,
   ``test_predict_uses_the_displayed_orientation_of_supports_and_queries``,
   ``test_a_support_mask_made_on_the_stored_pixels_names_exif``.
7. predict.py on a huge query (5.95 GB for 10000 x 10000): ``test_banded_mask_equals_the_full_resolution_mask``,
   ``test_integer_overlay_equals_the_float_formula``, ``test_predict_peak_memory_on_a_large_query``.
8. ``python -m svfseg.tables`` with a NaN ``miou`` (AttributeError) and a fold outside the layout (counted in
   the header, dropped from the cells): ``test_tables_report_and_exclude_nan_and_out_of_layout_runs``.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image, ImageOps

from svfseg.config_checks import ConfigError, check_train_config, eval_seeds
from svfseg.data.io import image_size, read_image, read_label
from svfseg.inference import PredictInputError, resolve_checkpoint
from svfseg.inference.outputs import overlay
from svfseg.metrics.original_size import binary_mask_at_original_size, mask_at_original_size
from svfseg.tables import main as tables_main
from svfseg.tasks.builders import build_datamodule
from svfseg.tasks.evaluate import check_eval_config
from svfseg.tasks.predict import predict
from svfseg.tasks.resolve import TrainRun
from svfseg.tasks.train import train
from tests.helpers.cli import LAUNCH_VARIABLES, REPO, run_cli
from tests.helpers.hydra import compose_config, tiny_train_config

N_EPISODES = 4


@pytest.fixture(scope="module")
def run(synthetic_pascal: Any, tmp_path_factory: pytest.TempPathFactory) -> SimpleNamespace:
    """A tiny SVF baseline run (one epoch): its run directory holds checkpoints/best.ckpt and best.svf.pt."""
    root, min_pixels = synthetic_pascal
    out = tmp_path_factory.mktemp("reliability_run")
    cfg = tiny_train_config(
        root, out, min_pixels=min_pixels, extra=["trainer.max_epochs=1", f"dataset.n_episodes={N_EPISODES}"]
    )
    train(cfg)
    ckpt = out / "checkpoints" / "best.ckpt"
    assert ckpt.is_file() and (out / "checkpoints" / "best.svf.pt").is_file()
    val = sorted((Path(root) / "JPEGImages").glob("val_*.jpg"))[0]
    return SimpleNamespace(
        root=Path(root),
        dir=out,
        ckpt=ckpt,
        image=val,
        label=Path(root) / "SegmentationClassAug" / f"{val.stem}.png",
    )


def _eval_cli(args: list[str], cwd: Path) -> subprocess.CompletedProcess:
    return run_cli(
        [str(REPO / "eval.py"), "num_workers=0", "+trainer.enable_progress_bar=false", *args],
        cwd,
        timeout=300,
        ok=False,
    )


# ----------------------------------------------------------------------------------------- case 1
def test_eval_cli_refuses_bad_seeds_and_counts_at_start(run: SimpleNamespace, tmp_path: Path) -> None:
    out = tmp_path / "eval"
    proc = _eval_cli(
        [f"ckpt_path={run.ckpt}", "seeds=abc", "n_episodes=0", "eval_batch_size=0", f"hydra.run.dir={out}"],
        tmp_path,
    )
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert "eval.py: 3 problems in the config, nothing was run:" in proc.stderr
    assert "seeds='abc' is invalid: give a list of integer seeds, e.g. seeds=[321,510]" in proc.stderr
    assert "n_episodes=0 is invalid: the episode count per seed is an integer >= 1" in proc.stderr
    assert "eval_batch_size=0 is invalid" in proc.stderr
    assert "Traceback" not in proc.stderr and not (out / "metrics.json").exists()


def test_eval_cli_refuses_another_runs_fold_at_start_beside_other_problems(
    run: SimpleNamespace, tmp_path: Path
) -> None:
    """A fold/shot override that does not match the checkpoint used to end in a traceback after the checks."""
    out = tmp_path / "eval"
    proc = _eval_cli([f"ckpt_path={run.ckpt}", "fold=2", "n_episodes=0", f"hydra.run.dir={out}"], tmp_path)
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert "eval.py: 2 problems in the config, nothing was run:" in proc.stderr
    assert "the checkpoint was trained for fold=0 but the command asks for fold=2" in proc.stderr
    assert "n_episodes=0 is invalid" in proc.stderr
    assert "Traceback" not in proc.stderr and not out.exists()


@pytest.mark.parametrize(
    ("seeds", "expected"),
    [
        ("seeds=[]", r"seeds=\[\] is invalid: give at least one evaluation seed"),
        ("seeds=[5,5]", r"seeds=\[5, 5\] repeats \[5\]: each seed is one episode table.*use seeds=\[5\]"),
        ("seeds=[1,x]", r"seeds=\[1, 'x'\] is invalid: \['x'\] is not an integer >= 0"),
    ],
)
def test_eval_seed_forms(run: SimpleNamespace, tmp_path: Path, seeds: str, expected: str) -> None:
    cfg = compose_config("eval", [f"ckpt_path={run.ckpt}", seeds, f"paths.output_dir={tmp_path}"])
    with pytest.raises(ConfigError, match=expected):
        check_eval_config(cfg)
    assert eval_seeds(5, "seeds") == [5] and eval_seeds([3, 1], "seeds") == [3, 1]


def test_eval_refuses_a_strategy_that_runs_ranks_in_child_processes(
    run: SimpleNamespace, tmp_path: Path
) -> None:
    """eval.py with ddp_spawn used to end in a KeyError: the spawned ranks' metrics never came back."""
    overrides = ["trainer.accelerator=cpu", "trainer.devices=2", "trainer.strategy=ddp_spawn"]
    cfg = compose_config("eval", [f"ckpt_path={run.ckpt}", f"paths.output_dir={tmp_path / 'e'}", *overrides])
    with pytest.raises(ConfigError, match=r"^trainer\.strategy=ddp_spawn runs every rank in a child process"):
        check_eval_config(cfg)
    assert not (tmp_path / "e").exists()


def test_eval_refuses_a_missing_dataset_root_at_start(run: SimpleNamespace, tmp_path: Path) -> None:
    """The data is read when the test starts: a missing root ended in a traceback after the model was
    loaded. Now it is a start-up problem with the command that makes the dataset."""
    out = tmp_path / "e"
    cfg = compose_config(
        "eval", [f"ckpt_path={run.ckpt}", f"paths.output_dir={out}", "dataset_root=/nowhere/x"]
    )
    with pytest.raises(
        ConfigError, match=r"^dataset root /nowhere/x \(dataset=synthetic\) does not exist; create it with: "
    ):
        check_eval_config(cfg)
    assert not out.exists()


@pytest.mark.parametrize(
    ("overrides", "expected"),
    [
        (["trainer.accelerator=cpu", "trainer.devices=0"], r"^trainer\.devices=0 is invalid for trainer\."),
        (
            ["trainer.num_nodes=2"],
            r"^trainer\.num_nodes=2 asks for 2 machines, but no launcher started this process on several",
        ),
        pytest.param(
            ["trainer=gpu"],
            r"^trainer\.accelerator=gpu but no CUDA device is visible on this machine; run on CPU",
            marks=pytest.mark.skipif(
                torch.cuda.is_available(), reason="a GPU is visible: trainer=gpu is valid"
            ),
        ),
    ],
)
def test_eval_refuses_a_trainer_that_cannot_start_here(
    run: SimpleNamespace,
    tmp_path: Path,
    overrides: list[str],
    expected: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """eval.py with ``trainer.devices=0``, or ``trainer=gpu`` on a machine without CUDA, used to stop in
    Lightning's Trainer with a traceback (train.py already refused the second); ``trainer.num_nodes=2``
    on a process no multi-machine launcher started waited 30 minutes for the other machine."""
    for var in LAUNCH_VARIABLES:  # this process as a plain command line starts it
        monkeypatch.delenv(var, raising=False)
    cfg = compose_config("eval", [f"ckpt_path={run.ckpt}", f"paths.output_dir={tmp_path / 'e'}", *overrides])
    with pytest.raises(ConfigError, match=expected):
        check_eval_config(cfg)
    assert not (tmp_path / "e").exists()


@pytest.mark.parametrize(
    ("override", "expected"),
    [
        (
            "dataset.n_episodes=0",
            r"dataset\.n_episodes=0 is invalid: the episode count per seed is an integer",
        ),
        ("dataset.eval_seeds=[]", r"dataset\.eval_seeds=\[\] is invalid: give at least one evaluation seed"),
        ("dataset.eval_seeds=[321,321]", r"dataset\.eval_seeds=\[321, 321\] repeats \[321\]"),
    ],
)
def test_train_config_refuses_no_episodes_and_bad_eval_seeds(
    synthetic_pascal: Any, tmp_path: Path, override: str, expected: str
) -> None:
    root, min_pixels = synthetic_pascal
    cfg = tiny_train_config(root, tmp_path / "out", min_pixels=min_pixels, extra=[override])
    with pytest.raises(ConfigError, match=expected):
        check_train_config(cfg)
    assert not (tmp_path / "out").exists()


# ----------------------------------------------------------------------------------------- case 2
def test_eval_cli_accepts_a_run_directory(run: SimpleNamespace, tmp_path: Path) -> None:
    out = tmp_path / "eval"
    proc = _eval_cli([f"ckpt_path={run.dir}", f"n_episodes={N_EPISODES}", f"hydra.run.dir={out}"], tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    record = json.loads((out / "metrics.json").read_text())
    assert record["checkpoint"] == str(run.ckpt) and record["n_episodes"] == N_EPISODES


def test_a_folder_without_checkpoint_names_what_was_looked_for(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError) as info:
        resolve_checkpoint(tmp_path)
    message = str(info.value)
    assert f"ckpt_path={tmp_path} is a folder without a checkpoint" in message
    assert "checkpoints/best.ckpt, checkpoints/last.ckpt, best.ckpt, last.ckpt" in message
    cfg = compose_config("eval", [f"ckpt_path={tmp_path}", f"paths.output_dir={tmp_path / 'o'}"])
    with pytest.raises(ConfigError, match=r"looked for checkpoints/best\.ckpt"):
        check_eval_config(cfg)


# ----------------------------------------------------------------------------------------- case 3
def test_the_svf_artifact_is_named_and_the_checkpoint_beside_it_given(
    run: SimpleNamespace, tmp_path: Path
) -> None:
    artifact = run.dir / "checkpoints" / "best.svf.pt"
    cfg = compose_config("eval", [f"ckpt_path={artifact}", f"paths.output_dir={tmp_path / 'eval'}"])
    with pytest.raises(ConfigError) as info:
        check_eval_config(cfg)
    for text in ("is the small SVF artifact", f"ckpt_path={run.ckpt}", "docs/svf-api.md"):
        assert text in str(info.value)
    assert "written by" not in str(info.value)
    out = tmp_path / "predict"
    cfg = compose_config(
        "predict",
        [
            f"ckpt_path={artifact}",
            f"support=[{run.image}]",
            f"support_masks=[{run.label}]",
            f"query={run.image}",
            f"paths.output_dir={out}",
            "progress=false",
        ],
    )
    with pytest.raises(ValueError, match=r"is the small SVF artifact .* pass the checkpoint next to it"):
        predict(cfg)
    assert not out.exists()


# ----------------------------------------------------------------------------------------- case 4
def test_svfseg_data_pointing_to_a_file(
    synthetic_pascal: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    data_file = tmp_path / "datasets.tar"
    data_file.write_text("not a folder")
    monkeypatch.setenv("SVFSEG_DATA", str(data_file))
    _, min_pixels = synthetic_pascal
    cfg = compose_config(
        "train",
        [
            "dataset=synthetic",
            "debug=tiny",
            f"dataset.min_pixels={min_pixels}",
            f"paths.output_dir={tmp_path}",
        ],
    )
    with pytest.raises(FileNotFoundError) as info:
        build_datamodule(TrainRun.from_config(cfg)).setup("fit")
    message = str(info.value)
    assert f"SVFSEG_DATA={data_file} points to a file, but it must name a folder" in message
    assert "create it with" not in message


# ----------------------------------------------------------------------------------------- case 5
@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("255", r"support_class=255 is the ignore label \(255: object borders, not a class\)"),
        ("0", r"support_class=0 is the background: give the class id of the object .*\(1\.\.254\)"),
        ("300", r"support_class=300 is outside the class ids"),
        ("cat", r"support_class='cat' is invalid: give the integer class id"),
    ],
)
def test_support_class_outside_the_class_ids_is_refused(
    run: SimpleNamespace, tmp_path: Path, value: str, expected: str
) -> None:
    out = tmp_path / "out"
    cfg = compose_config(
        "predict",
        [
            f"ckpt_path={run.ckpt}",
            f"support=[{run.image}]",
            f"support_masks=[{run.label}]",
            f"support_class={value}",
            f"query={run.image}",
            f"paths.output_dir={out}",
            "progress=false",
        ],
    )
    with pytest.raises(PredictInputError, match=expected):
        predict(cfg)
    assert not out.exists()


# ----------------------------------------------------------------------------------------- case 6
def _save_with_orientation(array: np.ndarray, path: Path, orientation: int) -> Path:
    image = Image.fromarray(array)
    exif = image.getexif()
    exif[0x0112] = orientation
    image.save(path, exif=exif, quality=95)
    return path


def _displayed(path: Path) -> np.ndarray:
    with Image.open(path) as image:
        return np.array(ImageOps.exif_transpose(image).convert("RGB"))


def test_images_are_read_at_their_exif_orientation_labels_as_stored(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    stored = np.repeat(np.repeat(rng.integers(0, 256, (15, 25, 3), dtype=np.uint8), 4, 0), 4, 1)  # 60 x 100
    for orientation in range(1, 9):
        path = _save_with_orientation(stored, tmp_path / f"photo{orientation}.jpg", orientation)
        expected = _displayed(path)
        assert expected.shape[:2] == ((100, 60) if orientation >= 5 else (60, 100))
        np.testing.assert_array_equal(read_image(path), expected, err_msg=f"orientation {orientation}")
        assert image_size(path) == expected.shape[:2]
    label = np.zeros((60, 100), np.uint8)
    label[:10, :20] = 1
    Image.fromarray(label).save(tmp_path / "plain.png")  # a label PNG without EXIF: read as stored
    np.testing.assert_array_equal(read_label(tmp_path / "plain.png", 20), label)
    _save_with_orientation(label, tmp_path / "tagged.png", 6)  # one that carries the tag is turned too
    np.testing.assert_array_equal(read_label(tmp_path / "tagged.png", 20), np.rot90(label, -1))


def test_predict_uses_the_displayed_orientation_of_supports_and_queries(
    run: SimpleNamespace, tmp_path: Path
) -> None:
    upright_image = np.array(Image.open(run.image).convert("RGB"))[:, :80]  # non-square: 96 x 80
    upright_label = np.array(Image.open(run.label))[:, :80]
    class_id = int(next(v for v in np.unique(upright_label) if v not in (0, 255)))
    # A phone photo: pixels stored turned 90 degrees counter-clockwise, Orientation 6 turns them back.
    support = _save_with_orientation(np.rot90(upright_image, 1).copy(), tmp_path / "support.jpg", 6)
    upright_support = tmp_path / "support_upright.png"
    Image.fromarray(_displayed(support)).save(upright_support)
    Image.fromarray(upright_label).save(tmp_path / "support_mask.png")  # drawn on the displayed photo
    query = _save_with_orientation(np.rot90(upright_image, 1).copy(), tmp_path / "query.jpg", 6)
    upright_query = tmp_path / "query_upright.png"
    Image.fromarray(_displayed(query)).save(upright_query)

    def masks(support_image: Path, query_image: Path, out: Path) -> np.ndarray:
        cfg = compose_config(
            "predict",
            [
                f"ckpt_path={run.ckpt}",
                f"support=[{support_image}]",
                f"support_masks=[{tmp_path / 'support_mask.png'}]",
                f"support_class={class_id}",
                f"query={query_image}",
                f"paths.output_dir={out}",
                "progress=false",
            ],
        )
        predict(cfg)
        return np.array(Image.open(out / "masks" / f"{query_image.stem}.png"))

    tagged = masks(support, query, tmp_path / "tagged")
    upright = masks(upright_support, upright_query, tmp_path / "upright")
    assert tagged.shape == _displayed(query).shape[:2] == (96, 80)
    np.testing.assert_array_equal(tagged, upright)


def test_a_support_mask_made_on_the_stored_pixels_names_exif(run: SimpleNamespace, tmp_path: Path) -> None:
    stored = np.array(Image.open(run.image).convert("RGB"))[:, :80]
    support = _save_with_orientation(stored, tmp_path / "support.jpg", 6)
    label = np.array(Image.open(run.label))[:, :80]
    Image.fromarray(label).save(tmp_path / "stored_mask.png")
    out = tmp_path / "out"
    cfg = compose_config(
        "predict",
        [
            f"ckpt_path={run.ckpt}",
            f"support=[{support}]",
            f"support_masks=[{tmp_path / 'stored_mask.png'}]",
            f"query={run.image}",
            f"paths.output_dir={out}",
            "progress=false",
        ],
    )
    with pytest.raises(
        PredictInputError, match=r"is 80x96 \(WxH\) but its image .* is 96x80 \(the image carries an EXIF"
    ):
        predict(cfg)
    assert not out.exists()


# ----------------------------------------------------------------------------------------- case 7
@pytest.mark.parametrize(("height", "width", "side"), [(1234, 987, 65), (300, 2600, 97), (2049, 2050, 8)])
def test_banded_mask_equals_the_full_resolution_mask(height: int, width: int, side: int) -> None:
    torch.manual_seed(height)
    for logits in (torch.randn(2, side, side), torch.randint(0, 3, (2, side, side)).float() * 0.3):  # ties
        full = mask_at_original_size(logits, height, width).to(torch.uint8).numpy()
        for rows in (1, 37, 256):
            banded = binary_mask_at_original_size(logits, height, width, rows_per_band=rows)
            np.testing.assert_array_equal(banded, full)
        np.testing.assert_array_equal(binary_mask_at_original_size(logits, height, width), full)


def test_integer_overlay_equals_the_float_formula() -> None:
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (600, 300, 3), dtype=np.uint8)
    mask = (rng.random((600, 300)) > 0.5).astype(np.uint8)
    expected = image.astype(np.float32)
    fg = mask.astype(bool)
    expected[fg] = 0.5 * expected[fg] + 0.5 * np.array([255, 40, 40], np.float32)
    expected = expected.round().astype(np.uint8)
    got = overlay(image, np.zeros_like(mask))  # no outline: compare the tint alone
    np.testing.assert_array_equal(got, image)
    import cv2

    outline = np.zeros_like(image)
    contours, _ = cv2.findContours(mask, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE)
    cv2.drawContours(outline, contours, -1, (255, 255, 0), 2)
    drawn = outline.any(axis=2)
    np.testing.assert_array_equal(overlay(image, mask)[~drawn], expected[~drawn])


# Peak memory of predict.py's own work (ru_maxrss after minus before) for one 6000 x 6000 JPEG query on
# the tiny checkpoint, measured on a 2-core CPU: 1.68 GB before the banded mask and integer overlay,
# 0.52 GB after (docs/predict.md). The bound leaves room for allocator noise.
PEAK_BOUND_MB = 900
MEASURE = """
import json, resource, sys
from hydra import compose, initialize_config_dir
conf, ckpt, image, label, query, out = sys.argv[1:]
with initialize_config_dir(config_dir=conf, version_base="1.3"):
    cfg = compose("predict", [f"ckpt_path={ckpt}", f"support=[{image}]", f"support_masks=[{label}]",
                              f"query={query}", f"paths.output_dir={out}", "progress=false", "device=cpu"])
from svfseg.tasks.predict import predict
predict(cfg)  # a first, small run loads every module and the model
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
with initialize_config_dir(config_dir=conf, version_base="1.3"):
    cfg = compose("predict", [f"ckpt_path={ckpt}", f"support=[{image}]", f"support_masks=[{label}]",
                              f"query={query.replace('small', 'large')}", f"paths.output_dir={out}2",
                              "progress=false", "device=cpu"])
predict(cfg)
print(json.dumps({"peak_mb": (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024}))
"""


def _smooth_photo(side: int) -> np.ndarray:
    ramp = np.linspace(0, 255, side, dtype=np.float32).astype(np.uint8)
    image = np.empty((side, side, 3), np.uint8)
    image[..., 0] = ramp[:, None]
    image[..., 1] = ramp[None, :]
    image[..., 2] = 128
    return image


def test_predict_peak_memory_on_a_large_query(run: SimpleNamespace, tmp_path: Path) -> None:
    import cv2

    side = 6000
    cv2.imwrite(str(tmp_path / "small.jpg"), _smooth_photo(64))
    cv2.imwrite(str(tmp_path / "large.jpg"), _smooth_photo(side))
    proc = subprocess.run(
        [
            sys.executable,
            "-c",
            MEASURE,
            str(REPO / "conf"),
            str(run.ckpt),
            str(run.image),
            str(run.label),
            str(tmp_path / "small.jpg"),
            str(tmp_path / "out"),
        ],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    peak = json.loads(proc.stdout.strip().splitlines()[-1])["peak_mb"]
    assert peak < PEAK_BOUND_MB, f"predict.py took {peak:.0f} MB for a {side} x {side} query"
    record = json.loads((tmp_path / "out2" / "predictions.json").read_text())
    assert (record["queries"][0]["height"], record["queries"][0]["width"]) == (side, side)
    assert Image.open(tmp_path / "out2" / "masks" / "large.png").size == (side, side)


# ----------------------------------------------------------------------------------------- case 8
def _metrics(root: Path, name: str, fold: int, miou: float, seed: int) -> Path:
    path = root / name / "metrics.json"
    path.parent.mkdir(parents=True)
    record = {"miou": miou, "fbiou": 0.7, "fold": fold, "shot": 1, "run": {"row": "svf", "seed": seed}}
    path.write_text(json.dumps(record))  # json writes NaN as NaN, as a diverged evaluation's record has it
    return path


def test_tables_report_and_exclude_nan_and_out_of_layout_runs(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    for fold in range(4):
        _metrics(tmp_path, f"s0-f{fold}", fold, 0.5, seed=0)
    nan = _metrics(tmp_path, "s1-f0", 0, float("nan"), seed=1)
    outside = _metrics(tmp_path, "s0-f7", 7, 0.9, seed=0)
    assert tables_main([str(tmp_path)]) == 0
    captured = capsys.readouterr()
    assert f"excluded: {nan}: miou=nan is not a number" in captured.err
    assert f"excluded: {outside}: fold=7 is outside the table's folds [0, 1, 2, 3]" in captured.err
    assert "runs: 4" in captured.out and "| svf | 50.00 | 50.00 | 50.00 | 50.00 | 50.00 |" in captured.out
    assert "nan" not in captured.out
