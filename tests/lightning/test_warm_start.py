"""``init_head``: a run's head starts from a finetune=freeze run's head; refusals name the mismatch."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import pytorch_lightning as pl
import torch

from svfseg.config_checks import ConfigError
from svfseg.lightning.warm_start import WarmStartError, load_head
from svfseg.tasks.builders import build_module
from svfseg.tasks.resolve import TrainRun
from svfseg.tasks.train import train
from tests.helpers.hydra import tiny_train_config

STEPS = ["trainer.max_epochs=1", "trainer.limit_train_batches=2", "test_after_fit=false"]


def _run(synthetic_pascal, out: Path, *extra: str) -> Path:
    root, min_pixels = synthetic_pascal
    train(tiny_train_config(root, out, min_pixels=min_pixels, extra=[*STEPS, *extra]))
    return out


def _fresh_module(synthetic_pascal, out: Path, *extra: str):
    root, min_pixels = synthetic_pascal
    cfg = tiny_train_config(root, out, min_pixels=min_pixels, extra=list(extra))
    pl.seed_everything(cfg.seed)  # as train.py does before building: the same random tiny backbone
    run = TrainRun.from_config(cfg)
    return build_module(run), run.spec


@pytest.fixture(scope="module")
def freeze_run(synthetic_pascal, tmp_path_factory) -> Path:
    return _run(synthetic_pascal, tmp_path_factory.mktemp("warm") / "freeze", "finetune=freeze")


def test_head_comes_from_the_checkpoint_and_the_backbone_stays(synthetic_pascal, freeze_run, tmp_path):
    saved = torch.load(freeze_run / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    source = {k.removeprefix("model."): v for k, v in saved["state_dict"].items() if k.startswith("model.")}
    module, spec = _fresh_module(synthetic_pascal, tmp_path / "svf", "finetune=svf")
    before = {k: v.clone() for k, v in module.model.state_dict().items()}
    load_head(module.model, freeze_run / "checkpoints" / "last.ckpt", spec)
    after = module.model.state_dict()
    head = [k for k in after if not k.startswith("backbone.")]
    assert head and len(head) == len([k for k in source if not k.startswith("backbone.")])
    moved = 0
    for key in head:
        assert torch.equal(after[key], source[key]), key
        moved += not torch.equal(before[key], source[key])
    assert moved > 0  # the freeze run trained its head, so the warm start changed something
    for key in (k for k in after if k.startswith("backbone.")):
        assert torch.equal(after[key], before[key]), key


def test_a_warm_started_run_trains_and_records_its_source(synthetic_pascal, freeze_run, tmp_path):
    out = _run(synthetic_pascal, tmp_path / "svf", "finetune=svf", f"init_head={freeze_run}")
    record = (out / ".hydra" / "config.yaml").read_text()
    assert f"init_head: {freeze_run}" in record
    assert (out / "checkpoints" / "last.ckpt").is_file()


def test_the_head_checkpoint_is_read_once_per_run(synthetic_pascal, freeze_run, tmp_path, monkeypatch):
    """Checked at start and applied after the model is built, from the one read (no second read or check)."""
    import svfseg.lightning.checkpointing as checkpointing

    reads: list[Path] = []
    read = checkpointing.read_tensor_file

    def counting(path, **kwargs):
        reads.append(Path(path).resolve())
        return read(path, **kwargs)

    monkeypatch.setattr(checkpointing, "read_tensor_file", counting)
    _run(synthetic_pascal, tmp_path / "svf", "finetune=svf", f"init_head={freeze_run}")
    source = (freeze_run / "checkpoints" / "best.ckpt").resolve()
    assert reads.count(source) == 1, reads


def test_refuses_a_converted_backbone(synthetic_pascal, freeze_run, tmp_path):
    svf_run = _run(synthetic_pascal, tmp_path / "svf-src", "finetune=svf")
    module, spec = _fresh_module(synthetic_pascal, tmp_path / "x", "finetune=svf")
    with pytest.raises(WarmStartError, match=r"init_head=.*finetune=freeze run"):
        load_head(module.model, svf_run, spec)


def test_refuses_another_fold_at_start_or_another_backbone_init(synthetic_pascal, freeze_run, tmp_path):
    root, min_pixels = synthetic_pascal
    other_fold = tiny_train_config(
        root, tmp_path / "f1", min_pixels=min_pixels, extra=[*STEPS, "fold=1", f"init_head={freeze_run}"]
    )
    with pytest.raises(ConfigError, match=r"init_head=.*fold=0 but this run is fold=1"):
        train(other_fold)
    assert not (tmp_path / "f1").exists()  # refused at start, before the run folder is claimed
    module, spec = _fresh_module(synthetic_pascal, tmp_path / "seed", "finetune=svf", "seed=5")
    with pytest.raises(WarmStartError, match=r"backbone tensor .* differs"):
        load_head(module.model, freeze_run, spec)


def test_missing_checkpoint_is_refused_before_anything_is_written(synthetic_pascal, tmp_path):
    root, min_pixels = synthetic_pascal
    out = tmp_path / "run"
    cfg = tiny_train_config(root, out, min_pixels=min_pixels, extra=[f"init_head={tmp_path / 'nope.ckpt'}"])
    with pytest.raises(ConfigError, match=r"init_head=.*nope\.ckpt does not exist"):
        train(cfg)
    assert not out.exists()


@pytest.mark.parametrize("key", ["init_head", "ckpt_path"])
def test_a_checkpoint_that_does_not_read_is_refused_at_start(synthetic_pascal, tmp_path, key):
    root, min_pixels = synthetic_pascal
    cut = tmp_path / "cut.ckpt"
    cut.write_bytes(b"PK\x03\x04 an interrupted copy")
    out = tmp_path / "run"
    cfg = tiny_train_config(root, out, min_pixels=min_pixels, extra=[f"{key}={cut}"])
    with pytest.raises(ConfigError, match=rf"{re.escape(str(cut))} does not read as an svfseg checkpoint"):
        train(cfg)
    assert not out.exists()
