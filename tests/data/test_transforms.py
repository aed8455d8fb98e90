"""Transforms: image/label alignment, foreground-keeping crop, padding values, eval sizes, seeding."""

from __future__ import annotations

import random

import cv2
import numpy as np
import pytest
import torch

from svfseg.data.transforms import (
    MEAN_255,
    STD_255,
    EvalTransform,
    PadCropKeepForeground,
    RandScale,
    TrainTransform,
    eval_resize_hw,
    normalize_to_tensor,
    pad_square,
)

FG_COLOUR = np.array([220.0, 40.0, 30.0])
BG_COLOUR = np.array([20.0, 160.0, 70.0])


def ss(*keys: int) -> np.random.SeedSequence:
    return np.random.SeedSequence(list(keys))


def denormalize(img: torch.Tensor) -> np.ndarray:
    """CHW normalised tensor -> HWC 0-255 float array."""
    return img.numpy().transpose(1, 2, 0) * np.asarray(STD_255) + np.asarray(MEAN_255)


def colour_coded(h: int = 70, w: int = 90) -> tuple[np.ndarray, np.ndarray]:
    """An image whose colour encodes its label: a foreground rectangle (label 1) on background (label 0)."""
    label = np.zeros((h, w), np.uint8)
    label[15:50, 20:65] = 1
    label[0, :] = 255
    image = np.where(label[..., None] == 1, FG_COLOUR, BG_COLOUR).astype(np.uint8)
    return image, label


def interior(mask: np.ndarray, margin: int = 4) -> np.ndarray:
    """Pixels of ``mask`` at least ``margin`` pixels from its border (scale + rotate interpolation and the 5x5 blur reach 4)."""
    kernel = np.ones((2 * margin + 1, 2 * margin + 1), np.uint8)
    return cv2.erode(mask.astype(np.uint8), kernel, borderType=cv2.BORDER_CONSTANT, borderValue=0).astype(
        bool
    )


@pytest.mark.parametrize("seed", range(12))
def test_train_transform_keeps_image_and_label_aligned(seed: int) -> None:
    image, label = colour_coded()
    out = TrainTransform(48, (0.9, 1.1))(image, label, ss(seed))
    assert out.image.shape == (3, 48, 48) and out.image.dtype == torch.float32
    assert out.mask.shape == (48, 48) and out.mask.dtype == torch.int64
    rgb, mask = denormalize(out.image), out.mask.numpy()
    fg, bg = interior(mask == 1, 4), interior(mask == 0, 4)
    assert fg.any(), "the foreground-keeping crop must keep foreground"
    np.testing.assert_allclose(rgb[fg], np.broadcast_to(FG_COLOUR, rgb[fg].shape), atol=2.0)
    if bg.any():
        np.testing.assert_allclose(rgb[bg], np.broadcast_to(BG_COLOUR, rgb[bg].shape), atol=2.0)
    assert set(np.unique(mask).tolist()) <= {0, 1, 255}


def test_train_transform_is_a_function_of_its_seed() -> None:
    image, label = colour_coded()
    t1, t2 = TrainTransform(40), TrainTransform(40)
    a, b = t1(image, label, ss(3, 1)), t2(image, label, ss(3, 1))
    torch.testing.assert_close(a.image, b.image, rtol=0, atol=0)
    assert torch.equal(a.mask, b.mask)
    others = [t1(image, label, ss(3, k)) for k in range(2, 6)]
    assert any(not torch.equal(a.image, o.image) for o in others)


def applied(tf: TrainTransform) -> list[bool]:
    """Which of rotate, blur and flip fired on the last call (albumentations keeps params of applied ones)."""
    return [bool(t.params) for t in tf.pipeline.transforms[1:4]]


def test_random_ops_draw_from_one_stream_not_correlated_copies() -> None:
    # Compose.set_random_seed would seed every transform identically, so rotate/blur/flip would always
    # fire together; one shared stream makes them independent.
    image, label = colour_coded(40, 40)
    tf = TrainTransform(32)
    decisions = []
    for seed in range(48):
        tf(image, label, ss(seed))
        decisions.append(applied(tf))
    arr = np.array(decisions)
    assert arr.mean(axis=0).min() > 0.25 and arr.mean(axis=0).max() < 0.75
    assert not (arr[:, 0] == arr[:, 1]).all() and not (arr[:, 1] == arr[:, 2]).all()


def test_rotation_and_padding_fill_image_with_mean_and_label_with_255() -> None:
    # Uniform image, no scale: after the transform every 255 pixel is border fill (rotation or padding),
    # so the image there is the mean colour, i.e. 0 after normalisation.
    image = np.full((30, 30, 3), 90, np.uint8)
    label = np.zeros((30, 30), np.uint8)
    tf = TrainTransform(50, (1.0, 1.0))
    rotated = 0
    for seed in range(10):
        out = tf(image, label, ss(seed))
        rotated += applied(tf)[0]
        ignore = interior(out.mask.numpy() == 255, margin=3)
        assert ignore.any(), "padding 30 -> 50 must leave a 255 border"
        assert out.image.permute(1, 2, 0).numpy()[ignore].__abs__().max() < 0.05
        content = interior(out.mask.numpy() == 0, margin=3)
        np.testing.assert_allclose(denormalize(out.image)[content], 90.0, atol=0.5)
    assert rotated > 0


def test_pad_is_split_half_top_left_and_filled() -> None:
    crop = PadCropKeepForeground(30)
    image = np.full((11, 12, 3), 7.0, np.float32)
    label = np.ones((11, 12), np.uint8)
    out = crop(image=image, mask=label)
    lab, img = out["mask"], out["image"]
    rows, cols = np.nonzero(lab != 255)
    # pad_h = 19 -> 9 top / 10 bottom; pad_w = 18 -> 9 left / 9 right (reference: pad // 2 top-left).
    assert (rows.min(), rows.max(), cols.min(), cols.max()) == (9, 19, 9, 20)
    np.testing.assert_allclose(img[lab == 255], np.broadcast_to(MEAN_255, img[lab == 255].shape), atol=1e-4)
    np.testing.assert_allclose(img[lab != 255], 7.0)


def _fg_fraction(crop: PadCropKeepForeground, label: np.ndarray, seed: int) -> float:
    crop.set_random_state(np.random.default_rng(seed), random.Random(seed))
    out = crop(image=np.zeros((*label.shape, 3), np.float32), mask=label)
    return float((out["mask"] == 1).sum()) / float((label == 1).sum())


def test_crop_keeps_at_least_85_percent_of_foreground_when_possible() -> None:
    # A 10x10 object: about half of the 60x60 windows of this 100x100 label hold it, so 32 draws
    # practically always find one (the reference loop gives up after 32; so does ours).
    label = np.zeros((100, 100), np.uint8)
    label[30:40, 60:70] = 1
    keep, plain = PadCropKeepForeground(60), PadCropKeepForeground(60, keep=None)
    kept = [_fg_fraction(keep, label, s) for s in range(30)]
    assert min(kept) >= 0.85
    assert min(_fg_fraction(plain, label, s) for s in range(30)) < 0.85  # the retries do the work


def test_crop_falls_back_to_last_draw_when_foreground_cannot_fit() -> None:
    label = np.ones((50, 50), np.uint8)  # no 20x20 window holds 85 % of it
    crop = PadCropKeepForeground(20)
    out = crop(image=np.zeros((50, 50, 3), np.float32), mask=label)
    assert out["mask"].shape == (20, 20) and (out["mask"] == 1).all()


def test_rand_scale_uses_one_factor_in_range() -> None:
    t = RandScale((0.9, 1.1))
    for seed in range(8):
        t.set_random_state(np.random.default_rng(seed), random.Random(seed))
        out = t(image=np.zeros((100, 200, 3), np.float32), mask=np.zeros((100, 200), np.uint8))
        h, w = out["mask"].shape
        assert 90 <= h <= 110 and abs(w / h - 2.0) < 0.03
    with pytest.raises(ValueError, match="scale range"):
        RandScale((1.2, 0.9))


@pytest.mark.parametrize(
    ("hw", "size", "expected"),
    [
        ((375, 500), 473, (352, 472)),
        ((500, 375), 473, (472, 352)),
        ((300, 300), 473, (472, 472)),
        ((20, 30), 65, (40, 64)),
    ],
)
def test_eval_resize_sizes(hw: tuple[int, int], size: int, expected: tuple[int, int]) -> None:
    assert eval_resize_hw(*hw, size) == expected


def test_eval_transform_pastes_top_left_on_square_canvas() -> None:
    image = np.full((375, 500, 3), 200, np.uint8)
    label = np.zeros((375, 500), np.uint8)
    label[100:200, 100:300] = 1
    out = EvalTransform(473)(image, label)
    assert out.image.shape == (3, 473, 473) and out.mask.shape == (473, 473)
    mask = out.mask.numpy()
    assert (mask[:352, :472] != 255).all() and (mask[352:] == 255).all() and (mask[:, 472:] == 255).all()
    zero = normalize_to_tensor(np.zeros((1, 1, 3), np.float32))[:, 0, 0]
    torch.testing.assert_close(out.image[:, 400, 400], zero)  # canvas is raw 0 before normalisation
    np.testing.assert_allclose(denormalize(out.image)[:352, :472], 200.0, atol=1e-3)
    assert 0.9 < (mask == 1).sum() / (100 * 200 * (472 / 500) * (352 / 375)) < 1.1


def test_pad_square_pads_bottom_right_with_255() -> None:
    lab = np.zeros((3, 5), np.uint8)
    out = pad_square(lab)
    assert out.shape == (5, 5) and (out[:3] == 0).all() and (out[3:] == 255).all()


def test_bad_inputs_are_refused_with_clear_messages() -> None:
    with pytest.raises(ValueError, match="crop size"):
        TrainTransform(0)
    with pytest.raises(ValueError, match="eval size"):
        EvalTransform(4)
    with pytest.raises(ValueError, match="does not match"):
        TrainTransform(16)(np.zeros((10, 10, 3), np.uint8), np.zeros((10, 11), np.uint8), ss(0))
    with pytest.raises(ValueError, match="RGB image"):
        EvalTransform(16)(np.zeros((10, 10), np.uint8), np.zeros((10, 10), np.uint8))
