"""Every fine-tune strategy's checkpoint: eval.py reproduces its training numbers, and the export is a plain
model with the checkpoint's outputs.

The SVF baseline is checked in detail in test_predict.py; this covers the strategies a comparison runs
next to it (the PEFT adapters, the SVF variants, the partial and BN strategies) and the two other methods,
because each converts the backbone its own way and a checkpoint that does not rebuild exactly evaluates to
other numbers without an error.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch

from svfseg.inference.export import export_run, load_exported
from svfseg.lightning.module import FewShotSegModule
from svfseg.tasks.builders import build_datamodule
from svfseg.tasks.evaluate import evaluate
from svfseg.tasks.resolve import TrainRun
from svfseg.tasks.train import train
from tests.helpers.hydra import compose_config, tiny_train_config

CASES = [
    "finetune=lora",
    "finetune=dora",
    "finetune=svf_bn",
    "finetune=svf_exp",
    "finetune=salt",
    "finetune=bitfit",
    "finetune=part",
    "finetune=bn",
    "method=pfenet finetune=svf",
    "method=bam finetune=svf",
]


@pytest.fixture(scope="module")
def base_learner(synthetic_pascal: Any, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """BAM's stage 1 on the synthetic data (one tiny epoch)."""
    root, min_pixels = synthetic_pascal
    tmp = tmp_path_factory.mktemp("stage1")
    learner = tmp / "pspnet.pt"
    extra = ["stage=base", "method=bam", f"method.base_learner={learner}"]
    train(tiny_train_config(root, tmp / "run", min_pixels=min_pixels, extra=extra))
    return learner


@pytest.mark.parametrize("case", CASES)
def test_checkpoint_evaluates_to_its_training_numbers_and_exports_the_same_outputs(
    synthetic_pascal: Any, base_learner: Path, tmp_path: Path, case: str
) -> None:
    root, min_pixels = synthetic_pascal
    extra = [*case.split(), "trainer.max_epochs=1"]
    if "method=bam" in case:
        extra.append(f"method.base_learner={base_learner}")
    cfg = tiny_train_config(root, tmp_path / "run", min_pixels=min_pixels, extra=extra)
    trained = train(cfg)
    ckpt = trained["checkpoint"]

    evaluated = evaluate(
        compose_config(
            "eval",
            [
                f"ckpt_path={ckpt}",
                f"paths.output_dir={tmp_path / 'eval'}",
                "trainer.accelerator=cpu",
                f"n_episodes={cfg.dataset.n_episodes}",
            ],
        )
    )
    # the same checkpoint on the same fixed episodes: identical numbers, not merely close
    assert evaluated["miou"] == trained["miou"] and evaluated["fbiou"] == trained["fbiou"]
    assert evaluated["per_seed"]["321"]["class_iou"] == trained["per_seed"]["321"]["class_iou"]

    module = FewShotSegModule.load_from_checkpoint(
        ckpt, map_location="cpu", weights_only=True, strict=True, load_pretrained=False
    ).eval()
    datamodule = build_datamodule(TrainRun.from_config(cfg))
    datamodule.setup("test")
    sample = datamodule.eval_dataloader(int(cfg.dataset.eval_seeds[0])).dataset[0]
    batch = {
        k: (v[None] if torch.is_tensor(v) else torch.tensor([v])) for k, v in sample.items() if k != "ori_hw"
    }
    export_run(ckpt, tmp_path / "export")
    plain = load_exported(tmp_path / "export")
    with torch.inference_mode():
        reference = module(batch, with_target=False).logits
        exported = plain(batch["query_img"], batch["support_img"], batch["support_mask"]).logits
    # merged adapters (W = U diag(s) V^T, LoRA/DoRA folded in) differ by float rounding only
    torch.testing.assert_close(exported, reference, rtol=1e-5, atol=1e-5)
