"""finetune=lora / dora (peft) and bitfit: exact trainable sets, counts from the layer shapes, exactness at
initialisation, merge round trip, checkpoints without re-initialisation, and whole runs (train, resume,
merged evaluation, export, predict) on the synthetic data at tiny widths."""

from __future__ import annotations

import copy
import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image
from torch import Tensor, nn
from torch.nn.modules.batchnorm import _BatchNorm

from svfseg.backbones import build_backbone
from svfseg.finetune import build_strategy, check_param_groups
from svfseg.finetune.adapters import lora_layers, merge_lora
from svfseg.finetune.param_counts import closest_rank, lora_count
from svfseg.inference import Predictor
from svfseg.inference.export import export_run, load_exported
from svfseg.lightning.checkpointing import svf_artifact_path
from svfseg.lightning.module import FewShotSegModule
from svfseg.svf import load_adapter_state_dict, svf_layers
from svfseg.tasks.builders import build_datamodule
from svfseg.tasks.evaluate import evaluate
from svfseg.tasks.predict import predict
from svfseg.tasks.resolve import TrainRun
from svfseg.tasks.train import train
from tests.helpers.hydra import compose_config, tiny_train_config
from tests.helpers.models import Net, train_steps

WIDTH = 0.125
L234 = ("layer2", "layer3", "layer4")
VIT_TINY = {"embed_dim": 32, "depth": 4, "num_heads": 2}
KERNEL = {"3x3": (3, 3), "1x1": (1, 1)}


def backbone(name: str) -> nn.Module:
    if name.startswith("dinov2"):
        return build_backbone(name, warn_if_random=False, **VIT_TINY)
    if name.startswith("efficientnet"):
        return build_backbone(name, warn_if_random=False)
    return build_backbone(name, width_mult=WIDTH, warn_if_random=False)


def net(name: str = "resnet50", seed: int = 0) -> Net:
    torch.manual_seed(seed)
    return Net(backbone(name))


def stage_names(stages: list[int] | None) -> tuple[str, ...]:
    return L234 if stages is None else tuple(f"layer{s}" for s in stages)


def plain_targets(bb: nn.Module, stages: tuple[str, ...], target: str) -> list[nn.Module]:
    """The layers LoRA should wrap, found here from the module types and shapes alone."""
    out = []
    for stage in stages:
        for m in getattr(bb, stage).modules():
            if type(m) is nn.Conv2d and m.groups == 1 and target != "linear":
                if target == "all" or tuple(m.kernel_size) == KERNEL[target]:
                    out.append(m)
            elif type(m) is nn.Linear and target in ("all", "linear"):
                out.append(m)
    return out


def expected_lora(layers: list[nn.Module], rank: int, dora: bool) -> int:
    """r (C_in k k) + C_out r per conv, r (in + out) per Linear; DoRA: + C_out magnitudes."""
    total = 0
    for m in layers:
        if isinstance(m, nn.Conv2d):
            co, ci, kh, kw = m.weight.shape
            total += rank * ci * kh * kw + co * rank + (co if dora else 0)
        else:
            out_f, in_f = m.weight.shape
            total += rank * in_f + out_f * rank + (out_f if dora else 0)
    return total


def expected_bitfit(bb: nn.Module, stages: tuple[str, ...]) -> int:
    """BN / LayerNorm weight and bias, plus the bias of every conv and Linear that has one."""
    total = 0
    for stage in stages:
        for m in getattr(bb, stage).modules():
            if isinstance(m, (_BatchNorm, nn.LayerNorm)):
                total += m.weight.numel() + m.bias.numel()
            elif isinstance(m, (nn.Conv2d, nn.Linear)) and m.bias is not None:
                total += m.bias.numel()
    return total


def trainable(model: nn.Module) -> dict[str, Tensor]:
    return {n: p for n, p in model.named_parameters() if p.requires_grad}


def backbone_trainable(model: Net) -> int:
    return sum(p.numel() for p in model.backbone.parameters() if p.requires_grad)


def leaves(module: nn.Module) -> list[nn.Module]:
    return [m for m in module.modules() if not list(m.children())]


def bn_modes(module: nn.Module) -> set[bool]:
    return {m.training for m in module.modules() if isinstance(m, _BatchNorm)}


# ------------------------------------------------------------------------------- counts and sets
COUNT_CASES = [
    ("resnet50", "lora", {}),
    ("resnet50", "dora", {"target": "3x3", "stages": [3, 4], "rank": 3}),
    ("resnet50", "lora", {"target": "1x1", "rank": 2, "stages": [1]}),
    ("vgg16_bn", "dora", {"rank": 4}),
    ("efficientnet_lite0", "lora", {"rank": 4}),  # depthwise convs are no targets
    ("dinov2_vits14", "lora", {"target": "linear"}),
    ("dinov2_vits14", "dora", {"stages": [0, 4], "rank": 2}),  # the patch-embedding conv + Linears
    ("resnet50", "bitfit", {}),
    ("vgg16_bn", "bitfit", {"stages": [1, 2]}),  # conv biases + BN affine
    ("dinov2_vits14", "bitfit", {}),  # Linear biases + LayerNorm affine
]


@pytest.mark.parametrize(("bb", "name", "options"), COUNT_CASES)
def test_trainable_count_equals_the_count_from_the_layer_shapes(bb: str, name: str, options: dict) -> None:
    model = net(bb)
    stages = stage_names(options.get("stages"))
    if name == "bitfit":
        expected = expected_bitfit(model.backbone, stages)
        targets: list[nn.Module] = []
    else:
        targets = plain_targets(model.backbone, stages, options.get("target", "all"))
        expected = expected_lora(targets, options.get("rank", 8), dora=name == "dora")
    groups = build_strategy(name, **options).apply(model)
    check_param_groups(model, groups)
    assert backbone_trainable(model) == expected > 0
    assert [g["name"] for g in groups] == ["head", *(f"backbone.{s}" for s in stages)]
    assert all(g["lr_mult"] == (1.0 if g["name"] == "head" else 0.1) for g in groups)
    assert len(list(lora_layers(model.backbone))) == len(targets)
    assert model.backbone_trainable and model.frozen_bn
    model.train()
    assert bn_modes(model.backbone) <= {False}


def test_lora_names_and_state_dict_keys() -> None:
    model = net()
    build_strategy("dora", stages=[4], target="1x1").apply(model)
    names = set(trainable(model.backbone))
    assert "layer4.0.conv1.lora_A.default.weight" in names
    assert "layer4.0.downsample.0.lora_magnitude_vector.default.weight" in names
    assert "layer4.0.conv2.lora_A.default.weight" not in names  # a 3x3 conv
    keys = set(model.backbone.state_dict())
    assert "layer4.0.conv1.base_layer.weight" in keys and "layer4.0.conv1.weight" not in keys
    assert "layer4.0.conv2.weight" in keys  # untouched layers keep their keys


@pytest.mark.parametrize(
    ("bb", "name", "options", "match"),
    [
        ("resnet50", "lora", {"rank": 0}, r"rank=0 is invalid: use an integer >= 1 .* or match_svf"),
        ("resnet50", "lora", {"rank": "auto"}, r"rank='auto' is invalid"),
        ("resnet50", "dora", {"alpha": -1}, r"alpha=-1 is invalid: use a positive number, or null"),
        ("resnet50", "lora", {"dropout": 1.0}, r"dropout=1.0 is invalid: use a number in \[0, 1\)"),
        ("resnet50", "lora", {"target": "5x5"}, r"target='5x5' is invalid: choose one of"),
        ("resnet50", "lora", {"stages": [7]}, r"stages contains 7, which is not a backbone stage"),
        ("resnet50", "bitfit", {"rank": 4}, r"finetune=bitfit does not take option\(s\) \['rank'\]"),
    ],
)
def test_invalid_options_name_the_key_and_the_fix(bb: str, name: str, options: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        build_strategy(name, **options)


@pytest.mark.parametrize(
    ("bb", "options", "match"),
    [
        ("resnet50", {"target": "linear"}, r"target='linear' selects no layer in backbone stage layer2 .*"),
        ("vgg16_bn", {"target": "1x1"}, r"target='1x1' selects no layer .* \['3x3 conv'\]"),
        ("efficientnet_lite0", {"target": "3x3"}, r"5x5 conv \(grouped\).* never LoRA targets"),
    ],
)
def test_a_target_kind_a_stage_lacks_is_refused(bb: str, options: dict, match: str) -> None:
    model = net(bb)
    with pytest.raises(ValueError, match=match):
        build_strategy("lora", **options).apply(model)
    assert next(lora_layers(model.backbone), None) is None  # nothing was injected


def test_injecting_twice_is_refused() -> None:
    model = net()
    build_strategy("lora").apply(model)
    with pytest.raises(ValueError, match="already holds LoRA layers; adapters are injected once"):
        build_strategy("lora").apply(model)


# ------------------------------------------------------------------------------- rank=match_svf
@pytest.mark.parametrize(
    ("bb", "name", "options"),
    [("resnet50", "lora", {}), ("resnet50", "dora", {"target": "3x3"}), ("dinov2_vits14", "lora", {})],
)
def test_match_svf_picks_the_rank_closest_to_svf(bb: str, name: str, options: dict) -> None:
    model = net(bb)
    svf_model = copy.deepcopy(model)
    build_strategy("svf").apply(svf_model)
    svf = backbone_trainable(svf_model)
    targets = plain_targets(model.backbone, L234, options.get("target", "all"))
    counts = {r: expected_lora(targets, r, dora=name == "dora") for r in range(1, 65)}
    best = min(counts, key=lambda r: (abs(counts[r] - svf), r))
    strategy = build_strategy(name, rank="match_svf", **options)
    strategy.apply(model)
    assert strategy.resolved_rank == best
    assert backbone_trainable(model) == counts[best]


def test_closest_rank_ties_go_to_the_smaller_rank() -> None:
    layers = [nn.Linear(3, 2), nn.Conv2d(2, 4, 3)]  # 5 + (18 + 4) = 27 per rank; DoRA + 2 + 4
    assert lora_count(layers, 1, dora=False) == 27 and lora_count(layers, 2, dora=True) == 60
    assert closest_rank(layers, 27 * 5, dora=False) == 5
    assert closest_rank(layers, 27 * 5 + 13, dora=False) == 5  # 13 below the midpoint 13.5
    assert closest_rank(layers, 27 * 5 + 14, dora=False) == 6
    assert closest_rank([nn.Linear(1, 1)], 3, dora=False) == 1  # 2 and 4 are both 1 away: the smaller
    assert closest_rank(layers, 1, dora=True) == 1  # never below rank 1


# ------------------------------------------------------------------------------- exactness and merging
@pytest.mark.parametrize(
    ("name", "options"),
    [("lora", {"rank": 4}), ("dora", {"rank": 4, "dropout": 0.1}), ("lora", {"rank": 2, "alpha": 7.0})],
)
def test_exact_at_initialisation_and_merged_equals_unmerged(name: str, options: dict) -> None:
    model = net().double().eval()
    x = torch.randn(2, 3, 41, 41, dtype=torch.float64)
    with torch.no_grad():
        before = model.backbone(x)
    build_strategy(name, **options).apply(model)
    model.eval()
    with torch.no_grad():
        init = model.backbone(x)
        for key, value in before.items():
            torch.testing.assert_close(init[key], value, rtol=1e-10, atol=1e-10)
        for p in trainable(model.backbone).values():
            p.add_(0.1 * torch.randn_like(p) * (p.abs().mean() + 0.1))
        unmerged = model.backbone(x)
    # layer3/layer4 of the PSPNet ResNet are dilated: the adapter branch uses the base conv's geometry
    dilated = [(n, m) for n, m in lora_layers(model.backbone) if m.get_base_layer().dilation != (1, 1)]
    assert dilated and all(
        a.dilation == m.get_base_layer().dilation for _, m in dilated for a in m.lora_A.values()
    )
    merged_names = merge_lora(model.backbone)
    assert len(merged_names) == len(plain_targets(net().backbone, L234, "all"))
    assert next(lora_layers(model.backbone), None) is None
    assert all(type(m).__module__.startswith("torch.nn") for m in leaves(model.backbone))
    with torch.no_grad():
        merged = model.backbone(x)
    for key, value in unmerged.items():
        # the adapters of layer2-4 changed the function ...
        assert torch.equal(value, before[key]) == (key not in L234)
        torch.testing.assert_close(merged[key], value, rtol=1e-9, atol=1e-9)  # ... and merging keeps it


@pytest.mark.parametrize("name", ["lora", "dora", "bitfit"])
def test_checkpoint_loads_strictly_into_the_structure_without_reinitialising(name: str) -> None:
    trained_model = net(seed=0)
    build_strategy(name).apply(trained_model)
    with torch.no_grad():
        for p in trainable(trained_model).values():
            p.add_(0.05 * torch.randn_like(p))
    state = trained_model.state_dict()
    fresh = net(seed=1)  # other random weights: only the state dict makes them equal
    build_strategy(name).apply(fresh, from_checkpoint=True)
    fresh.load_state_dict(state, strict=True)
    for key, value in fresh.state_dict().items():
        assert torch.equal(value, state[key]), key
    x = torch.randn(1, 3, 33, 33)
    trained_model.eval(), fresh.eval()
    with torch.no_grad():
        assert torch.equal(fresh(x).logits, trained_model(x).logits)


@pytest.mark.parametrize(
    ("name", "options"),
    [("lora", {}), ("dora", {"dropout": 0.2, "checkpointing": True}), ("bitfit", {"backbone_lr_mult": 0.5})],
)
def test_sgd_steps_change_exactly_the_selection_and_no_bn_statistic(name: str, options: dict) -> None:
    model = net()
    groups = build_strategy(name, **options).apply(model)
    assert model.checkpointed_stages == (L234 if options.get("checkpointing") else ())
    model.train()
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    stats = {n: b.clone() for n, b in model.backbone.named_buffers()}
    optimizer = torch.optim.SGD([{"params": g["params"], "lr": 0.5 * g["lr_mult"]} for g in groups])
    train_steps(model, optimizer, 2)
    changed = {n for n, p in model.named_parameters() if not torch.equal(p, before[n])}
    assert changed == set(trainable(model))
    assert all(torch.equal(b, stats[n]) for n, b in model.backbone.named_buffers())


# ------------------------------------------------------------------------------- whole runs
RUNS = {
    "lora": ["finetune=lora", "finetune.rank=4"],
    "dora": ["finetune=dora", "finetune.rank=2", "finetune.dropout=0.1", "finetune.target=3x3"],
    "bitfit": ["finetune=bitfit"],
}
COMMON = ["trainer.deterministic=true", "optim.schedule=constant"]


def _train(synthetic_pascal: Any, out: Path, extra: list[str]) -> dict[str, Any]:
    root, min_pixels = synthetic_pascal
    return train(tiny_train_config(root, out, min_pixels=min_pixels, extra=extra))


@pytest.fixture(scope="module", params=list(RUNS))
def runs(request: pytest.FixtureRequest, synthetic_pascal: Any, tmp_path_factory: pytest.TempPathFactory):
    """Per strategy: 2 epochs in one go, and 1 epoch then resumed from its last.ckpt for a second."""
    name = request.param
    base = tmp_path_factory.mktemp(name)
    whole, resumed = base / "whole", base / "resumed"
    args = [*RUNS[name], *COMMON]
    _train(synthetic_pascal, whole, [*args, "trainer.max_epochs=2", "test_after_fit=false"])
    _train(synthetic_pascal, resumed, [*args, "trainer.max_epochs=1", "test_after_fit=false"])
    metrics = _train(
        synthetic_pascal,
        resumed,
        [
            *args,
            "trainer.max_epochs=2",
            f"ckpt_path={resumed / 'checkpoints' / 'last.ckpt'}",
            "resume_changes=[trainer.max_epochs]",
        ],
    )
    return {
        "name": name,
        "whole": whole,
        "resumed": resumed,
        "metrics": metrics,
        "root": synthetic_pascal[0],
        "data": synthetic_pascal,
    }


def _load(path: Path) -> FewShotSegModule:
    return FewShotSegModule.load_from_checkpoint(
        path, map_location="cpu", weights_only=True, strict=True, load_pretrained=False
    ).eval()


def _eval_loader(run: dict[str, Any]) -> Any:
    """The first evaluation seed's loader of the run's config (the fixed test episodes)."""
    root, min_pixels = run["data"]
    cfg = tiny_train_config(root, run["resumed"] / "unused", min_pixels=min_pixels, extra=RUNS[run["name"]])
    datamodule = build_datamodule(TrainRun.from_config(cfg))
    datamodule.setup("test")
    return datamodule.eval_dataloader(int(cfg.dataset.eval_seeds[0]))


def _eval_batch(run: dict[str, Any]) -> dict[str, Tensor]:
    return next(iter(_eval_loader(run)))


def _eval_dataset(run: dict[str, Any]) -> Any:
    return _eval_loader(run).dataset


def test_resumed_run_equals_the_uninterrupted_one(runs: dict[str, Any]) -> None:
    a = torch.load(runs["whole"] / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    b = torch.load(runs["resumed"] / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    assert a["global_step"] == b["global_step"] == 8
    assert a["state_dict"].keys() == b["state_dict"].keys()
    for key, value in a["state_dict"].items():
        torch.testing.assert_close(b["state_dict"][key], value, rtol=1e-5, atol=1e-6, msg=key)
    assert any(".base_layer." in k for k in b["state_dict"]) == (runs["name"] != "bitfit")
    assert b["hyper_parameters"]["run"]["finetune"]["name"] == runs["name"]


def test_checkpoint_and_adapter_artifact_restore_the_fine_tune(runs: dict[str, Any]) -> None:
    best = runs["resumed"] / "checkpoints" / "best.ckpt"
    module = _load(best)  # the strategy from the stored spec, then a strict load
    state = torch.load(best, map_location="cpu", weights_only=True)["state_dict"]
    assert module.state_dict().keys() == state.keys()
    assert all(torch.equal(v, state[k]) for k, v in module.state_dict().items())
    assert (next(lora_layers(module.model.backbone), None) is not None) == (runs["name"] != "bitfit")
    assert next(svf_layers(module.model.backbone), None) is None

    artifact = torch.load(svf_artifact_path(best), map_location="cpu", weights_only=True)
    names = {n for n, p in module.model.backbone.named_parameters() if p.requires_grad}
    assert names and names <= set(artifact["modules"]) and not artifact["tensors"]
    assert artifact["finetune"]["name"] == runs["name"]
    saved = {n: p.detach().clone() for n, p in module.model.backbone.named_parameters() if n in names}
    with torch.no_grad():
        for n, p in module.model.backbone.named_parameters():
            if n in names:
                p.zero_()
    load_adapter_state_dict(module.model.backbone, artifact)
    for n, p in module.model.backbone.named_parameters():
        if n in names:
            assert torch.equal(p, saved[n]), n


def test_merged_evaluation_equals_unmerged_and_eval_reproduces_the_metrics(
    runs: dict[str, Any], tmp_path: Path
) -> None:
    best = runs["resumed"] / "checkpoints" / "best.ckpt"
    batch = _eval_batch(runs)
    merged, unmerged = Predictor(_load(best), device="cpu"), Predictor(_load(best), device="cpu", merge=False)
    n_lora = len(list(lora_layers(unmerged.model.backbone)))
    assert len(merged.merged_lora) == n_lora and next(lora_layers(merged.model), None) is None
    args = (batch["query_img"], batch["support_img"][0], batch["support_mask"][0])
    torch.testing.assert_close(merged.logits(*args), unmerged.logits(*args), rtol=1e-5, atol=1e-5)

    cfg = compose_config(
        "eval",
        [
            f"ckpt_path={best}",
            f"paths.output_dir={tmp_path / 'eval'}",
            "trainer.accelerator=cpu",
            "num_workers=0",
        ],
    )
    result = evaluate(cfg)
    assert result["miou"] == runs["metrics"]["miou"]  # the same checkpoint on the same fixed episodes


def test_export_is_a_plain_network_and_predict_writes_masks(runs: dict[str, Any], tmp_path: Path) -> None:
    best = runs["resumed"] / "checkpoints" / "best.ckpt"
    module = _load(best)
    record = export_run(best, tmp_path / "export")
    plain = load_exported(tmp_path / "export")
    assert all(type(m).__module__.startswith("torch.nn") for m in leaves(plain.backbone))
    has_adapters = runs["name"] != "bitfit"
    assert record["merged_lora_layers"] == len(list(lora_layers(module.model.backbone)))
    assert (record["files"].get("svf") == "svf.pt") == has_adapters
    batch = _eval_batch(runs)
    with torch.inference_mode():
        ref = module(batch, with_target=False).logits
        out = plain(batch["query_img"], batch["support_img"], batch["support_mask"]).logits
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5)

    dataset = _eval_dataset(runs)
    root, table = Path(runs["root"]), dataset.table
    (support, support_mask), query = table.supports[0][0], root / table.queries[0][0]
    cfg = compose_config(
        "predict",
        [
            f"ckpt_path={runs['resumed']}",
            f"support=[{root / support}]",
            f"support_masks=[{root / support_mask}]",
            f"support_class={table.class_ids[0]}",
            f"query={query}",
            f"paths.output_dir={tmp_path / 'predict'}",
            "progress=false",
        ],
    )
    predict(cfg)
    saved = json.loads((tmp_path / "predict" / "predictions.json").read_text())
    assert saved["merged_lora_layers"] == record["merged_lora_layers"]
    mask = np.array(Image.open(tmp_path / "predict" / "masks" / f"{query.stem}.png"))
    assert mask.shape == np.array(Image.open(query)).shape[:2] and set(np.unique(mask).tolist()) <= {0, 1}


def test_lora_on_the_linears_of_a_vit_trains_and_exports(synthetic_pascal: Any, tmp_path: Path) -> None:
    result = _train(
        synthetic_pascal,
        tmp_path / "vit",
        [
            "backbone=dinov2_vits14",
            "backbone.pretrained=null",
            "+backbone.depth=4",
            "finetune=lora",
            "finetune.target=linear",
            "finetune.rank=2",
        ],
    )
    module = _load(Path(result["checkpoint"]))
    layers = [n for n, _ in lora_layers(module.model.backbone)]
    # 4 Linears per block (qkv, proj, fc1, fc2), one block per stage with depth 4
    assert len(layers) == 4 * 3 and all(n.split(".")[0] in L234 for n in layers)
    record = export_run(result["checkpoint"], tmp_path / "export")
    assert record["merged_lora_layers"] == 12
    plain = load_exported(tmp_path / "export")
    assert math.isfinite(sum(float(p.sum()) for p in plain.parameters()))
