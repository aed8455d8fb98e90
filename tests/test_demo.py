"""``make demo`` end to end at test size: both runs, the comparison, the three plots and the disclaimer."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from svfseg.demo import DISCLAIMER, run_demo


@pytest.mark.slow
def test_demo_trains_both_strategies_compares_and_plots(
    synthetic_pascal, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    root, min_pixels = synthetic_pascal
    out = tmp_path / "demo"
    results = run_demo(
        out,
        1,
        root,
        synthetic={"n_train": 120, "n_val": 60, "size": 96},  # the shared dataset: reused, not rewritten
        extra_overrides=[
            f"dataset.min_pixels={min_pixels}",
            "dataset.train_size=65",
            "dataset.eval_size=65",
            "dataset.n_episodes=12",
            "dataset.train_episodes_for_curve=8",
            "backbone.width_mult=0.125",
            "method.reduce_dim=32",
            "+trainer.limit_train_batches=3",
            "trainer.enable_model_summary=false",
        ],
    )
    assert set(results) == {"freeze", "svf"}
    saved = json.loads((out / "comparison.json").read_text())
    for name in ("freeze", "svf"):
        record = json.loads((out / name / "metrics.json").read_text())
        assert saved[name]["miou"] == record["miou"] and record["n_episodes"] == 12
        assert record["config"]["finetune"]["name"] == name
    for plot in ("miou_curves.png", "singular_values_layer3_3x3.png", "cues_layer3_last_3x3.png"):
        assert (out / plot).stat().st_size > 10_000, plot
    printed = " ".join(capsys.readouterr().out.split())
    assert " ".join(DISCLAIMER.split()) in printed
    assert "python train.py dataset=synthetic method=baseline backbone=resnet50 finetune=svf" in printed
