"""FewShotIoU against hand-computed values and a literal numpy port of the reference BAM/SVF protocol."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch

from svfseg.metrics import FewShotIoU, episode_counts, predict_at_original_size

# ----------------------------------------------------------------------------- numpy reference


def ref_intersection_union(output: np.ndarray, target: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """As the reference code: set output to 255 where target is 255, then 2-bin histograms over [0, 1]."""
    output = output.reshape(-1).copy()
    target = target.reshape(-1)
    output[target == 255] = 255
    inter = output[output == target]
    area_i = np.array([(inter == k).sum() for k in (0, 1)])
    area_o = np.array([(output == k).sum() for k in (0, 1)])
    area_t = np.array([(target == k).sum() for k in (0, 1)])
    return area_i, area_o + area_t - area_i


def ref_scores(episodes: list[tuple[np.ndarray, np.ndarray, int]], num_classes: int) -> tuple[float, float]:
    """As the reference code: class-wise sums for mIoU (eps 1e-10), global sums for FB-IoU."""
    ci, cu = np.zeros(num_classes), np.zeros(num_classes)
    fi, fu = np.zeros(2), np.zeros(2)
    for pred, target, c in episodes:
        i, u = ref_intersection_union(pred, target)
        ci[c] += i[1]
        cu[c] += u[1]
        fi += i
        fu += u
    miou = float(np.mean(ci / (cu + 1e-10)))
    fbiou = float(np.mean(fi / (fu + 1e-10)))
    return miou, fbiou


def random_episodes(n: int, num_classes: int, seed: int, size: tuple[int, int] = (6, 5)):
    rng = np.random.default_rng(seed)
    out = []
    for k in range(n):
        target = (rng.random(size) < 0.4).astype(np.int64)
        target[rng.random(size) < 0.15] = 255
        pred = (rng.random(size) < 0.5).astype(np.int64)
        out.append((pred, target, k % num_classes))
    return out


def feed(metric: FewShotIoU, episodes, batch: int = 3) -> None:
    for s in range(0, len(episodes), batch):
        chunk = episodes[s : s + batch]
        metric.update(
            torch.tensor(np.stack([e[0] for e in chunk])),
            torch.tensor(np.stack([e[1] for e in chunk])),
            torch.tensor([e[2] for e in chunk]),
        )


def compute_quiet(metric: FewShotIoU) -> dict[str, torch.Tensor]:
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        return metric.compute()


# ----------------------------------------------------------------------------- tests


def test_hand_built_episode_counts_and_scores() -> None:
    # target: fg at 3 pixels, one ignore pixel; pred: fg at 2 pixels, one of them on the ignore pixel.
    target = torch.tensor([[[1, 1, 0], [1, 0, 255]]])
    pred = torch.tensor([[[1, 0, 0], [0, 0, 1]]])
    inter, union = episode_counts(pred, target)
    # fg: I = 1 (pixel (0,0)); pred fg on valid pixels = 1, target fg = 3 -> U = 3.
    # bg: valid pred bg = 4, target bg = 2, both bg at (0,2) and (1,1) -> I = 2, U = 4.
    assert inter.tolist() == [[2, 1]]
    assert union.tolist() == [[4, 3]]
    m = FewShotIoU(num_classes=1)
    m.update(pred, target, torch.tensor([0]))
    out = compute_quiet(m)
    assert out["miou"].item() == pytest.approx(1 / 3)
    assert out["fbiou"].item() == pytest.approx((2 / 4 + 1 / 3) / 2)
    # torchmetrics squeezes one-element results, so class_iou is 0-d when C == 1.
    assert out["class_iou"].reshape(-1).tolist() == pytest.approx([1 / 3])
    assert int(out["n_episodes"]) == 1


def test_classwise_sums_are_pixel_sums_not_episode_means() -> None:
    # Class 0: episode A has I=1/U=1, episode B I=0/U=3 -> class IoU 1/4 (a mean of IoUs would give 1/2).
    m = FewShotIoU(num_classes=2)
    a_t = torch.tensor([[[1, 0], [0, 0]]])
    b_t = torch.tensor([[[1, 1], [1, 0]]])
    m.update(a_t.clone(), a_t, torch.tensor([0]))
    m.update(torch.zeros_like(b_t), b_t, torch.tensor([0]))
    # Class 1: a perfect episode.
    m.update(b_t.clone(), b_t, torch.tensor([1]))
    out = compute_quiet(m)
    assert out["class_iou"].tolist() == pytest.approx([0.25, 1.0])
    assert out["miou"].item() == pytest.approx(0.625)


@pytest.mark.parametrize("seed", [0, 1])
def test_matches_numpy_reference_on_random_episodes(seed: int) -> None:
    episodes = random_episodes(23, num_classes=5, seed=seed)
    m = FewShotIoU(num_classes=5)
    feed(m, episodes, batch=4)
    out = compute_quiet(m)
    miou, fbiou = ref_scores(episodes, 5)
    assert out["miou"].item() == pytest.approx(miou, abs=1e-6)
    assert out["fbiou"].item() == pytest.approx(fbiou, abs=1e-6)
    assert int(out["n_episodes"]) == 23
    assert m.class_episodes.tolist() == [5, 5, 5, 4, 4]
    assert m.fg_inter.dtype == torch.int64


def test_ignore_pixels_count_nowhere() -> None:
    target = torch.tensor([[[1, 0, 255, 255], [0, 1, 255, 255]]])
    m1, m2 = FewShotIoU(1), FewShotIoU(1)
    m1.update(torch.tensor([[[1, 0, 0, 0], [0, 1, 0, 0]]]), target, torch.tensor([0]))
    m2.update(torch.tensor([[[1, 0, 1, 1], [0, 1, 1, 1]]]), target, torch.tensor([0]))
    for m in (m1, m2):
        assert m.fb_inter.tolist() == [2, 2]
        assert m.fb_union.tolist() == [2, 2]
    assert compute_quiet(m1)["miou"].item() == 1.0
    assert compute_quiet(m2)["fbiou"].item() == 1.0


def test_empty_prediction_gives_zero_fg_iou() -> None:
    target = torch.tensor([[[1, 1, 0], [0, 0, 0]]])
    m = FewShotIoU(1)
    m.update(torch.zeros_like(target), target, torch.tensor([0]))
    out = compute_quiet(m)
    assert out["miou"].item() == 0.0
    assert out["fbiou"].item() == pytest.approx((4 / 6 + 0.0) / 2)


def test_sampled_class_with_empty_union_is_zero_like_reference() -> None:
    target = torch.zeros((1, 2, 2), dtype=torch.long)
    m = FewShotIoU(1)
    m.update(torch.zeros_like(target), target, torch.tensor([0]))
    out = compute_quiet(m)
    assert out["class_iou"].reshape(-1).tolist() == [0.0]
    assert out["fbiou"].item() == pytest.approx(0.5)


def test_unsampled_class_counts_zero_and_warns() -> None:
    m = FewShotIoU(num_classes=4)
    t = torch.tensor([[[1, 0], [0, 1]]])
    m.update(t.clone(), t, torch.tensor([1]))
    m.update(t.clone(), t, torch.tensor([3]))
    with pytest.warns(UserWarning, match=r"classes \[0, 2\]"):
        out = m.compute()
    assert out["class_iou"].tolist() == [0.0, 1.0, 0.0, 1.0]
    assert out["miou"].item() == pytest.approx(0.5)


def test_sharding_invariance_merge_state_and_summed_states() -> None:
    episodes = random_episodes(17, num_classes=5, seed=3)
    full = FewShotIoU(5)
    feed(full, episodes, batch=2)
    a, b = FewShotIoU(5), FewShotIoU(5)
    feed(a, episodes[::2], batch=3)  # interleaved shards, like a DistributedSampler
    feed(b, episodes[1::2], batch=1)
    for name in full._defaults:  # every state is a plain sum over episodes
        assert torch.equal(getattr(a, name) + getattr(b, name), getattr(full, name)), name
    a.merge_state(b)
    got, want = compute_quiet(a), compute_quiet(full)
    for key in ("miou", "fbiou", "class_iou", "n_episodes"):
        assert torch.equal(got[key], want[key]), key


def test_episode_order_does_not_change_result() -> None:
    episodes = random_episodes(20, num_classes=5, seed=4)
    m1, m2 = FewShotIoU(5), FewShotIoU(5)
    feed(m1, episodes, batch=5)
    perm = np.random.default_rng(0).permutation(len(episodes))
    feed(m2, [episodes[i] for i in perm], batch=3)
    o1, o2 = compute_quiet(m1), compute_quiet(m2)
    for key in o1:
        assert torch.equal(o1[key], o2[key]), key


def test_reset_clears_state() -> None:
    m = FewShotIoU(1)
    t = torch.tensor([[[1, 0]]])
    m.update(t, t, torch.tensor([0]))
    m.reset()
    assert int(m.n_episodes) == 0 and int(m.fg_union.sum()) == 0


@pytest.mark.parametrize(
    ("pred", "target", "cls", "exc", "match"),
    [
        ([[[2, 0]]], [[[1, 0]]], [0], ValueError, r"pred holds values \[2\]"),
        ([[[1, 0]]], [[[1, 7]]], [0], ValueError, r"target holds values \[7\]"),
        ([[[0.9, 0.0]]], [[[1, 0]]], [0], TypeError, "argmax"),
        ([[[1, 0]]], [[[1, 0]]], [3], ValueError, r"class_idx values \[3\] are outside \[0, 3\)"),
        ([[[1, 0]]], [[[1, 0]]], [-1], ValueError, "class_idx values"),
        ([[[1, 0]]], [[[1, 0]]], [0, 1], ValueError, r"class_idx must be \(B,\)"),
        ([[1, 0]], [[1, 0]], [0], ValueError, r"\(B, H, W\)"),
    ],
)
def test_invalid_inputs_raise_clear_errors(pred, target, cls, exc, match) -> None:
    m = FewShotIoU(3)
    with pytest.raises(exc, match=match):
        m.update(torch.tensor(pred), torch.tensor(target), torch.tensor(cls))
    assert int(m.n_episodes) == 0


# ----------------------------------------------------------------------------- original resolution


def np_bilinear_align_corners(x: np.ndarray, out: int) -> np.ndarray:
    """(C, h, w) -> (C, out, out), bilinear with align_corners=True, written from the formula."""
    c, h, w = x.shape

    def coords(n_in: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        pos = np.arange(out) * (n_in - 1) / (out - 1)
        lo = np.floor(pos).astype(int)
        hi = np.minimum(lo + 1, n_in - 1)
        return lo, hi, pos - lo

    y0, y1, fy = coords(h)
    x0, x1, fx = coords(w)
    res = np.zeros((c, out, out))
    for i in range(out):
        for j in range(out):
            top = x[:, y0[i], x0[j]] * (1 - fx[j]) + x[:, y0[i], x1[j]] * fx[j]
            bot = x[:, y1[i], x0[j]] * (1 - fx[j]) + x[:, y1[i], x1[j]] * fx[j]
            res[:, i, j] = top * (1 - fy[i]) + bot * fy[i]
    return res


def test_update_from_logits_matches_per_sample_original_resolution_reference() -> None:
    rng = np.random.default_rng(7)
    logits = rng.normal(size=(3, 2, 4, 4))
    sizes = [(5, 7), (6, 3), (4, 4)]
    big = 8  # batch canvas larger than every L, padded with 255 as the collate does
    label_ori = np.full((3, big, big), 255, dtype=np.int64)
    episodes = []
    for i, (h, w) in enumerate(sizes):
        lab = (rng.random((h, w)) < 0.5).astype(np.int64)
        lab[0, 0] = 255
        label_ori[i, :h, :w] = lab
        side = max(h, w)
        pred_sq = np_bilinear_align_corners(logits[i], side).argmax(axis=0)
        lab_sq = np.full((side, side), 255, dtype=np.int64)
        lab_sq[:h, :w] = lab
        episodes.append((pred_sq, lab_sq, i % 2))
    m = FewShotIoU(2)
    m.update_from_logits(
        torch.tensor(logits, dtype=torch.float32),
        torch.tensor(label_ori),
        torch.tensor(sizes),
        torch.tensor([0, 1, 0]),
    )
    miou, fbiou = ref_scores(episodes, 2)
    out = compute_quiet(m)
    assert out["miou"].item() == pytest.approx(miou, abs=1e-6)
    assert out["fbiou"].item() == pytest.approx(fbiou, abs=1e-6)
    want_valid = sum(int((e[1] != 255).sum()) for e in episodes)
    assert int(m.fb_union.sum() + m.fb_inter.sum()) > 0
    pred, target = predict_at_original_size(
        torch.tensor(logits, dtype=torch.float32), torch.tensor(label_ori), torch.tensor(sizes)
    )
    assert pred.shape == (3, 6, 7) and int((target != 255).sum()) == want_valid
    np.testing.assert_array_equal(pred[1, :6, :3].numpy(), episodes[1][0][:6, :3])


def test_update_from_logits_rejects_label_smaller_than_size() -> None:
    m = FewShotIoU(1)
    with pytest.raises(ValueError, match="does not fit label_ori"):
        m.update_from_logits(
            torch.zeros(1, 2, 3, 3),
            torch.zeros(1, 4, 4, dtype=torch.long),
            torch.tensor([[5, 2]]),
            torch.tensor([0]),
        )
    with pytest.raises(ValueError, match=r"logits must be \(B, 2, h, w\)"):
        m.update_from_logits(
            torch.zeros(1, 3, 3, 3),
            torch.zeros(1, 4, 4, dtype=torch.long),
            torch.tensor([[4, 2]]),
            torch.tensor([0]),
        )
