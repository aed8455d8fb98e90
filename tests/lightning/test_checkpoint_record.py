"""One run record per checkpoint: written once, read in one place, older layouts still load.

The earlier layout (format 1) is built here as that svfseg version wrote it: ``svfseg`` held
``finetune`` (the applied strategy or None), ``identity`` and ``config`` beside the hyper-parameters.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import pytorch_lightning as pl
import torch

from svfseg.data.fold import FoldSpec
from svfseg.lightning.checkpoint_record import RECORD_FORMAT, CheckpointRecord, CheckpointRecordError
from svfseg.lightning.module import FewShotSegModule
from svfseg.run_spec import RunSpec

METHOD = {"name": "baseline", "reduce_dim": 32}
BACKBONE = {"name": "resnet50", "pretrained": None, "width_mult": 0.125}
SVF = {"name": "svf", "stages": ["layer4"]}
CONFIG = {"dataset": {"name": "pascal", "root": "data/pascal"}, "seed": 3}


def _checkpoint(finetune: dict[str, Any], *, apply: bool = True) -> tuple[FewShotSegModule, dict[str, Any]]:
    spec = RunSpec(FoldSpec("pascal", 1), METHOD, BACKBONE, finetune)
    module = FewShotSegModule(run=spec.to_dict(), load_pretrained=False)
    if apply:
        module.apply_finetune()
    module.run_config = CONFIG
    checkpoint = {
        "state_dict": module.state_dict(),
        "hyper_parameters": dict(module.hparams),
        "pytorch-lightning_version": pl.__version__,
    }
    module.on_save_checkpoint(checkpoint)
    return module, checkpoint


def _format_1(checkpoint: dict[str, Any], module: FewShotSegModule) -> dict[str, Any]:
    """The same checkpoint in the layout written before the one record."""
    old = dict(checkpoint)
    old["svfseg"] = {
        "finetune": module.finetune_spec,
        "identity": module.spec.identity(),
        "config": module.run_config,
    }
    return old


def test_the_run_is_stored_once_and_the_entry_says_only_what_the_spec_cannot() -> None:
    module, checkpoint = _checkpoint(SVF)
    assert checkpoint["svfseg"] == {"format": RECORD_FORMAT, "strategy_applied": True, "config": CONFIG}
    assert checkpoint["hyper_parameters"]["run"] == module.spec.to_dict()
    record = CheckpointRecord.read(checkpoint)
    assert record.run == module.spec and record.finetune == {"name": "svf", **_svf_defaults(module)}
    assert record.run.identity() == {
        "method": "baseline",
        "backbone": "resnet50",
        "dataset": "pascal",
        "coco_split": module.spec.fold.coco_split,
        "fold": 1,
        "shot": 1,
    }
    _, unapplied = _checkpoint(SVF, apply=False)
    assert CheckpointRecord.read(unapplied).strategy_applied is False


def _svf_defaults(module: FewShotSegModule) -> dict[str, Any]:
    return {k: v for k, v in module.spec.finetune.items() if k != "name"}


@pytest.mark.parametrize("layout", ["current", "format 1"])
def test_a_checkpoint_of_either_layout_loads_strictly_with_its_strategy(tmp_path: Path, layout: str) -> None:
    module, checkpoint = _checkpoint(SVF)
    if layout == "format 1":
        checkpoint = _format_1(checkpoint, module)
    path = tmp_path / "run.ckpt"
    torch.save(checkpoint, path)
    loaded = FewShotSegModule.load_from_checkpoint(
        path, map_location="cpu", weights_only=True, strict=True, load_pretrained=False
    )
    assert loaded.finetune_spec == dict(module.spec.finetune)
    assert loaded.run_config == CONFIG
    got = loaded.state_dict()
    assert got.keys() == module.state_dict().keys()
    for key, value in module.state_dict().items():
        same = torch.equal(got[key], value) if isinstance(value, torch.Tensor) else got[key] == value
        assert same, key
    record = CheckpointRecord.read(torch.load(path, weights_only=True))
    assert (record.run, record.strategy_applied, record.config) == (module.spec, True, CONFIG)


def test_a_format_1_checkpoint_without_a_strategy_reads_as_not_applied() -> None:
    module, checkpoint = _checkpoint({"name": "freeze"}, apply=False)
    old = _format_1(checkpoint, module)
    assert old["svfseg"]["finetune"] is None
    assert CheckpointRecord.read(old).strategy_applied is False


def test_unreadable_records_are_refused_with_the_reason() -> None:
    _, checkpoint = _checkpoint(SVF)
    no_run = {**checkpoint, "hyper_parameters": {"optim": None}}
    with pytest.raises(
        CheckpointRecordError, match=r"ckpt_path=x\.ckpt holds no run record \(hyper_parameters\.run\)"
    ):
        CheckpointRecord.read(no_run, source="ckpt_path=x.ckpt")
    newer = {**checkpoint, "svfseg": {**checkpoint["svfseg"], "format": RECORD_FORMAT + 1}}
    with pytest.raises(
        CheckpointRecordError, match=r"run-record format 3; this svfseg reads formats 1 and 2"
    ):
        CheckpointRecord.read(newer)
    with pytest.raises(CheckpointRecordError, match=r"has no 'svfseg' entry"):
        CheckpointRecord.read({"state_dict": {}})
    bad = {**checkpoint, "hyper_parameters": {"run": {**checkpoint["hyper_parameters"]["run"], "method": 3}}}
    with pytest.raises(CheckpointRecordError, match=r"its run record \(hyper_parameters\.run\) is invalid"):
        CheckpointRecord.read(bad)
