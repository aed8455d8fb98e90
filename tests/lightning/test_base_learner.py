"""BAM stage 1 scores its validation at each image's original size with the evaluation's own function."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torchmetrics.classification import MulticlassJaccardIndex

from svfseg.labels import IGNORE_INDEX
from svfseg.lightning.base_learner import BaseLearnerModule
from svfseg.metrics.original_size import mask_at_original_size


def test_mask_at_original_size_takes_any_number_of_classes() -> None:
    logits = torch.randn(5, 9, 7)
    for height, width in [(30, 20), (12, 40), (9, 9)]:
        side = max(height, width)
        up = F.interpolate(logits[None], size=(side, side), mode="bilinear", align_corners=True)
        expected = up[0].argmax(dim=0)[:height, :width]
        assert torch.equal(mask_at_original_size(logits, height, width), expected)


def test_stage1_validation_scores_every_image_at_its_original_size() -> None:
    torch.manual_seed(0)
    module = BaseLearnerModule(
        {"name": "resnet50", "width_mult": 0.0625, "pretrained": None, "warn_if_random": False},
        num_classes=4,
        lr=0.01,
        encoder_lr_mult=0.1,
    ).eval()
    sizes = [(40, 25), (18, 33)]
    side = max(max(s) for s in sizes)
    label_ori = torch.full((2, side, side), IGNORE_INDEX, dtype=torch.long)
    for i, (h, w) in enumerate(sizes):
        label_ori[i, :h, :w] = torch.randint(0, 4, (h, w))
    batch = {"image": torch.randn(2, 3, 33, 33), "label_ori": label_ori, "ori_hw": sizes}
    with torch.no_grad():
        module.validation_step(batch, 0)
        logits, _ = module.model(batch["image"])
    expected = MulticlassJaccardIndex(num_classes=4, ignore_index=IGNORE_INDEX, average="none")
    for i, (h, w) in enumerate(sizes):  # the reference: upsample to L x L, argmax, crop H x W
        up = F.interpolate(logits[i : i + 1], size=(max(h, w),) * 2, mode="bilinear", align_corners=True)
        expected.update(up.argmax(1)[:, :h, :w], label_ori[i : i + 1, :h, :w])
    torch.testing.assert_close(module.val_iou.compute(), expected.compute())
