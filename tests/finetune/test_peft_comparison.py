"""Issue 24's PEFT comparison (docs/peft-comparison.md): the ``conf/experiment/peft`` rows set the fine-tune
strategy only, compose with the real-image benchmark's and the synthetic demo's overrides, and build models
whose trainable count is the budget tool's; train.py and eval.py record that count in ``metrics.json``."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import yaml

from svfseg.demo.real import RealDemoSettings
from svfseg.demo.synthetic import DemoSettings
from svfseg.finetune.budget import compose_train, config_budget
from svfseg.tasks.evaluate import evaluate
from svfseg.tasks.train import train
from tests.finetune.test_finetune_budget import built_counts
from tests.helpers.hydra import CONF_DIR, compose_config, tiny_train_config

ROOT = CONF_DIR.parent
PEFT_DIR = CONF_DIR / "experiment" / "peft"
# row file -> (finetune file it selects, finetune.name, the row label, the options the file sets)
ROWS: dict[str, tuple[str, str, str, dict[str, object]]] = {
    "freeze": ("freeze", "freeze", "freeze", {}),
    "svf": ("svf", "svf", "SVF", {}),
    "svf_top": ("svf_top", "svf", "SVF top-k (k=0.25)", {"k": 0.25}),
    "svf_bottom": ("svf_bottom", "svf", "SVF bottom-k (k=0.25)", {"k": 0.25}),
    "salt": ("salt", "svf", "SALT (k=0.25, r=4)", {"k": 0.25, "residual_rank": 4}),
    "lora_match": ("lora", "lora", "LoRA r=match_svf", {"rank": "match_svf"}),
    "lora_r8": ("lora", "lora", "LoRA r=8", {"rank": 8}),
    "dora": ("dora", "dora", "DoRA r=8", {"rank": 8}),
    "bitfit": ("bitfit", "bitfit", "BitFit", {}),
    "full": ("full", "full", "full fine-tune", {}),
}
# Trainable backbone parameters on EfficientNet-Lite0 (full width, layer2-4 where a strategy has stages),
# as `python -m svfseg.finetune.budget experiment=peft/<row> backbone=efficientnet_lite0` prints them.
LITE0 = {
    "freeze": 0,
    "svf": 11_880,
    "svf_top": 9_486,
    "svf_bottom": 9_486,
    "salt": 38_124,
    "lora_match": 20_568,  # rank 1
    "lora_r8": 164_544,
    "dora": 174_976,
    "bitfit": 38_240,
    "full": 2_958_848,
}


def folder_dataset(root: Path) -> Path:
    """A dataset folder's class and fold records (what composing and building read; no image needed)."""
    root.mkdir(parents=True)
    (root / "classes.txt").write_text("".join(f"class {c}\n" for c in range(1, 9)))
    (root / "folds.json").write_text(json.dumps({str(k): [2 * k + 1, 2 * k + 2] for k in range(4)}))
    (root / "train.txt").write_text("a\n")
    (root / "val.txt").write_text("b\n")
    return root


def real_overrides(root: Path) -> list[str]:
    return ["dataset=folder", f"dataset.root={root}", "backbone=efficientnet_lite0", "method=baseline"]


def real_benchmark_overrides(row: str, root: Path, tmp_path: Path) -> list[str]:
    """The overrides of one run of ``python -m svfseg.demo --study --strategies peft/<row>``."""
    settings = RealDemoSettings()
    return settings.overrides(
        root,
        tmp_path / "lite0.pth",
        tmp_path / "run",
        f"peft/{row}",
        0,
        tmp_path / "head.ckpt",
    )


def synthetic_overrides(row: str, tmp_path: Path) -> list[str]:
    """``make demo-synthetic``'s overrides of one run with the fine-tune choice replaced by the row."""
    demo = DemoSettings().overrides(tmp_path / "syn", tmp_path / "proxy.pth", tmp_path / "run", "freeze", 0)
    assert "finetune=freeze" in demo
    return [o for o in demo if o != "finetune=freeze"] + [f"experiment=peft/{row}"]


def test_the_row_files_set_the_finetune_choice_and_its_options_only() -> None:
    assert sorted(p.stem for p in PEFT_DIR.glob("*.yaml")) == sorted(ROWS)
    for stem, (choice, _, label, options) in ROWS.items():
        data = yaml.safe_load((PEFT_DIR / f"{stem}.yaml").read_text())
        assert (PEFT_DIR / f"{stem}.yaml").read_text().startswith("# @package _global_\n"), stem
        assert data["defaults"] == [{"override /finetune": choice}], stem
        assert (data["table"], data["row"]) == ("peft", label), stem
        assert data.get("finetune", {}) == options, stem
        assert set(data) <= {"defaults", "table", "row", "finetune"}, stem  # no dataset/backbone/method


@pytest.mark.parametrize("row", sorted(ROWS))
def test_each_row_composes_on_both_benchmarks_and_trains_what_the_budget_tool_counts(
    row: str, tmp_path: Path
) -> None:
    _, name, label, options = ROWS[row]
    root = folder_dataset(tmp_path / "ccp-129")
    real = [f"experiment=peft/{row}", *real_overrides(root)]
    plain = compose_train(real)
    demo = compose_train(real_benchmark_overrides(row, root, tmp_path))
    synthetic = compose_train(synthetic_overrides(row, tmp_path))
    for cfg in (plain, demo, synthetic):
        assert (cfg.table, cfg.row, cfg.finetune.name) == ("peft", label, name)
        assert all(cfg.finetune[k] == v for k, v in options.items()), row
        assert cfg.method.name == "baseline"
        assert cfg.optim.schedule == "cosine"  # optim/svf for every row, the frozen one included
    assert (plain.dataset.name, plain.backbone.name) == ("folder", "efficientnet_lite0")
    # the benchmarks' own settings survive the row: the demo's backbone lr, the synthetic demo's width
    assert (demo.dataset.name, demo.backbone.name, demo.optim.lr) == ("folder", "efficientnet_lite0", 0.1)
    if name != "freeze":
        assert demo.finetune.backbone_lr_mult == 0.1
    assert (synthetic.dataset.name, synthetic.backbone.name) == ("synthetic", "resnet50")
    assert synthetic.backbone.width_mult == 0.125 and synthetic.method.reduce_dim == 64

    lite0 = config_budget(plain)
    assert lite0.backbone_trainable == LITE0[row]
    assert lite0.trainable == built_counts(real)  # real weights, the strategy's full apply
    demo_backbone = {k: n for k, n in config_budget(demo).trainable.items() if k != "head"}
    assert demo_backbone == {
        k: n for k, n in lite0.trainable.items() if k != "head"
    }  # the demo's head is smaller
    narrow = synthetic_overrides(row, tmp_path)
    assert config_budget(synthetic).trainable == built_counts(narrow)
    if name in ("lora", "dora"):
        assert lite0.rank == (1 if options["rank"] == "match_svf" else 8)


def test_the_docs_list_each_rows_lite0_count() -> None:
    """docs/peft-comparison.md's row table quotes the counts checked above."""
    text = (ROOT / "docs" / "peft-comparison.md").read_text()
    for row, count in LITE0.items():
        line = next(x for x in text.splitlines() if x.startswith(f"| `peft/{row}` |"))
        assert f"| {count:,} |" in line, (row, line)
        assert f'"{ROWS[row][2]}"' in line, (row, line)


@pytest.mark.slow
def test_train_and_eval_record_the_trainable_count_of_the_budget_tool(
    synthetic_pascal, tmp_path: Path
) -> None:
    root, min_pixels = synthetic_pascal
    cfg = tiny_train_config(
        root, tmp_path / "run", min_pixels=min_pixels, extra=["experiment=peft/lora_match"]
    )
    budget = config_budget(cfg)
    train(cfg)
    record = json.loads((tmp_path / "run" / "metrics.json").read_text())
    expected = {
        "backbone": budget.backbone_trainable,
        "head": budget.trainable["head"],
        "per_group": {
            ("head" if g == "head" else f"backbone.{g}"): n for g, n in budget.trainable.items() if n
        },
    }
    assert budget.backbone_trainable > 0 and record["trainable"] == expected
    assert (record["run"]["table"], record["run"]["row"]) == ("peft", "LoRA r=match_svf")
    eval_cfg = compose_config(
        "eval",
        [
            f"ckpt_path={record['checkpoint']}",
            f"paths.output_dir={tmp_path / 'eval'}",
            "trainer.accelerator=cpu",
            f"n_episodes={cfg.dataset.n_episodes}",
        ],
    )
    evaluate(eval_cfg)
    assert json.loads((tmp_path / "eval" / "metrics.json").read_text())["trainable"] == expected


def test_the_rows_docs_name_the_rows_and_the_tables_option() -> None:
    text = (ROOT / "docs" / "peft-comparison.md").read_text()
    assert "--layout peft --paired" in text and "## Results" in text
    results = text.split("## Results", 1)[1]
    # the measured tables: both benchmarks, every row by its label, with the paired interval column
    assert "### (a) Real images" in results and "### (b) Synthetic benchmark" in results
    assert "95 % interval" in results
    for path in sorted(PEFT_DIR.glob("*.yaml")):
        label = yaml.safe_load(path.read_text())["row"]
        assert f"| {label}" in results, f"{path.name}: row {label!r} missing from the Results tables"


def test_trainable_counts_sum_the_optimizer_groups() -> None:
    from torch import nn

    from svfseg.tasks.reporting import trainable_counts

    groups = [
        {"name": "head", "params": [nn.Parameter(torch.zeros(3, 4))]},
        {
            "name": "backbone.layer2",
            "params": [nn.Parameter(torch.zeros(5)), nn.Parameter(torch.zeros(2, 2))],
        },
        {"name": "backbone.layer4", "params": [nn.Parameter(torch.zeros(7))]},
    ]
    assert trainable_counts(groups) == {
        "backbone": 16,
        "head": 12,
        "per_group": {"head": 12, "backbone.layer2": 9, "backbone.layer4": 7},
    }
    assert trainable_counts(None) is None  # no strategy applied: nothing recorded
