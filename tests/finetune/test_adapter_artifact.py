"""The adapter artifact (best.svf.pt): every backbone tensor a strategy trains, restorable exactly.

Every strategy file in conf/finetune is covered by the parametrised tests, so a new one is too.
Tolerance of the round trips: absolute, max |restored - trained| <= 1e-5 on every backbone stage output.
"""

from __future__ import annotations

import logging
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import torch
from omegaconf import OmegaConf
from torch import Tensor, nn
from torch.nn.modules.batchnorm import _BatchNorm

from svfseg.backbones import build_backbone
from svfseg.finetune import build_strategy
from svfseg.lightning.checkpointing import (
    ARTIFACT_MAX_FRACTION,
    BestCheckpoint,
    svf_artifact_path,
    write_svf_artifact,
)
from svfseg.methods.base import FewShotModel
from svfseg.svf import (
    SVFStateError,
    adapter_state_dict,
    load_adapter_state_dict,
    load_svf_state_dict,
    svf_layers,
)
from tests.helpers.hydra import CONF_DIR, compose_config

STRATEGY_FILES = sorted(p.stem for p in (CONF_DIR / "finetune").glob("*.yaml"))
L234 = ("layer2", "layer3", "layer4")
WIDTH = 0.125
ATOL = 1e-5
X = torch.randn(2, 3, 33, 33, generator=torch.Generator().manual_seed(5))


class Net(FewShotModel):
    """The smallest FewShotModel: a real (narrow) ResNet-50 backbone and a 1x1 head."""

    def __init__(self, backbone: nn.Module) -> None:
        super().__init__()
        self.backbone = backbone
        self.head = nn.Conv2d(backbone.channels["layer4"], 2, 1)

    def forward(self, x: Tensor) -> dict[str, Tensor]:  # type: ignore[override]
        with self.backbone_grad():
            return self.backbone(x)


@pytest.fixture(scope="module")
def pretrained() -> dict[str, Tensor]:
    """The 'pretrained' backbone weights every model of this file starts from."""
    torch.manual_seed(123)
    backbone = build_backbone("resnet50", width_mult=WIDTH, warn_if_random=False)
    with torch.no_grad():  # non-trivial BN statistics, so restoring them is visible
        for m in backbone.modules():
            if isinstance(m, _BatchNorm):
                m.running_mean.uniform_(-0.2, 0.2)
                m.running_var.uniform_(0.5, 1.5)
    return {k: v.clone() for k, v in backbone.state_dict().items()}


def strategy_spec(stem: str, **overrides: Any) -> dict[str, Any]:
    """The finetune config of conf/finetune/<stem>.yaml as Hydra composes it (defaults resolved)."""
    spec = OmegaConf.to_container(compose_config("train", [f"finetune={stem}"]).finetune, resolve=True)
    assert isinstance(spec, dict)
    return {**spec, **overrides}


def build(weights: dict[str, Tensor], spec: dict[str, Any], seed: int = 0) -> Net:
    """A model with the given backbone weights and the strategy applied (in eval mode)."""
    torch.manual_seed(seed)  # a different random init than the weights: only loading makes them equal
    backbone = build_backbone("resnet50", width_mult=WIDTH, warn_if_random=False)
    backbone.load_state_dict(weights)
    model = Net(backbone)
    options = dict(spec)
    build_strategy(options.pop("name"), **options).apply(model)
    return model.eval()


def trainable(model: nn.Module) -> dict[str, Tensor]:
    return {n: p for n, p in model.backbone.named_parameters() if p.requires_grad}


def fine_tune(model: Net) -> None:
    """What a run does to the backbone: every trainable tensor moves, and BN statistics under ``bn``."""
    with torch.no_grad():
        for i, p in enumerate(trainable(model).values()):
            g = torch.Generator().manual_seed(1000 + i)
            p.add_(0.05 * torch.randn(p.shape, generator=g) * (p.abs().mean() + 0.1))
    params = list(trainable(model).values())
    if params:
        opt = torch.optim.SGD(params, lr=0.01)
        model.train()
        for _ in range(2):
            opt.zero_grad()
            loss = sum(f.tanh().mean() for f in model(X).values())  # bounded: finite steps
            loss.backward()
            opt.step()
        assert all(bool(torch.isfinite(p).all()) for p in params)
    model.eval()


def outputs(model: Net) -> dict[str, Tensor]:
    with torch.no_grad():
        return {k: v.clone() for k, v in model(X).items()}


def assert_same_outputs(got: dict[str, Tensor], want: dict[str, Tensor]) -> None:
    assert got.keys() == want.keys()
    for stage in want:
        err = float((got[stage] - want[stage]).abs().max())
        assert err <= ATOL, f"{stage}: max abs difference {err:.2e} > {ATOL}"


def roundtrip(path: Path, state: dict[str, Any]) -> dict[str, Any]:
    torch.save(state, path)
    return torch.load(path, weights_only=True)


def n_elements(state: dict[str, Any]) -> int:
    return sum(t.numel() for section in ("tensors", "modules") for t in state[section].values())


# ------------------------------------------------------------------------------ every strategy
def test_the_strategy_files_are_the_known_ones() -> None:
    """If this fails, a strategy file was added: the parametrised tests below already cover it."""
    assert {"freeze", "full", "part", "bn", "svf", "svf_bn", "svf_exp"} <= set(STRATEGY_FILES)


@pytest.mark.parametrize("stem", STRATEGY_FILES)
def test_artifact_restores_the_fine_tune_of_every_strategy(
    stem: str, pretrained: dict[str, Tensor], tmp_path: Path
) -> None:
    spec = strategy_spec(stem)
    model = build(pretrained, spec)
    before = outputs(model)
    fine_tune(model)
    trained = outputs(model)

    state = roundtrip(tmp_path / "a.pt", adapter_state_dict(model.backbone))
    assert state["format"] == "svfseg.svf" and state["version"] == 2
    # Every trainable backbone tensor is in the artifact, SVF factors under "tensors", the rest under
    # "modules" (by its backbone name, with the buffers of its module), and nothing else.
    factors = {f"{n}.{t}" for n, layer in svf_layers(model.backbone) for t, _ in layer.svf_tensors()}
    names = set(trainable(model))
    assert set(state["tensors"]) == names & factors
    owners = {n.rsplit(".", 1)[0] for n in names - factors}
    buffers = {
        f"{o}.{b}" for o in owners for b, _ in model.backbone.get_submodule(o).named_buffers(recurse=False)
    }
    assert set(state["modules"]) == (names - factors) | buffers
    for key, value in state["modules"].items():
        assert torch.equal(
            value, model.backbone.get_parameter(key) if key in names else model.backbone.get_buffer(key)
        )

    fresh = build(pretrained, spec, seed=1)
    if names:
        with pytest.raises(AssertionError):  # the fine-tune changed the outputs ...
            assert_same_outputs(outputs(fresh), trained)
    else:  # freeze: nothing to save
        assert n_elements(state) == 0
    assert_same_outputs(outputs(fresh), before)
    load_adapter_state_dict(fresh.backbone, state)
    assert_same_outputs(outputs(fresh), trained)  # ... and the artifact restores them


def test_svf_bn_artifact_holds_the_bn_affine_and_statistics(pretrained: dict[str, Tensor]) -> None:
    plain = build_backbone("resnet50", width_mult=WIDTH, warn_if_random=False)
    convs = [
        f"{s}.{n}" for s in L234 for n, m in getattr(plain, s).named_modules() if isinstance(m, nn.Conv2d)
    ]
    bns = [
        f"{s}.{n}"
        for s in L234
        for n, m in getattr(plain, s).named_modules()
        if isinstance(m, nn.BatchNorm2d)
    ]
    # ResNet-50 layer2-4: 13 blocks x 3 (conv, BN) pairs + 3 downsample (conv, BN) pairs
    assert len(convs) == len(bns) == 42

    model = build(pretrained, strategy_spec("svf_bn"))
    state = adapter_state_dict(model.backbone)
    assert sorted(state["tensors"]) == sorted(f"{c}.s" for c in convs)
    bn_keys = [
        f"{b}.{t}"
        for b in bns
        for t in ("weight", "bias", "running_mean", "running_var", "num_batches_tracked")
    ]
    assert len(state["modules"]) == 5 * 42 == len(bn_keys)
    assert sorted(state["modules"]) == sorted(bn_keys)

    svf_only = adapter_state_dict(build(pretrained, strategy_spec("svf")).backbone)
    assert sorted(svf_only["tensors"]) == sorted(state["tensors"]) and svf_only["modules"] == {}


# ------------------------------------------------------------------------------ the writer and its rule
def _module(model: Net, spec: dict[str, Any]) -> SimpleNamespace:
    """What write_svf_artifact reads from a FewShotSegModule."""
    return SimpleNamespace(model=model, finetune_spec=spec)


@pytest.mark.parametrize("stem", STRATEGY_FILES)
def test_writer_writes_a_complete_artifact_or_says_why_not(
    stem: str, pretrained: dict[str, Tensor], tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    spec = strategy_spec(stem)
    model = build(pretrained, spec)
    fine_tune(model)
    ckpt = tmp_path / "best.ckpt"
    artifact = svf_artifact_path(ckpt)
    artifact.write_bytes(b"stale artifact of an earlier save")
    expected = adapter_state_dict(model.backbone)
    size = n_elements(expected)
    total = sum(p.numel() for p in model.backbone.parameters())
    with caplog.at_level(logging.WARNING, logger="svfseg.lightning.checkpointing"):
        written = write_svf_artifact(_module(model, spec), ckpt)
    skip = [r.getMessage() for r in caplog.records if "complete record" in r.getMessage()]
    # freeze: nothing trains; full and part (layer2-4: about 97% of a ResNet-50): over half the backbone
    outcome = {"freeze": "none", "full": "skipped", "part": "skipped"}.get(stem, "written")
    assert outcome == (
        "none" if size == 0 else "skipped" if size > ARTIFACT_MAX_FRACTION * total else "written"
    )
    if outcome == "written":
        assert written == artifact and not skip
        state = torch.load(artifact, weights_only=True)
        assert state["finetune"] == spec
        assert set(state["tensors"]) == set(expected["tensors"])
        assert set(state["modules"]) == set(expected["modules"])
        fresh = build(pretrained, spec, seed=1)
        load_adapter_state_dict(fresh.backbone, state)
        assert_same_outputs(outputs(fresh), outputs(model))
    elif outcome == "skipped":
        assert written is None and not artifact.exists()  # no incomplete file, no stale one
        assert len(skip) == 1 and f"finetune={stem} " in skip[0]
        assert f"{size:,} backbone tensor elements" in skip[0]
        assert "no best.svf.pt is written; best.ckpt is the complete record" in skip[0]
    else:
        assert written is None and not skip and not artifact.exists()


def test_part_on_one_stage_writes_its_conv_weights(pretrained: dict[str, Tensor], tmp_path: Path) -> None:
    spec = strategy_spec("part", stages=["layer3"])
    model = build(pretrained, spec)
    fine_tune(model)
    written = write_svf_artifact(_module(model, spec), tmp_path / "best.ckpt")
    assert written == tmp_path / "best.svf.pt"
    state = torch.load(written, weights_only=True)
    convs = [
        f"layer3.{n}.weight" for n, m in model.backbone.layer3.named_modules() if isinstance(m, nn.Conv2d)
    ]
    assert len(convs) == 19 and sorted(state["modules"]) == sorted(convs) and state["tensors"] == {}
    fresh = build(pretrained, spec, seed=1)
    load_adapter_state_dict(fresh.backbone, state)
    assert_same_outputs(outputs(fresh), outputs(model))


def test_best_checkpoint_warns_once_per_run_under_full(
    pretrained: dict[str, Tensor], tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    spec = strategy_spec("full")
    model = build(pretrained, spec)
    saved: list[str] = []
    trainer = SimpleNamespace(
        save_checkpoint=lambda path, weights_only=False: saved.append(Path(path).name),
        global_step=0,
        is_global_zero=True,
        loggers=[],
        lightning_module=_module(model, spec),
    )
    callback = BestCheckpoint(dirpath=tmp_path)
    with caplog.at_level(logging.WARNING, logger="svfseg.lightning.checkpointing"):
        for _ in range(2):  # two improvements of the best score
            callback._save_checkpoint(trainer, str(tmp_path / "best.ckpt"))  # type: ignore[arg-type]
    assert saved == ["best.ckpt", "best.ckpt"] and not (tmp_path / "best.svf.pt").exists()
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and warnings[0].startswith("finetune=full trains ")


def test_best_checkpoint_rejects_a_bad_fraction() -> None:
    with pytest.raises(ValueError, match=r"artifact_max_fraction=1\.5 must be a number in \(0, 1\]"):
        BestCheckpoint(artifact_max_fraction=1.5)


# ------------------------------------------------------------------------------ refusals
def _params_snapshot(model: nn.Module) -> dict[str, Tensor]:
    return {k: v.clone() for k, v in model.backbone.state_dict().items() if isinstance(v, Tensor)}


def _assert_untouched(model: nn.Module, snapshot: dict[str, Tensor]) -> None:
    for k, v in model.backbone.state_dict().items():
        if isinstance(v, Tensor):
            assert torch.equal(v, snapshot[k]), k


def test_mismatched_artifacts_are_refused_naming_the_keys(pretrained: dict[str, Tensor]) -> None:
    svf_bn, svf = strategy_spec("svf_bn"), strategy_spec("svf")
    model = build(pretrained, svf_bn)
    fine_tune(model)
    state = adapter_state_dict(model.backbone)

    # the same strategy on other pretrained weights: the SVF layers' fingerprints differ
    other = {k: v + 0.01 if v.is_floating_point() else v for k, v in pretrained.items()}
    target = build(other, svf_bn, seed=1)
    snapshot = _params_snapshot(target)
    with pytest.raises(SVFStateError, match=r"other base weights: fingerprint mismatch at 42 of 42 layer"):
        load_adapter_state_dict(target.backbone, state)
    _assert_untouched(target, snapshot)

    # another strategy: svf trains no BN, so the BN tensors of the artifact have no trainable home
    target = build(pretrained, svf, seed=1)
    snapshot = _params_snapshot(target)
    with pytest.raises(
        SVFStateError,
        match=r"trainable in the model but not in the artifact: \[\]; in the artifact but frozen in the "
        r"model: \[layer2\.0\.bn1\.bias, .*\(\+202 more\)\]; in the artifact but not in the model: \[\]",
    ):
        load_adapter_state_dict(target.backbone, state)
    _assert_untouched(target, snapshot)

    # and the other way round: the svf_bn model trains BN tensors the svf artifact lacks
    svf_state = adapter_state_dict(build(pretrained, svf).backbone)
    target = build(pretrained, svf_bn, seed=1)
    with pytest.raises(
        SVFStateError,
        match=r"trainable in the model but not in the artifact: \[layer2\.0\.bn1\.bias, .*\(\+202 more\)\]",
    ):
        load_svf_state_dict(target.backbone, svf_state)

    # a tensor with the wrong shape, and one with no home at all
    bad = {**state, "modules": {**state["modules"], "layer3.0.bn2.weight": torch.ones(3)}}
    with pytest.raises(
        SVFStateError, match=r"'layer3\.0\.bn2\.weight' has shape \(3,\), model expects \(32,\)"
    ):
        load_adapter_state_dict(build(pretrained, svf_bn, seed=1).backbone, bad)
    homeless = {**state, "modules": {**state["modules"], "layer9.bn.weight": torch.ones(3)}}
    with pytest.raises(SVFStateError, match=r"not in the model: \[layer9\.bn\.weight\]"):
        load_adapter_state_dict(build(pretrained, svf_bn, seed=1).backbone, homeless)


def test_other_frozen_weights_are_refused_without_svf_layers(pretrained: dict[str, Tensor]) -> None:
    """bn and part convert nothing: the frozen fingerprint is what ties the artifact to its base."""
    spec = strategy_spec("bn")
    model = build(pretrained, spec)
    fine_tune(model)
    state = adapter_state_dict(model.backbone)
    assert state["layers"] == {} and state["tensors"] == {} and state["base_fingerprint"] == ""
    other = dict(pretrained)
    other["layer4.2.conv3.weight"] = other["layer4.2.conv3.weight"] * 1.001  # one frozen conv differs
    target = build(other, spec, seed=1)
    snapshot = _params_snapshot(target)
    with pytest.raises(
        SVFStateError, match=r"other base weights: the frozen tensors of the model .*frozen_fingerprint"
    ):
        load_adapter_state_dict(target.backbone, state)
    _assert_untouched(target, snapshot)


def test_version_1_artifacts_still_load_when_they_are_complete(pretrained: dict[str, Tensor]) -> None:
    spec = strategy_spec("svf")
    model = build(pretrained, spec)
    fine_tune(model)
    v2 = adapter_state_dict(model.backbone)
    v1 = {k: v2[k] for k in ("format", "base_fingerprint", "layers", "tensors")} | {"version": 1}
    fresh = build(pretrained, spec, seed=1)
    load_svf_state_dict(fresh.backbone, v1)
    assert_same_outputs(outputs(fresh), outputs(model))
    with pytest.raises(SVFStateError, match=r"\(a version 1 artifact holds SVF tensors only\)"):
        load_svf_state_dict(build(pretrained, strategy_spec("svf_bn"), seed=1).backbone, v1)


# ------------------------------------------------------------------------------ a real training run
@pytest.mark.slow
def test_training_run_writes_best_svf_pt_that_restores_best_ckpt(synthetic_pascal, tmp_path: Path) -> None:
    """train.py with finetune=svf_bn: BestCheckpoint writes s and the BN affine; restoring gives best.ckpt."""
    from svfseg.lightning.module import FewShotSegModule
    from svfseg.pretrain.proxy import pspnet_state_dict
    from svfseg.tasks.train import train
    from tests.helpers.hydra import tiny_train_config

    torch.manual_seed(7)
    base = build_backbone("resnet50", width_mult=WIDTH, warn_if_random=False)
    weights = tmp_path / "r50.pth"
    torch.save(pspnet_state_dict(base, nn.Conv2d(base.channels["layer4"], 3, 1)), weights)
    root, min_pixels = synthetic_pascal
    overrides = [
        "finetune=svf_bn",
        "test_after_fit=false",
        "trainer.max_epochs=1",
        f"backbone.pretrained={weights}",
    ]
    train(tiny_train_config(root, tmp_path / "run", min_pixels=min_pixels, extra=overrides))

    best = tmp_path / "run" / "checkpoints" / "best.ckpt"
    state = torch.load(svf_artifact_path(best), weights_only=True)
    spec = state["finetune"]
    assert spec["name"] == "svf" and spec["train_bn"] is True
    restored = FewShotSegModule.load_from_checkpoint(
        best, map_location="cpu", weights_only=True, strict=True, load_pretrained=False
    )
    trained = restored.model.backbone.eval()
    bns = [
        f"{s}.{n}" for s in L234 for n, m in getattr(trained, s).named_modules() if isinstance(m, _BatchNorm)
    ]
    assert sorted(state["modules"]) == sorted(
        f"{b}.{t}"
        for b in bns
        for t in ("weight", "bias", "running_mean", "running_var", "num_batches_tracked")
    )
    for key, value in state["modules"].items():  # the checkpoint's values, trained affine included
        assert torch.equal(
            value, trained.get_parameter(key) if key.endswith(("weight", "bias")) else trained.get_buffer(key)
        )

    fresh = Net(build_backbone("resnet50", pretrained=str(weights), width_mult=WIDTH))
    options = dict(spec)
    build_strategy(options.pop("name"), **options).apply(fresh)
    fresh.eval()
    moved = [
        k
        for k, v in state["modules"].items()
        if not torch.equal(
            v,
            fresh.backbone.get_parameter(k)
            if k.endswith(("weight", "bias"))
            else fresh.backbone.get_buffer(k),
        )
    ]
    assert any(k.endswith(("weight", "bias")) for k in moved)  # the run trained the BN affine
    load_adapter_state_dict(fresh.backbone, state)
    with torch.no_grad():
        assert_same_outputs(fresh.backbone(X), trained(X))
