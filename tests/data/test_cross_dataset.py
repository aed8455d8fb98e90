"""``eval.py`` on another dataset than the checkpoint was trained on: the two protocols, run as typed.

* COCO-20i -> PASCAL-5i: a tiny COCO-trained checkpoint (synthetic COCO layout) is tested on a stand-in in
  the PASCAL VOC layout with every standard id; the test classes are the PASCAL classes whose COCO
  category is novel in the checkpoint's COCO fold (computed independently here from the category names).
* Cross-domain: a tiny Pascal-structured checkpoint is tested on a dataset folder's fold.
* Combinations no protocol defines are refused at start, naming the supported ones.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from svfseg.data.class_names import COCO, PASCAL_VOC
from tests.data.test_folder_dataset import FOLDS, _write_folder
from tests.helpers.cli import REPO, run_cli, tiny_overrides
from tests.tasks.test_paper_row_ddp import MIN_PIXELS, write_voc2012_standin

SPELLING = {"aeroplane": "airplane", "diningtable": "dining table", "motorbike": "motorcycle"}
SPELLING |= {"pottedplant": "potted plant", "sofa": "couch", "tvmonitor": "tv"}


def _expected_pascal_classes(coco_fold: int) -> list[int]:
    """PASCAL ids whose COCO category id c has (c - 1) % 4 == fold (COCO's interleaved split)."""
    out = []
    for voc_id, name in enumerate(PASCAL_VOC, 1):
        coco_id = COCO.index(SPELLING.get(name, name)) + 1
        if (coco_id - 1) % 4 == coco_fold:
            out.append(voc_id)
    return out


def test_the_coco_to_pascal_folds_are_the_published_ones() -> None:
    assert [_expected_pascal_classes(k) for k in range(4)] == [
        [1, 4, 9, 11, 12, 15],
        [2, 6, 13, 18],
        [3, 7, 16, 17, 19, 20],
        [5, 8, 10, 14],
    ]


@pytest.fixture(scope="module")
def coco_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from svfseg.dataprep.synthetic import coverage_min_pixels, make_synthetic

    tmp = tmp_path_factory.mktemp("coco_ckpt")
    root = make_synthetic("coco", tmp / "coco", n_train=480, n_val=240, size=64)
    run = tmp / "run"
    run_cli(
        [
            str(REPO / "train.py"),
            "dataset=coco",
            "debug=tiny",
            f"dataset.root={root}",
            f"dataset.min_pixels={coverage_min_pixels(64)}",
            "dataset.train_episodes_for_curve=0",
            "fold=1",
            "test_after_fit=false",
            "~callbacks.progress_bar",
            f"hydra.run.dir={run}",
        ],
        tmp,
        timeout=300,
    )
    return run


@pytest.fixture(scope="module")
def pascal_checkpoint(synthetic_pascal, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny checkpoint of the Pascal-structured synthetic dataset (fold 0)."""
    tmp = tmp_path_factory.mktemp("pascal_ckpt")
    run = tmp / "run"
    run_cli(
        [
            str(REPO / "train.py"),
            *tiny_overrides(synthetic_pascal),
            "test_after_fit=false",
            f"hydra.run.dir={run}",
        ],
        tmp,
        timeout=300,
    )
    return run


@pytest.mark.slow
def test_a_coco_checkpoint_evaluates_on_pascal_classes_novel_in_its_coco_fold(
    coco_checkpoint: Path, tmp_path: Path
) -> None:
    voc = write_voc2012_standin(tmp_path / "VOC2012")
    out = tmp_path / "eval"
    run_cli(
        [
            str(REPO / "eval.py"),
            f"ckpt_path={coco_checkpoint}",
            "eval_dataset=pascal",
            f"dataset_root={voc}",
            "n_episodes=12",
            "num_workers=0",
            "+trainer.enable_progress_bar=false",
            f"hydra.run.dir={out}",
        ],
        tmp_path,
        timeout=300,
    )
    record = json.loads((out / "metrics.json").read_text())
    expected = _expected_pascal_classes(1)
    assert record["evaluation"]["protocol"] == "COCO-20i -> PASCAL-5i"
    assert record["evaluation"]["novel_classes"] == expected
    assert record["evaluation"]["trained_on"] == {"dataset": "coco", "fold": 1}
    assert {int(k): v["name"] for k, v in record["class_iou"].items()} == {
        c: PASCAL_VOC[c - 1] for c in expected
    }
    assert record["n_episodes"] == 12 and record["run"]["dataset"] == "pascal"
    # the data really is the PASCAL root: the min_pixels the stand-in was made for is not the COCO run's
    assert record["config"]["dataset"]["root"] == str(voc) and MIN_PIXELS > 0


def _folder_eval(checkpoint: Path, folder: Path) -> list[str]:
    """eval.py on fold 1 of ``folder`` (10 episodes, no workers, no progress bar)."""
    return [
        str(REPO / "eval.py"),
        f"ckpt_path={checkpoint}",
        "eval_dataset=folder",
        f"dataset_root={folder}",
        "eval_fold=1",
        "n_episodes=10",
        "num_workers=0",
        "+trainer.enable_progress_bar=false",
    ]


@pytest.mark.slow
def test_any_checkpoint_evaluates_on_a_folder_fold(
    synthetic_pascal, pascal_checkpoint: Path, tmp_path: Path
) -> None:
    run = pascal_checkpoint
    root, _ = synthetic_pascal
    folder = _write_folder(Path(root), tmp_path / "things")
    out = tmp_path / "eval"
    run_cli([*_folder_eval(run, folder), f"hydra.run.dir={out}"], tmp_path, timeout=300)
    record = json.loads((out / "metrics.json").read_text())
    assert record["evaluation"]["protocol"] == "cross-domain: synthetic -> folder things"
    assert sorted(int(k) for k in record["class_iou"]) == FOLDS[1]
    assert record["class_iou"]["7"]["name"] == "thing 7" and record["n_episodes"] == 10


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["eval_dataset=coco", "dataset_root=/tmp"], "no protocol defines its test classes"),
        (["eval_dataset=folder"], "eval_dataset=folder needs dataset_root=ROOT"),
    ],
)
@pytest.mark.slow
def test_a_cross_dataset_evaluation_without_a_protocol_is_refused_at_start(
    pascal_checkpoint: Path, tmp_path: Path, extra: list[str], message: str
) -> None:
    run = pascal_checkpoint
    proc = run_cli([str(REPO / "eval.py"), f"ckpt_path={run}", *extra], tmp_path, ok=False, timeout=300)
    assert proc.returncode == 2 and message in proc.stderr and "Traceback" not in proc.stderr


@pytest.mark.slow
def test_the_evaluation_pixel_threshold_is_an_eval_option(
    synthetic_pascal, pascal_checkpoint: Path, tmp_path: Path
) -> None:
    """``min_pixels=`` replaces the checkpoint's threshold in the evaluation list (a cross-domain folder of
    another image size needs its own); 0 is refused at start."""
    root, _ = synthetic_pascal
    folder = _write_folder(Path(root), tmp_path / "things")
    command = _folder_eval(pascal_checkpoint, folder)
    out = tmp_path / "eval"
    run_cli([*command, "min_pixels=1", f"hydra.run.dir={out}"], tmp_path, timeout=300)
    record = json.loads((out / "metrics.json").read_text())
    assert record["config"]["dataset"]["min_pixels"] == 1 and record["n_episodes"] == 10
    # a threshold no object reaches empties the pools: the option reaches the list
    proc = run_cli(
        [*command, "min_pixels=100000000", f"hydra.run.dir={tmp_path / 'high'}"], tmp_path, ok=False
    )
    output = proc.stderr + proc.stdout
    assert proc.returncode != 0 and "no image has >= 100000000 pixels of classes [7, 8, 9, 10]" in output
    proc = run_cli([*command, "min_pixels=0", f"hydra.run.dir={tmp_path / 'zero'}"], tmp_path, ok=False)
    assert (
        proc.returncode == 2 and "min_pixels=0 is invalid" in proc.stderr and "Traceback" not in proc.stderr
    )
