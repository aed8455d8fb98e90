"""Test-time adaptation on the support (``eval.py tta.*``, docs/tta.md) on tiny synthetic runs.

* the loaded checkpoint's tensors are bitwise unchanged after an adapted evaluation, and the working
  copy's tuned tensors are restored bit for bit after every episode;
* an episode's prediction does not depend on the batch it came in, the episode order, or the query label;
  ``eval_batch_size=1`` and ``4`` give the same metrics, and so do 1 and 2 gloo processes (slow);
* k-shot steps cycle through the shots as pseudo-queries, each against all K shots;
* ``tta.steps=0`` is plain evaluation, bit for bit; ``steps > 0`` moves the parameters and the masks;
* every bad option is refused at start naming the key, the value and the fix.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import pytorch_lightning as pl
import torch
from torch import Tensor

from svfseg.config_checks import ConfigError
from svfseg.finetune.adapters import lora_layers
from svfseg.lightning.module import FewShotSegModule
from svfseg.svf import svf_layers
from svfseg.tasks.builders import build_datamodule
from svfseg.tasks.evaluate import evaluate
from svfseg.tasks.resolve import TrainRun
from svfseg.tasks.train import train
from svfseg.tta import SupportAdapter, TTAOptions
from tests.helpers.cli import REPO, run_cli
from tests.helpers.hydra import compose_config, tiny_train_config
from tests.tasks.test_ddp import DDP, _eval

STEPS = 3


def _train(synthetic_pascal: Any, out: Path, finetune: str) -> Path:
    root, min_pixels = synthetic_pascal
    train(
        tiny_train_config(
            root, out, min_pixels=min_pixels, extra=[f"finetune={finetune}", "test_after_fit=false"]
        )
    )
    ckpt = out / "checkpoints" / "last.ckpt"
    assert ckpt.is_file()
    return ckpt


@pytest.fixture(scope="module")
def ckpts(synthetic_pascal: Any, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A tiny SVF checkpoint and a tiny frozen-backbone one (no SVF layers)."""
    base = tmp_path_factory.mktemp("tta_ckpts")
    return {name: _train(synthetic_pascal, base / name, name) for name in ("svf", "freeze")}


def _load(ckpt: Path) -> FewShotSegModule:
    return FewShotSegModule.load_from_checkpoint(
        ckpt, map_location="cpu", weights_only=True, strict=True, load_pretrained=False
    ).eval()


def _eval_cfg(ckpt: Path, out: Path, extra: list[str]) -> Any:
    return compose_config(
        "eval",
        [
            f"ckpt_path={ckpt}",
            f"paths.output_dir={out}",
            "trainer.accelerator=cpu",
            "num_workers=0",
            "+trainer.enable_progress_bar=false",
            *extra,
        ],
    )


def _loader(synthetic_pascal: Any, tmp_path: Path, batch_size: int) -> Any:
    root, min_pixels = synthetic_pascal
    cfg = tiny_train_config(
        root, tmp_path / "unused", min_pixels=min_pixels, extra=[f"dataset.eval_batch_size={batch_size}"]
    )
    datamodule = build_datamodule(TrainRun.from_config(cfg))
    datamodule.setup("test")
    return datamodule.eval_dataloader(int(cfg.dataset.eval_seeds[0]))


def _batch(synthetic_pascal: Any, tmp_path: Path, batch_size: int = 4) -> dict[str, Any]:
    return next(iter(_loader(synthetic_pascal, tmp_path, batch_size)))


def _state(module: torch.nn.Module) -> dict[str, Tensor]:
    return {k: v.detach().clone() for k, v in module.state_dict().items() if torch.is_tensor(v)}


def _assert_bitwise_equal(a: dict[str, Tensor], b: dict[str, Tensor]) -> None:
    assert a.keys() == b.keys()
    for key, value in a.items():
        assert value.dtype == b[key].dtype and torch.equal(value, b[key]), key


# ------------------------------------------------------------------------------- parameters unchanged
@pytest.mark.parametrize(("ckpt_name", "params"), [("svf", "s"), ("svf", "lora"), ("freeze", "lora")])
def test_an_adapted_evaluation_leaves_every_checkpoint_tensor_unchanged(
    ckpts: dict[str, Path], synthetic_pascal: Any, tmp_path: Path, ckpt_name: str, params: str
) -> None:
    ckpt = ckpts[ckpt_name]
    module = _load(ckpt)
    stored = torch.load(ckpt, map_location="cpu", weights_only=True)["state_dict"]
    before = _state(module)
    _assert_bitwise_equal(before, {k: v for k, v in stored.items() if k in before})
    module.configure_tta(TTAOptions(steps=STEPS, params=params, lr=0.5))
    trainer = pl.Trainer(
        accelerator="cpu", devices=1, logger=False, enable_checkpointing=False, enable_progress_bar=False
    )
    root, min_pixels = synthetic_pascal
    cfg = tiny_train_config(root, tmp_path / "unused", min_pixels=min_pixels)
    trainer.test(
        module, datamodule=build_datamodule(TrainRun.from_config(cfg, training=False)), verbose=False
    )
    assert int(module.test_results["n_episodes"]) == int(cfg.dataset.n_episodes)
    _assert_bitwise_equal(_state(module), before)
    # nothing was injected into or converted in the loaded model; it still needs no gradient
    assert next(lora_layers(module.model), None) is None
    assert (next(svf_layers(module.model), None) is not None) == (ckpt_name == "svf")


@pytest.mark.parametrize("params", ["s", "lora"])
def test_the_working_copy_is_restored_bit_for_bit_after_every_episode(
    ckpts: dict[str, Path], synthetic_pascal: Any, tmp_path: Path, params: str
) -> None:
    adapter = SupportAdapter(_load(ckpts["svf"]).model, TTAOptions(steps=STEPS, params=params, lr=0.5))
    start = _state(adapter.model)
    batch = _batch(synthetic_pascal, tmp_path)
    one = {k: v[:1] for k, v in batch.items()}  # tensors and the host list ori_hw
    adapter._adapt(one["support_img"], one["support_mask"], one["class_idx"])
    moved = [
        n
        for n, p, p0 in zip(adapter.names, adapter.params, adapter.initial, strict=True)
        if not torch.equal(p, p0)
    ]
    assert moved, "no tuned tensor moved: the steps did nothing"
    adapter.restore()
    _assert_bitwise_equal(_state(adapter.model), start)
    adapter.predict(batch)
    _assert_bitwise_equal(_state(adapter.model), start)
    assert all(p.grad is None for p in adapter.params)
    # only the chosen tensors require grad in the copy: the head, BN and the frozen factors stay frozen
    trainable = {n for n, p in adapter.model.backbone.named_parameters() if p.requires_grad}
    assert trainable == set(adapter.names)
    assert all(not p.requires_grad for _, p in adapter.model.head_named_parameters())
    assert not adapter.model.training


# ------------------------------------------------------------------------------- independence
@pytest.mark.parametrize("params", ["s", "lora"])
def test_an_episode_does_not_depend_on_its_batch_order_or_the_query_label(
    ckpts: dict[str, Path], synthetic_pascal: Any, tmp_path: Path, params: str
) -> None:
    adapter = SupportAdapter(_load(ckpts["svf"]).model, TTAOptions(steps=STEPS, params=params, lr=0.5))
    batch = _batch(synthetic_pascal, tmp_path)
    together = adapter.predict(batch)
    order = [3, 1, 0, 2]
    shuffled = {k: v[order] if torch.is_tensor(v) else [v[i] for i in order] for k, v in batch.items()}
    shuffled["query_mask"] = torch.full_like(shuffled["query_mask"], 255)  # TTA never reads it
    assert torch.equal(adapter.predict(shuffled), together[order])
    for i in range(4):
        alone = {k: v[i : i + 1] for k, v in batch.items()}
        assert torch.equal(adapter.predict(alone), together[i : i + 1]), i


def test_k_shot_steps_cycle_through_the_shots_against_all_k_supports(
    ckpts: dict[str, Path], synthetic_pascal: Any, tmp_path: Path
) -> None:
    adapter = SupportAdapter(_load(ckpts["svf"]).model, TTAOptions(steps=5, params="s", lr=0.5))
    batch = _batch(synthetic_pascal, tmp_path)
    # a 2-shot episode from two episodes' supports (the baseline averages any number of shots)
    support_img = torch.cat([batch["support_img"][:1], batch["support_img"][1:2]], dim=1)
    support_mask = torch.cat([batch["support_mask"][:1], batch["support_mask"][1:2]], dim=1)
    seen: list[tuple[int, int, bool]] = []
    forward = adapter.model.forward

    def record(**kwargs: Any) -> Any:
        shots = [torch.equal(kwargs["query_img"][0], kwargs["support_img"][0, j]) for j in range(2)]
        shot = shots.index(True) if any(shots) else -1  # -1: the real query
        target = kwargs.get("query_mask")
        seen.append((shot, kwargs["support_img"].shape[1], target is not None))
        if target is not None:
            assert torch.equal(target, kwargs["support_mask"][:, shot])
        return forward(**kwargs)

    adapter.model.forward = record  # type: ignore[method-assign]
    two = {**batch, "support_img": support_img, "support_mask": support_mask}
    two = {k: v[:1] for k, v in two.items()}
    adapter.predict({**two, "query_img": batch["query_img"][:1]})
    # steps 0..4 use shots 0, 1, 0, 1, 0 as the pseudo-query with its mask, always against both shots
    assert [s for s in seen if s[2]] == [(0, 2, True), (1, 2, True), (0, 2, True), (1, 2, True), (0, 2, True)]
    assert len(seen) == 6 and seen[-1] == (-1, 2, False)  # then the query, without a target


def test_eval_batch_sizes_1_and_4_give_the_same_metrics(ckpts: dict[str, Path], tmp_path: Path) -> None:
    args = [f"tta.steps={STEPS}", "tta.lr=0.5"]
    one = evaluate(_eval_cfg(ckpts["svf"], tmp_path / "b1", [*args, "eval_batch_size=1"]))
    four = evaluate(_eval_cfg(ckpts["svf"], tmp_path / "b4", [*args, "eval_batch_size=4"]))
    for key in ("miou", "fbiou", "class_iou", "n_episodes"):
        assert one[key] == four[key], key


# ------------------------------------------------------------------------------- off / on
def test_steps_0_is_plain_evaluation_bit_for_bit(ckpts: dict[str, Path], tmp_path: Path) -> None:
    plain = evaluate(_eval_cfg(ckpts["svf"], tmp_path / "plain", []))
    off = evaluate(_eval_cfg(ckpts["svf"], tmp_path / "off", ["tta.steps=0", "tta.params=lora", "tta.lr=9"]))
    assert off == plain and "tta" not in off
    assert (tmp_path / "off" / "metrics.json").read_bytes() == (
        tmp_path / "plain" / "metrics.json"
    ).read_bytes()


@pytest.mark.parametrize("params", ["s", "lora"])
def test_steps_change_the_predicted_masks_and_metrics_json_records_the_setting(
    ckpts: dict[str, Path], synthetic_pascal: Any, tmp_path: Path, params: str
) -> None:
    module = _load(ckpts["svf"])
    batch = _batch(synthetic_pascal, tmp_path)
    with torch.no_grad():
        plain = module(batch, with_target=False).logits
    adapted = SupportAdapter(module.model, TTAOptions(steps=STEPS, params=params, lr=0.5)).predict(batch)
    assert (adapted.argmax(1) != plain.argmax(1)).any(), "no pixel of any episode changed class"

    record = evaluate(
        _eval_cfg(ckpts["svf"], tmp_path / "on", [f"tta.steps={STEPS}", f"tta.params={params}"])
    )
    written = json.loads((tmp_path / "on" / "metrics.json").read_text())
    assert written["tta"] == record["tta"]
    assert record["tta"]["steps"] == STEPS and record["tta"]["params"] == params
    assert record["tta"]["stages"] == ["layer2", "layer3", "layer4"] and record["tta"]["lr"] == 0.01
    assert ("rank" in record["tta"]) == (params == "lora")


# ------------------------------------------------------------------------------- errors
@pytest.mark.parametrize(
    ("override", "expected"),
    [
        ("tta.steps=-1", ["tta.steps=-1", "integer >= 0"]),
        ("tta.params=bias", ["tta.params='bias'", "use s", "lora"]),
        ("tta.lr=0", ["tta.lr=0", "positive number"]),
        ("tta.rank=0", ["tta.rank=0", "integer >= 1"]),
        ("tta.stages=[layer9]", ["tta.stages", "'layer9'", "choose from"]),
        ("+tta.step=5", ["unknown keys ['step']", "steps"]),
    ],
)
def test_a_bad_option_is_refused_at_start_naming_key_value_and_fix(
    ckpts: dict[str, Path], tmp_path: Path, override: str, expected: list[str]
) -> None:
    with pytest.raises(ConfigError) as err:
        evaluate(_eval_cfg(ckpts["svf"], tmp_path / "out", ["tta.steps=2", override]))
    for text in expected:
        assert text in str(err.value), (text, str(err.value))
    assert not (tmp_path / "out").exists()  # refused before anything is written


def test_tta_params_s_on_a_checkpoint_without_svf_layers_names_the_fix(
    ckpts: dict[str, Path], tmp_path: Path
) -> None:
    with pytest.raises(ConfigError) as err:
        evaluate(_eval_cfg(ckpts["freeze"], tmp_path / "out", ["tta.steps=2", "tta.params=s"]))
    message = str(err.value)
    assert "tta.params=s" in message and "finetune=freeze" in message and "tta.params=lora" in message
    assert not (tmp_path / "out").exists()
    with pytest.raises(ConfigError, match=r"tta.stages=\['layer2', 'layer3', 'layer4'\]"):
        evaluate(_eval_cfg(ckpts["svf"], tmp_path / "out", ["tta.steps=2", "tta.stages=[layer1,layer2]"]))


def test_eval_cli_exits_with_status_2_and_one_line_per_bad_option(
    ckpts: dict[str, Path], tmp_path: Path
) -> None:
    proc = run_cli(
        [
            str(REPO / "eval.py"),
            f"ckpt_path={ckpts['svf']}",
            "tta.steps=2",
            "tta.lr=-1",
            "n_episodes=0",
            f"hydra.run.dir={tmp_path / 'run'}",
        ],
        tmp_path,
        ok=False,
    )
    assert proc.returncode == 2
    out = proc.stdout + proc.stderr
    assert "tta.lr=-1 is invalid" in out and "n_episodes" in out
    assert "Traceback" not in out


# ------------------------------------------------------------------------------- processes
@pytest.mark.slow
def test_two_gloo_processes_give_the_metrics_of_one(ckpts: dict[str, Path], tmp_path: Path) -> None:
    # LoRA: the adapters are inserted into each rank's working copy at test time, the path with more to go
    # wrong across processes than tuning the singular values in place (one process covers both above)
    args = [f"tta.steps={STEPS}", "tta.params=lora", "tta.lr=0.5"]
    one = _eval(ckpts["svf"], tmp_path / "one", ["trainer.accelerator=cpu", "trainer.devices=1", *args])
    two = _eval(ckpts["svf"], tmp_path / "two", [*DDP, *args])
    assert one["n_episodes"] == two["n_episodes"]
    for key in ("miou", "fbiou", "class_iou", "tta"):
        assert two[key] == one[key], key
