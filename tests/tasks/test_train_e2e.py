"""End-to-end: train.py's task on synthetic data, checkpoints, eval.py parity, resume, BN statistics."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from omegaconf import DictConfig, open_dict
from pytorch_lightning.callbacks import ProgressBar

from svfseg.lightning.module import FewShotSegModule
from svfseg.tasks.builders import build_callbacks, build_trainer
from svfseg.tasks.evaluate import evaluate
from svfseg.tasks.resolve import TrainRun
from svfseg.tasks.train import train
from tests.helpers.hydra import compose_config, tiny_train_config


def _train(synthetic_pascal, out: Path, extra: list[str]) -> tuple[DictConfig, dict]:
    root, min_pixels = synthetic_pascal
    cfg = tiny_train_config(root, out, min_pixels=min_pixels, extra=extra)
    return cfg, train(cfg)


@pytest.mark.slow
def test_train_writes_metrics_and_eval_reproduces_them(synthetic_pascal, tmp_path: Path) -> None:
    cfg, metrics = _train(synthetic_pascal, tmp_path / "run", ["finetune=svf", "trainer.max_epochs=2"])
    record = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert record["miou"] == pytest.approx(metrics["miou"])
    assert record["n_episodes"] == cfg.dataset.n_episodes
    assert record["per_seed"]["321"]["n_episodes"] == cfg.dataset.n_episodes
    assert 0.0 <= record["miou"] <= 1.0 and 0.0 <= record["fbiou"] <= 1.0
    ckpt = Path(record["checkpoint"])
    assert ckpt.is_file() and (tmp_path / "run" / "checkpoints" / "last.ckpt").is_file()

    eval_cfg = compose_config(
        "eval",
        [
            f"ckpt_path={ckpt}",
            f"paths.output_dir={tmp_path / 'eval'}",
            "trainer.accelerator=cpu",
            f"n_episodes={cfg.dataset.n_episodes}",  # the same episodes, so the numbers must be identical
            "table=table11",
            "row='baseline + SVF (${n_episodes} episodes)'",
        ],
    )
    result = evaluate(eval_cfg)
    # same checkpoint, same fixed episodes: the numbers are identical, not merely close
    assert result["miou"] == record["miou"]
    assert result["fbiou"] == record["fbiou"]
    assert result["per_seed"]["321"]["class_iou"] == record["per_seed"]["321"]["class_iou"]
    saved = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    assert saved["fold"] == 0 and saved["shot"] == 1 and saved["config"]["finetune"]["name"] == "svf"
    # the eval-only relabelling (Table 11 re-tests a trained model over episode counts)
    assert (saved["run"]["table"], saved["run"]["row"]) == (
        "table11",
        f"baseline + SVF ({cfg.dataset.n_episodes} episodes)",
    )
    _check_episode_files(tmp_path, record, cfg.dataset.n_episodes)


def _check_episode_files(tmp_path: Path, record: dict, n_episodes: int) -> None:
    """episodes.json of train.py and eval.py: the episodes' class sums are metrics.json's numbers, the same
    checkpoint on the same episodes gives the same file, and svfseg-compare pairs them (difference 0)."""
    trained = json.loads((tmp_path / "run" / "episodes.json").read_text())
    evaluated = json.loads((tmp_path / "eval" / "episodes.json").read_text())
    assert trained == evaluated and list(trained["seeds"]) == ["321"]
    seed = trained["seeds"]["321"]
    assert seed["index"] == list(range(n_episodes)) and len(seed["table"]) > 0
    assert all(q.startswith("JPEGImages/") for q in seed["query"]) and len(seed["query"]) == n_episodes
    for k, c in enumerate(trained["classes"]):
        inter = sum(i for i, ci in zip(seed["fg_inter"], seed["class_idx"], strict=True) if ci == k)
        union = sum(u for u, ci in zip(seed["fg_union"], seed["class_idx"], strict=True) if ci == k)
        want = record["per_seed"]["321"]["class_iou"][str(c)]
        assert (inter / union if union else 0.0) == pytest.approx(want, rel=1e-6, abs=1e-7)
    lo, hi = record["miou_ci95"]
    assert lo <= record["miou"] <= hi and record["per_seed"]["321"]["miou_ci95"] == [lo, hi]
    from svfseg.compare import main as compare

    assert compare([str(tmp_path / "run"), str(tmp_path / "eval"), "--resamples", "200"]) == 0


@pytest.mark.slow
@pytest.mark.parametrize("finetune", ["freeze", "full", "svf"])
def test_checkpoint_round_trip_restores_the_strategy(synthetic_pascal, tmp_path: Path, finetune: str) -> None:
    _train(synthetic_pascal, tmp_path, [f"finetune={finetune}", "test_after_fit=false"])
    ckpt = tmp_path / "checkpoints" / "last.ckpt"
    restored = FewShotSegModule.load_from_checkpoint(
        ckpt, map_location="cpu", weights_only=True, strict=True, load_pretrained=False
    )
    assert restored.finetune_spec["name"] == finetune
    state = torch.load(ckpt, map_location="cpu", weights_only=True)["state_dict"]
    restored_state = restored.state_dict()
    assert restored_state.keys() == state.keys()
    for key, value in restored_state.items():
        if isinstance(value, torch.Tensor):
            assert torch.equal(value, state[key]), key
        else:  # SVF layers' extra state: the base-weight fingerprint
            assert value == state[key], key
    if finetune == "svf":
        from svfseg.svf import svf_layers

        assert len(list(svf_layers(restored.model.backbone))) > 0


@pytest.mark.slow
def test_eval_refuses_a_checkpoint_of_another_fold(synthetic_pascal, tmp_path: Path) -> None:
    _train(synthetic_pascal, tmp_path, ["finetune=freeze", "test_after_fit=false"])
    eval_cfg = compose_config(
        "eval",
        [
            f"ckpt_path={tmp_path / 'checkpoints' / 'last.ckpt'}",
            f"paths.output_dir={tmp_path / 'e'}",
            "fold=2",
        ],
    )
    with pytest.raises(ValueError, match="trained for fold=0 but the command asks for fold=2"):
        evaluate(eval_cfg)
    assert not (tmp_path / "e" / "metrics.json").exists()


@pytest.mark.slow
def test_extending_a_finished_run_matches_an_uninterrupted_run(synthetic_pascal, tmp_path: Path) -> None:
    # Extending max_epochs changes a cosine/poly schedule's length (so the lr differs by design); with the
    # reference's constant lr, 1 epoch + 1 more from its last.ckpt equals 2 epochs in one go. Resuming an
    # interrupted run with the same config (any schedule) is tested in test_resume.py.
    common = ["finetune=svf", "test_after_fit=false", "trainer.deterministic=true", "optim.schedule=constant"]
    _, _ = _train(synthetic_pascal, tmp_path / "full", [*common, "trainer.max_epochs=2"])
    _, _ = _train(synthetic_pascal, tmp_path / "part", [*common, "trainer.max_epochs=1"])
    first = tmp_path / "part" / "checkpoints" / "last.ckpt"
    # a change of the optimisation on resume is named on purpose (otherwise refused: test_reliability_rundir)
    extend = [*common, "trainer.max_epochs=2", f"ckpt_path={first}", "resume_changes=[trainer.max_epochs]"]
    _, _ = _train(synthetic_pascal, tmp_path / "part", extend)
    a = torch.load(tmp_path / "full" / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    b = torch.load(tmp_path / "part" / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    assert a["global_step"] == b["global_step"]
    assert a["state_dict"].keys() == b["state_dict"].keys()
    for key, value in a["state_dict"].items():
        if isinstance(value, torch.Tensor):
            torch.testing.assert_close(b["state_dict"][key], value, rtol=1e-5, atol=1e-6, msg=key)
        else:  # SVF layers' extra state: the base-weight fingerprint
            assert b["state_dict"][key] == value, key
    lr_a = a["lr_schedulers"][0]["last_epoch"]
    assert lr_a == b["lr_schedulers"][0]["last_epoch"]


@pytest.mark.slow
@pytest.mark.parametrize("finetune", ["freeze", "svf", "full"])
def test_bn_running_statistics_do_not_move(synthetic_pascal, tmp_path: Path, finetune: str) -> None:
    root, min_pixels = synthetic_pascal
    cfg = tiny_train_config(root, tmp_path, min_pixels=min_pixels, extra=[f"finetune={finetune}"])
    from svfseg.tasks.builders import (
        build_callbacks,
        build_datamodule,
        build_loggers,
        build_module,
        build_trainer,
    )
    from svfseg.tasks.resolve import TrainRun

    with open_dict(cfg):
        cfg.trainer.max_epochs = 1
    run = TrainRun.from_config(cfg)
    module = build_module(run)
    before = {k: v.clone() for k, v in module.model.backbone.state_dict().items() if "running" in k}
    trainer = build_trainer(run, build_callbacks(run), build_loggers(run))
    trainer.fit(module, datamodule=build_datamodule(run))
    after = module.model.backbone.state_dict()
    if finetune == "svf":  # converted convs change their keys, BN keys stay
        after = {k: v for k, v in after.items() if "running" in k}
    assert before.keys() <= after.keys()
    for key, value in before.items():
        assert torch.equal(value, after[key]), key


def _forbid_svd(monkeypatch: pytest.MonkeyPatch) -> None:
    """Make every SVD entry point raise: loading a checkpoint must not decompose anything."""
    import svfseg.svf.layers

    def no_svd(*args: object, **kwargs: object) -> None:
        raise AssertionError("an SVD ran while loading a checkpoint")

    monkeypatch.setattr(svfseg.svf.layers, "decompose", no_svd)
    monkeypatch.setattr(torch.linalg, "svd", no_svd)


def _random_pretrained_file(path: Path, width_mult: float) -> Path:
    """A PSPNet-v2-layout weight file of a random deep-stem ResNet-50 (what backbone.pretrained reads)."""
    from torch import nn

    from svfseg.backbones import build_backbone
    from svfseg.pretrain.proxy import pspnet_state_dict

    torch.manual_seed(7)
    backbone = build_backbone("resnet50", width_mult=width_mult, warn_if_random=False)
    head = nn.Conv2d(backbone.channels["layer4"], 3, 1)
    torch.save(pspnet_state_dict(backbone, head), path)
    return path


@pytest.mark.slow
def test_svf_checkpoint_loads_without_svd_and_best_svf_artifact_restores_it(
    synthetic_pascal, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from svfseg.lightning.checkpointing import svf_artifact_path
    from svfseg.svf import apply_svf, load_svf_state_dict, mark_only_svf_trainable, svf_layers

    weights = _random_pretrained_file(tmp_path / "r50.pth", 0.125)
    _train(
        synthetic_pascal,
        tmp_path / "run",
        ["finetune=svf", "test_after_fit=false", "trainer.max_epochs=2", f"backbone.pretrained={weights}"],
    )
    best = tmp_path / "run" / "checkpoints" / "best.ckpt"
    artifact = svf_artifact_path(best)
    assert artifact == best.with_name("best.svf.pt") and artifact.is_file()
    assert artifact.stat().st_size < best.stat().st_size / 20  # s of layer2-4 only, no U / V

    with monkeypatch.context() as patch:
        _forbid_svd(patch)
        restored = FewShotSegModule.load_from_checkpoint(
            best, map_location="cpu", weights_only=True, strict=True, load_pretrained=False
        )
    layers = dict(svf_layers(restored.model.backbone))
    assert layers and all(layer.fingerprint for layer in layers.values())

    # The artifact holds exactly the trained singular values of the checkpoint ...
    state = torch.load(artifact, map_location="cpu", weights_only=True)
    assert set(state["tensors"]) == {f"{name}.s" for name in layers}
    for name, layer in layers.items():
        assert torch.equal(state["tensors"][f"{name}.s"], layer.s.detach()), name
    # ... and restores the fine-tune on a backbone converted from the same pretrained file.
    from svfseg.backbones import build_backbone

    fresh = build_backbone("resnet50", pretrained=str(weights), width_mult=0.125)
    apply_svf(fresh, include=["layer2.*", "layer3.*", "layer4.*"])
    mark_only_svf_trainable(fresh)  # what finetune=svf trains: the artifact must hold every trainable tensor
    load_svf_state_dict(fresh, state)
    restored.model.backbone.eval(), fresh.eval()
    x = torch.randn(1, 3, 65, 65)
    with torch.no_grad():
        ours, theirs = restored.model.backbone(x), fresh(x)
    for key in ours:
        torch.testing.assert_close(theirs[key], ours[key], rtol=1e-5, atol=1e-6)


def test_stage1_runs_without_a_logger_and_records_its_best_score(synthetic_pascal, tmp_path: Path) -> None:
    """``logger=none`` used to stop stage 1 at fit start (its learning-rate monitor needs a logger), and a
    best score of exactly 0.0 was recorded as NaN. Run as on a cluster: no logger, no progress bar."""
    learner = tmp_path / "pspnet.pt"
    stage1 = ["stage=base", "method=bam", "logger=none", f"method.base_learner={learner}"]
    stage1 += ["+trainer.enable_progress_bar=false"]
    stage1 += ["dataset.base_stage.epochs=1", "dataset.base_stage.batch_size=2"]
    stage1 += ["dataset.base_stage.train_size=65", "dataset.base_stage.eval_size=65"]
    _, result = _train(synthetic_pascal, tmp_path / "base", stage1)
    saved = torch.load(
        tmp_path / "base" / "checkpoints" / "base_best.ckpt", map_location="cpu", weights_only=True
    )
    (state,) = [v for k, v in saved["callbacks"].items() if k.startswith("ModelCheckpoint")]
    best = float(state["best_model_score"])
    meta = torch.load(learner, map_location="cpu", weights_only=True)["meta"]
    assert result["val_miou"] == meta["val_miou"] == pytest.approx(best, abs=0.0)
    assert 0.0 <= best <= 1.0
    assert not (tmp_path / "base" / "csv").exists()  # no logger wrote anything


def test_a_run_without_progress_bars_drops_the_configs_bar(synthetic_pascal, tmp_path: Path) -> None:
    """``+trainer.enable_progress_bar=false`` (cluster logs) stopped train.py in Lightning's Trainer:
    "configured with enable_progress_bar=False but found LineProgress in callbacks"."""
    root, min_pixels = synthetic_pascal
    out = tmp_path / "run"
    overrides = [
        "dataset=synthetic",
        "debug=tiny",
        f"dataset.root={root}",
        f"dataset.min_pixels={min_pixels}",
    ]
    overrides += [f"paths.output_dir={out}", f"paths.log_dir={out}", "+trainer.enable_progress_bar=false"]
    cfg = compose_config("train", overrides)  # with conf/callbacks' progress bar (tiny_train_config drops it)
    metrics = train(cfg)
    assert (out / "metrics.json").is_file() and 0.0 <= metrics["miou"] <= 1.0
    run = TrainRun.from_config(cfg)
    callbacks = build_callbacks(run)
    assert any(isinstance(c, ProgressBar) for c in callbacks)  # conf/callbacks' progress_bar ...
    trainer = build_trainer(run, callbacks, [])
    assert trainer.progress_bar_callback is None  # ... is dropped by the one Trainer builder
    assert not any(isinstance(c, ProgressBar) for c in trainer.callbacks)
