"""``dataset.selection``: which episodes choose the checkpoint that train.py tests.

``test_episodes`` is the paper's protocol (the best mIoU on the episodes it reports); ``held_out`` chooses
on one half of the novel-class images and tests on the other; ``last`` tests the last weights.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from omegaconf import OmegaConf, open_dict

from svfseg.config_checks import ConfigError
from svfseg.data.datamodule import FewShotDataModule
from svfseg.data.fold import FoldSpec
from svfseg.data.lists.held_out import check_selection, split_held_out
from svfseg.data.lists.selection import FewShotList
from svfseg.data.splits import novel_classes
from svfseg.dataprep.synthetic import coverage_min_pixels, make_synthetic
from svfseg.run_dir import config_hash
from svfseg.tasks.evaluate import evaluate
from svfseg.tasks.train import train
from tests.helpers.hydra import compose_config, tiny_train_config

NOVEL = novel_classes("pascal", 0)


def _pair(stem: str) -> tuple[str, str]:
    return (f"JPEGImages/{stem}.jpg", f"SegmentationClassAug/{stem}.png")


# First sha256 byte of each path (coreutils: printf JPEGImages/2007_000175.jpg | sha256sum -> 31...), so
# the split takes them in this order: 175 (0x31), 042 (0x37), 033 (0x60), 187 (0x67), 123 (0x74),
# 323 (0xa9), 129 (0xb8), 061 (0xdf). Each goes to the half with fewer images of its classes; a tie goes
# to the test half when that byte is odd.
STEMS = [
    "2007_000033",
    "2007_000042",
    "2007_000061",
    "2007_000123",
    "2007_000129",
    "2007_000175",
    "2007_000187",
    "2007_000323",
]


def _list(by_class: dict[int, list[str]]) -> FewShotList:
    pairs = sorted({_pair(s) for stems in by_class.values() for s in stems})
    return FewShotList(tuple(pairs), {c: tuple(sorted(_pair(s) for s in v)) for c, v in by_class.items()})


def _stems(pairs) -> list[str]:
    return sorted(Path(p[0]).stem for p in pairs)


def test_held_out_halves_alternate_in_hash_order_balanced_per_class() -> None:
    # one class: 175 tie, odd -> test; 042 -> selection (fewer there); 033 tie, even -> selection;
    # 187 -> test; 123 tie, even -> selection; 323 -> test; 129 tie, even -> selection; 061 -> test
    selection, test = split_held_out(_list({1: STEMS}), [1], shot=1)
    assert _stems(selection.pairs) == ["2007_000033", "2007_000042", "2007_000123", "2007_000129"]
    assert _stems(test.pairs) == ["2007_000061", "2007_000175", "2007_000187", "2007_000323"]
    # two classes; 123 holds both: when it comes, each half has one image of each class (2 = 2, even -> selection)
    c1 = ["2007_000033", "2007_000042", "2007_000061", "2007_000123"]
    c2 = ["2007_000123", "2007_000129", "2007_000175", "2007_000187", "2007_000323"]
    selection, test = split_held_out(_list({1: c1, 2: c2}), [1, 2], shot=1)
    assert _stems(selection.by_class[1]) == ["2007_000033", "2007_000123"]
    assert _stems(test.by_class[1]) == ["2007_000042", "2007_000061"]
    assert _stems(selection.by_class[2]) == ["2007_000123", "2007_000129", "2007_000187"]
    assert _stems(test.by_class[2]) == ["2007_000175", "2007_000323"]
    assert _stems(selection.pairs) == ["2007_000033", "2007_000123", "2007_000129", "2007_000187"]
    # the order of the list does not matter, only the paths
    again = FewShotList(
        tuple(sorted(selection.pairs + test.pairs)),
        dict(reversed(list(_list({1: c1, 2: c2}).by_class.items()))),
    )
    assert split_held_out(again, [2, 1], shot=1)[0].pairs == selection.pairs


def test_held_out_refuses_a_class_too_small_in_a_half() -> None:
    # class 2 has 3 images: one half gets 1 (< 2 = a query and one support)
    lst = _list({1: STEMS, 2: ["2007_000033", "2007_000042", "2007_000061"]})
    with pytest.raises(ValueError, match=r"class 2 \(bird\): \d selection / \d test images") as err:
        split_held_out(lst, [1, 2], shot=1, names={1: "aeroplane", 2: "bird"})
    assert "dataset.selection=test_episodes" in str(err.value) and "class 1" not in str(err.value)
    # 5-shot needs 6 images in each half: class 1 has 4 / 4
    with pytest.raises(
        ValueError,
        match=r"1 novel class has fewer than 6 images \(a query and 5 supports\) .*class 1: 4 selection / 4 test images",
    ):
        split_held_out(_list({1: STEMS}), [1], shot=5)
    # a class without images in the whole list is not the split's doing: it passes, as without the split
    split_held_out(_list({1: STEMS, 3: []}), [1, 3], shot=1)


@pytest.mark.parametrize("value", ["best", "held-out", None, 1])
def test_an_unknown_selection_is_refused_naming_the_choices(value: Any) -> None:
    with pytest.raises(
        ValueError,
        match=r"dataset.selection=.* is invalid: choose one of \['test_episodes', 'held_out', 'last'\]",
    ):
        check_selection(value)


@pytest.fixture(scope="module")
def root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_synthetic(
        "pascal", tmp_path_factory.mktemp("synth") / "pascal", n_train=160, n_val=120, size=56
    )


def _datamodule(root: Path, tmp_path: Path, selection: str) -> FewShotDataModule:
    return FewShotDataModule(
        FoldSpec("synthetic", 0),
        root,
        train_size=40,
        eval_size=40,
        batch_size=2,
        eval_batch_size=3,
        num_workers=0,
        eval_seeds=[321, 5],
        n_episodes=30,
        train_episodes_for_curve=0,
        min_pixels=100,
        cache_dir=tmp_path / "cache",
        selection=selection,
    )


def _queries(loader) -> set[tuple[str, str]]:
    return set(loader.dataset.table.queries)


def test_held_out_validation_and_test_episodes_share_no_image(root: Path, tmp_path: Path) -> None:
    paper = _datamodule(root, tmp_path, "test_episodes")
    paper.setup("fit")
    held = _datamodule(root, tmp_path, "held_out")
    held.setup("fit")
    full = paper.val_list
    assert full is not None and held.val_list is not None
    selection, test = split_held_out(full, NOVEL, 1)
    # the paper's protocol validates on exactly the first seed's test episodes
    assert paper.val_dataloader().dataset.table is paper.val_tables[321]
    assert set(paper.table_digests) == {"val/seed321", "val/seed5", "train_list"}
    # held_out: validation draws queries and supports from the selection half, tests from the test half
    val_table = held.val_dataloader().dataset.table
    assert set(held.table_digests) == {"selection/seed321", "test/seed321", "test/seed5", "train_list"}
    used_for_selection = set(val_table.queries) | {p for s in val_table.supports for p in s}
    assert used_for_selection <= set(selection.pairs)
    for loader in held.test_dataloader():
        table = loader.dataset.table
        assert set(table.queries) | {p for s in table.supports for p in s} <= set(test.pairs)
        assert len(table) == 30 and set(table.class_ids) <= set(NOVEL)
    assert held.val_list.pairs == test.pairs
    assert set(selection.pairs).isdisjoint(test.pairs) and len(selection) + len(test) == len(full)
    assert held.eval_dataloader(321).dataset.table is held.val_tables[321]


def test_the_default_selection_keeps_every_earlier_run_hash(tmp_path: Path) -> None:
    cfg = compose_config("train", ["dataset=synthetic", f"paths.output_dir={tmp_path}"])
    assert cfg.dataset.selection == "test_episodes"
    earlier = OmegaConf.create(OmegaConf.to_container(cfg))
    with open_dict(earlier):
        del earlier.dataset["selection"]  # a config recorded before the key existed
    assert config_hash(cfg) == config_hash(earlier)
    for other in ("held_out", "last"):
        changed = OmegaConf.create(OmegaConf.to_container(cfg))
        changed.dataset.selection = other
        assert config_hash(changed) != config_hash(cfg)


def _eval(ckpt: Path, out: Path, n_episodes: int) -> dict:
    cfg = compose_config(
        "eval",
        [
            f"ckpt_path={ckpt}",
            f"paths.output_dir={out}",
            "trainer.accelerator=cpu",
            f"n_episodes={n_episodes}",
        ],
    )
    return evaluate(cfg)


@pytest.mark.slow
@pytest.mark.parametrize(("selection", "tested"), [("held_out", "best.ckpt"), ("last", "last.ckpt")])
def test_train_tests_the_chosen_checkpoint_and_eval_reproduces_it(
    root: Path, tmp_path: Path, selection: str, tested: str
) -> None:
    # 120 validation images: every novel class keeps >= 2 in each half (the suite's 60-image set does not)
    cfg = tiny_train_config(
        root,
        tmp_path / "run",
        min_pixels=coverage_min_pixels(56),
        extra=[f"dataset.selection={selection}", "trainer.max_epochs=2"],
    )
    metrics = train(cfg)
    record = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert record["selection"] == selection and record["miou"] == pytest.approx(metrics["miou"])
    assert Path(record["checkpoint"]).name == tested
    result = _eval(Path(record["checkpoint"]), tmp_path / "eval", int(cfg.dataset.n_episodes))
    # eval.py rebuilds the run's episodes from the checkpoint (held_out: its test half): identical numbers
    assert (result["miou"], result["fbiou"]) == (record["miou"], record["fbiou"])
    assert json.loads((tmp_path / "eval" / "metrics.json").read_text())["selection"] == selection


def test_train_refuses_an_unknown_selection_before_writing(synthetic_pascal, tmp_path: Path) -> None:
    root, min_pixels = synthetic_pascal
    cfg = tiny_train_config(root, tmp_path / "run", min_pixels=min_pixels, extra=["dataset.selection=best"])
    with pytest.raises(ConfigError, match=r"dataset.selection='best' is invalid"):
        train(cfg)
    assert not (tmp_path / "run").exists()


def test_a_cross_dataset_evaluation_tests_every_target_image(root: Path, tmp_path: Path) -> None:
    """No image of another dataset chose the checkpoint, so its whole list is tested (no half is kept back)."""
    from svfseg.tasks.evaluate import _evaluation_spec
    from tests.data.test_folder_dataset import _write_folder

    folder = _write_folder(root, tmp_path / "things")
    run = tiny_train_config(root, tmp_path / "run", min_pixels=100, extra=["dataset.selection=held_out"])
    cfg = OmegaConf.create({"eval_dataset": "folder", "dataset_root": str(folder), "eval_fold": 1})
    spec, protocol = _evaluation_spec(cfg, run)
    assert protocol == "cross-domain: synthetic -> folder things" and spec.fold.novel_classes == (7, 8, 9, 10)
    assert run.dataset.name == "folder" and run.dataset.selection == "test_episodes"
