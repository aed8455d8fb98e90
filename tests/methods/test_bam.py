"""PSPNet base learner, its checkpoint file, and BAM (as in the reference BAM code) on small CPU models."""

from __future__ import annotations

import hashlib
import math
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from svfseg.backbones import build_backbone
from svfseg.data.fold import FoldSpec
from svfseg.methods.pspnet import (
    PPM,
    BaseLearnerCheckpointError,
    PSPNet,
    load_base_learner,
    save_base_learner,
)

TINY = 0.0625  # width_mult of the CPU test backbones
SIZE = 49  # input side: 7x7 features at stride 8


def tiny_pspnet(name: str = "resnet50", num_classes: int = 16) -> PSPNet:
    return PSPNet(build_backbone(name, width_mult=TINY, warn_if_random=False), num_classes=num_classes)


def manual_ce(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Mean of -log softmax at the target class over pixels whose target is not 255."""
    logp = logits.log_softmax(dim=1).permute(0, 2, 3, 1).reshape(-1, logits.shape[1])
    t = target.reshape(-1)
    valid = t != 255
    return -logp[valid].gather(1, t[valid].unsqueeze(1)).mean()


# ----------------------------------------------------------------------------- PSPNet


def test_ppm_channels_and_bins() -> None:
    ppm = PPM(64, 16, bins=(1, 2, 3, 6))
    x = torch.randn(2, 64, 7, 5)
    out = ppm(x)
    assert ppm.out_channels == 128 and out.shape == (2, 128, 7, 5)
    assert torch.equal(out[:, :64], x)  # input first, then the pooled branches
    # The bin-1 branch is constant over space (global pool, upsampled).
    assert torch.allclose(out[:, 64:80], out[:, 64:80, :1, :1].expand(-1, -1, 7, 5))


@pytest.mark.parametrize(("name", "ppm_in", "ppm_out"), [("resnet50", 2048, 4096), ("vgg16_bn", 512, 1024)])
def test_pspnet_full_width_layout(name: str, ppm_in: int, ppm_out: int) -> None:
    net = PSPNet(build_backbone(name, warn_if_random=False), num_classes=61)
    assert [f[1].in_channels for f in net.ppm.features] == [ppm_in] * 4
    assert [f[1].out_channels for f in net.ppm.features] == [ppm_in // 4] * 4
    assert net.cls[0].in_channels == ppm_out and net.cls[0].out_channels == 512
    assert net.cls[4].out_channels == 61 and net.cls[3].p == 0.1


@pytest.mark.parametrize("name", ["resnet50", "vgg16_bn"])
def test_pspnet_output_and_loss(name: str) -> None:
    net = tiny_pspnet(name)
    img = torch.randn(2, 3, SIZE, SIZE)
    target = torch.randint(0, 16, (2, SIZE, SIZE))
    target[:, :5] = 255
    net.train()
    logits, loss = net(img, target)
    assert logits.shape == (2, 16, SIZE, SIZE)
    assert loss is not None and torch.isfinite(loss)
    torch.testing.assert_close(loss, manual_ce(logits, target))
    loss.backward()
    assert net.cls[4].weight.grad is not None
    net.eval()
    logits_eval, none = net(img)
    assert none is None and logits_eval.shape == (2, 16, SIZE, SIZE)


# ----------------------------------------------------------------------------- checkpoint file


def save_tiny(
    tmp_path: Path, *, name: str = "resnet50", dataset: str = "pascal", fold: int = 0
) -> tuple[PSPNet, Path]:
    num_classes = 16 if dataset == "pascal" else 61
    net = tiny_pspnet(name, num_classes)
    path = save_base_learner(
        net, tmp_path / "psp" / "best.pth", {"dataset": dataset, "fold": fold, "epoch": 3}
    )
    return net, path


def test_base_learner_round_trip(tmp_path: Path) -> None:
    net, path = save_tiny(tmp_path, fold=2)
    loaded = load_base_learner(path, backbone_name="resnet50", fold=FoldSpec("pascal", 2), width_mult=TINY)
    assert loaded.state_dict().keys() == net.state_dict().keys()
    for k, v in net.state_dict().items():
        assert torch.equal(loaded.state_dict()[k], v), k
    net.eval()
    loaded.eval()
    img = torch.randn(1, 3, SIZE, SIZE)
    with torch.no_grad():
        assert torch.equal(net(img)[0], loaded(img)[0])
    meta = torch.load(path, weights_only=True)["meta"]
    assert meta["dataset"] == "pascal" and meta["fold"] == 2 and meta["epoch"] == 3
    assert meta["backbone"] == "resnet50" and meta["num_classes"] == 16


def test_the_stage1_command_is_written_in_one_place() -> None:
    from svfseg.methods.pspnet import stage1_command

    base = "python train.py stage=base method=bam"
    assert stage1_command("coco", 3, "vgg16_bn") == f"{base} dataset=coco fold=3 backbone=vgg16_bn"
    assert stage1_command("synthetic", 0, "resnet50", 0.125, debug="tiny") == (
        f"{base} dataset=synthetic fold=0 backbone=resnet50 backbone.width_mult=0.125 debug=tiny"
    )


def test_missing_base_learner_names_stage1_command(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError) as err:
        load_base_learner(tmp_path / "nope.pth", backbone_name="vgg16_bn", fold=FoldSpec("coco", 3))
    assert str(err.value).endswith(
        "python train.py stage=base method=bam dataset=coco fold=3 backbone=vgg16_bn"
    )
    with pytest.raises(FileNotFoundError) as err:  # the run's own dataset name and width
        load_base_learner(
            tmp_path / "nope.pth", backbone_name="resnet50", fold=FoldSpec("synthetic", 0), width_mult=0.125
        )
    assert str(err.value).endswith(
        "python train.py stage=base method=bam dataset=synthetic fold=0 backbone=resnet50 backbone.width_mult=0.125"
    )


def test_truncated_base_learner_names_the_file_and_the_stage1_command(tmp_path: Path) -> None:
    cut = tmp_path / "pspnet.pt"
    torch.save({"state_dict": {"w": torch.zeros(64)}, "meta": {}}, cut)
    cut.write_bytes(cut.read_bytes()[:-40])  # an interrupted copy
    with pytest.raises(BaseLearnerCheckpointError) as err:
        load_base_learner(cut, backbone_name="resnet50", fold=FoldSpec("pascal", 2))
    message = str(err.value)
    assert message.startswith(f"{cut} does not read as a base-learner file (truncated or corrupt: ")
    assert message.endswith(
        "write it again with: python train.py stage=base method=bam dataset=pascal fold=2 backbone=resnet50"
    )


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"fold": FoldSpec("pascal", 1)}, r"fold: file has 0, run needs 1"),
        ({"backbone_name": "vgg16_bn"}, r"backbone: file has 'resnet50', run needs 'vgg16_bn'"),
        ({"fold": FoldSpec("coco", 0)}, r"dataset: file has 'pascal', run needs 'coco'"),
        ({"width_mult": 1.0}, r"width_mult: file has 0.0625, run needs 1.0"),
    ],
)
def test_base_learner_for_other_settings_is_refused(tmp_path: Path, kwargs: dict, match: str) -> None:
    _, path = save_tiny(tmp_path)
    settings = {"backbone_name": "resnet50", "fold": FoldSpec("pascal", 0), "width_mult": TINY, **kwargs}
    with pytest.raises(BaseLearnerCheckpointError, match=match) as err:
        load_base_learner(path, **settings)
    assert "python train.py stage=base method=bam" in str(err.value)


def test_base_learner_with_missing_or_extra_keys_is_refused(tmp_path: Path) -> None:
    _, path = save_tiny(tmp_path)
    ckpt = torch.load(path, weights_only=True)
    ckpt["state_dict"].pop("cls.4.weight")
    ckpt["state_dict"]["extra.weight"] = torch.zeros(1)
    torch.save(ckpt, path)
    with pytest.raises(
        BaseLearnerCheckpointError, match=r"missing keys \[cls.4.weight\].*unexpected keys \[extra.weight\]"
    ):
        load_base_learner(path, backbone_name="resnet50", fold=FoldSpec("pascal", 0), width_mult=TINY)


def test_plain_state_dict_is_not_a_base_learner_file(tmp_path: Path) -> None:
    path = tmp_path / "plain.pth"
    torch.save(tiny_pspnet().state_dict(), path)
    with pytest.raises(BaseLearnerCheckpointError, match="not an svfseg base-learner file"):
        load_base_learner(path, backbone_name="resnet50", fold=FoldSpec("pascal", 0), width_mult=TINY)


def test_save_refuses_meta_without_fold(tmp_path: Path) -> None:
    with pytest.raises(KeyError, match="'fold'"):
        save_base_learner(tiny_pspnet(), tmp_path / "x.pth", {"dataset": "pascal"})


# ----------------------------------------------------------------------------- BAM pieces


def test_gram_distance_matches_naive_loops() -> None:
    from svfseg.methods.bam import gram_distance, normalized_gram

    q = torch.randn(2, 4, 3, 2)
    s = torch.randn(2, 4, 3, 2)
    s[1, 2] = 0.0  # a dead channel: the 1e-7 keeps its Gram entries at 0 instead of NaN

    def naive(x: np.ndarray) -> np.ndarray:
        c = x.shape[0]
        f = x.reshape(c, -1)
        g = np.zeros((c, c))
        for i in range(c):
            for j in range(c):
                g[i, j] = (f[i] * f[j]).sum() / (
                    math.sqrt((f[i] ** 2).sum()) * math.sqrt((f[j] ** 2).sum()) + 1e-7
                )
        return g

    for b in range(2):
        gq, gs = naive(q[b].double().numpy()), naive(s[b].double().numpy())
        np.testing.assert_allclose(normalized_gram(q)[b].numpy(), gq, atol=1e-6)
        want = math.sqrt(((gq - gs) ** 2).sum()) / 4
        assert gram_distance(q, s)[b].item() == pytest.approx(want, abs=1e-6)
    assert torch.equal(gram_distance(q, q), torch.zeros(2))


def test_shot_weights_sum_to_one_and_follow_the_supports() -> None:
    from svfseg.methods.bam import ShotReweighter

    rw = ShotReweighter(shot=5)
    assert sum(p.numel() for p in rw.parameters()) == 27
    est = torch.rand(3, 5)
    w = rw(est)
    torch.testing.assert_close(w.sum(dim=1), torch.ones(3))
    assert bool((w > 0).all())
    # The weights are a function of each estimate's rank: permuting the supports permutes the weights.
    perm = torch.tensor([3, 0, 4, 1, 2])
    torch.testing.assert_close(rw(est[:, perm]), w[:, perm])


# ----------------------------------------------------------------------------- BAM model


def tiny_bam(name: str = "resnet50", shot: int = 1, psp: PSPNet | None = None):
    from svfseg.methods.bam import BAM

    return BAM(psp if psp is not None else tiny_pspnet(name), shot=shot, reduce_dim=16)


def episode(b: int, k: int, size: int = SIZE) -> dict[str, torch.Tensor]:
    def mask(*shape: int) -> torch.Tensor:
        m = torch.randint(0, 2, shape)
        m[..., :3, :] = 255
        return m

    base_label = torch.randint(0, 16, (b, size, size))
    base_label[:, -2:] = 255
    return {
        "query_img": torch.randn(b, 3, size, size),
        "support_img": torch.randn(b, k, 3, size, size),
        "support_mask": mask(b, k, size, size),
        "query_mask": mask(b, size, size),
        "class_idx": torch.randint(0, 15, (b,)),
        "query_base_label": base_label,
    }


@pytest.mark.parametrize("name", ["resnet50", "vgg16_bn"])
@pytest.mark.parametrize("shot", [1, 5])
def test_bam_forward_shapes_and_losses(name: str, shot: int) -> None:
    bam = tiny_bam(name, shot)
    batch = episode(2, shot)
    bam.train()
    out = bam(**batch)
    assert out.logits.shape == (2, 2, SIZE, SIZE)
    assert set(out.losses) == {"main", "aux_meta", "aux_base"}
    assert all(torch.isfinite(v) for v in out.losses.values())
    torch.testing.assert_close(out.loss, out.losses["main"] + out.losses["aux_meta"] + out.losses["aux_base"])
    assert not out.losses["aux_base"].requires_grad and out.losses["main"].requires_grad
    bam.eval()
    with torch.no_grad():
        plain = bam(batch["query_img"], batch["support_img"], batch["support_mask"])
    assert plain.loss is None and plain.logits.shape == (2, 2, SIZE, SIZE)


def test_bam_refuses_wrong_shot_count() -> None:
    bam = tiny_bam(shot=5)
    batch = episode(1, 2)
    with pytest.raises(ValueError, match="shot=5 but the batch has 2 supports"):
        bam(**batch)


# What BAM adds to its two backbones. Checkpoints of trained BAM models load strictly by these names, so a
# refactor that nests or renames a head module must fail here rather than orphan existing checkpoints.
BAM_HEAD_KEYS = [
    "down_query.0.weight",
    "down_supp.0.weight",
    "init_merge.0.weight",
    "ASPP_meta.pool_branch.1.weight",
    "ASPP_meta.pool_branch.1.bias",
    *(f"ASPP_meta.branches.{i}.0.{p}" for i in range(4) for p in ("weight", "bias")),
    "res1_meta.0.weight",
    "res2_meta.0.0.weight",
    "res2_meta.1.0.weight",
    "cls_meta.0.weight",
    "cls_meta.3.weight",
    "cls_meta.3.bias",
    "gram_merge.weight",
    "cls_merge.weight",
]
KSHOT_KEYS = ["kshot_rw.net.0.weight", "kshot_rw.net.0.bias", "kshot_rw.net.2.weight", "kshot_rw.net.2.bias"]


@pytest.mark.parametrize(
    ("name", "shot", "n_keys", "digest"),
    [
        ("resnet50", 1, 713, "8fb8dce999dfd659ea8fef6d2110f915aa4c1f43fa6ee6fe4ebac31b611f3dfc"),
        ("resnet50", 5, 717, "3586c46d58c3a47b21dd5a1761348b53d881d8acc357b60999b0d5a27a74ffbe"),
        ("vgg16_bn", 5, 239, "4452fad19b271453aae33c9366ad2903060e537577e89ecc46c282613405eb10"),
    ],
    ids=["resnet50-1shot", "resnet50-5shot", "vgg16_bn-5shot"],
)
def test_bam_state_dict_keys_are_pinned(name: str, shot: int, n_keys: int, digest: str) -> None:
    """Head keys spelled out; the whole layout (backbones included) pinned by a sha256 of keys and shapes."""
    sd = tiny_bam(name, shot).state_dict()
    head = [k for k in sd if not k.startswith(("backbone.", "base_learner."))]
    assert head == BAM_HEAD_KEYS + (KSHOT_KEYS if shot > 1 else [])
    layout = "\n".join(f"{k} {tuple(v.shape)}" for k, v in sorted(sd.items()))
    assert len(sd) == n_keys
    assert hashlib.sha256(layout.encode()).hexdigest() == digest


@pytest.fixture(scope="module")
def full_r50_pspnet() -> PSPNet:
    torch.manual_seed(0)
    return PSPNet(build_backbone("resnet50", warn_if_random=False), num_classes=16)


@pytest.mark.parametrize(("shot", "expected"), [(1, 4_917_254), (5, 4_917_281)])
def test_bam_trainable_head_count_resnet50(full_r50_pspnet: PSPNet, shot: int, expected: int) -> None:
    from svfseg.methods.bam import BAM

    bam = BAM(full_r50_pspnet, shot=shot)
    assert sum(p.numel() for _, p in bam.head_named_parameters() if p.requires_grad) == expected
    assert all(not p.requires_grad for p in bam.base_learner.parameters())


def test_bam_full_width_resnet50_forward(full_r50_pspnet: PSPNet) -> None:
    from svfseg.methods.bam import BAM

    bam = BAM(full_r50_pspnet, shot=1)
    bam.eval()
    batch = episode(1, 1, size=33)
    with torch.no_grad():
        out = bam(**batch)
    assert out.logits.shape == (1, 2, 33, 33) and torch.isfinite(out.loss)


def test_base_learner_gets_no_grad_and_stays_bit_identical() -> None:
    bam = tiny_bam()
    bam.backbone_trainable = True  # gradients flow through the meta backbone, never the base learner
    before = {k: v.clone() for k, v in bam.base_learner.state_dict().items()}
    head_before = bam.cls_meta[3].weight.detach().clone()
    meta_before = bam.backbone.layer4[0].conv2.weight.detach().clone()
    opt = torch.optim.SGD([p for p in bam.parameters() if p.requires_grad], lr=0.1)
    bam.train()
    assert not bam.base_learner.training and not any(m.training for m in bam.base_learner.modules())
    out = bam(**episode(2, 1))
    out.loss.backward()
    assert all(p.grad is None for p in bam.base_learner.parameters())
    opt.step()
    for k, v in bam.base_learner.state_dict().items():
        assert torch.equal(v, before[k]), k  # weights and BN running statistics
    assert not torch.equal(bam.cls_meta[3].weight, head_before)
    assert not torch.equal(bam.backbone.layer4[0].conv2.weight, meta_before)
    assert bam.frozen_modules() == [bam.base_learner]
    assert bam.backbone is not bam.base_learner.backbone


def test_base_map_excludes_episode_class_in_training_only() -> None:
    bam = tiny_bam()
    q = torch.randn(2, 16, 3, 3).softmax(dim=1)
    class_idx = torch.tensor([2, 14])
    bam.train()
    got = bam.base_map(q, class_idx)
    for b, c in enumerate(class_idx.tolist()):
        keep = [ch for ch in range(1, 16) if ch != c + 1]
        torch.testing.assert_close(got[b, 0], q[b, keep].sum(dim=0))
    with pytest.raises(ValueError, match="needs class_idx"):
        bam.base_map(q, None)
    # checked on the device (no host sync per step): the error surfaces at once on CPU
    with pytest.raises(RuntimeError, match=r"class_idx is outside \[0, 15\)"):
        bam.base_map(q, torch.tensor([0, 15]))
    bam.eval()
    torch.testing.assert_close(bam.base_map(q, class_idx), q[:, 1:].sum(dim=1, keepdim=True))
    torch.testing.assert_close(bam.base_map(q, None), q[:, 1:].sum(dim=1, keepdim=True))


def test_ensemble_at_init_is_the_meta_softmax() -> None:
    bam = tiny_bam()
    meta = torch.randn(2, 2, 4, 4)
    base = torch.randn(2, 16, 4, 4)
    bam.eval()
    final = bam.ensemble(meta, base, torch.tensor([0.3, 0.7]), None)
    torch.testing.assert_close(final, meta.softmax(dim=1))
    with torch.no_grad():
        bam.gram_merge.weight.copy_(torch.tensor([0.5, 2.0]).view(1, 2, 1, 1))
        bam.cls_merge.weight.copy_(torch.tensor([1.0, -1.0]).view(1, 2, 1, 1))
    final = bam.ensemble(meta, base, torch.tensor([0.3, 0.7]), None)
    p, q = meta.softmax(dim=1), base.softmax(dim=1)
    est = torch.tensor([0.3, 0.7]).view(2, 1, 1)
    torch.testing.assert_close(final[:, 1], 0.5 * p[:, 1] + 2.0 * est)
    torch.testing.assert_close(final[:, 0], 0.5 * p[:, 0] + 2.0 * est - q[:, 1:].sum(dim=1))


def test_five_identical_supports_equal_one_shot() -> None:
    psp = tiny_pspnet()
    one, five = tiny_bam(shot=1, psp=psp), tiny_bam(shot=5, psp=psp)
    for p in five.kshot_rw.parameters():  # non-trivial shot weights
        torch.nn.init.normal_(p)
    five.load_state_dict({**five.state_dict(), **one.state_dict()}, strict=True)
    one.eval()
    five.eval()
    batch = episode(2, 1)
    with torch.no_grad():
        out1 = one(**batch)
        batch5 = {**batch, "support_img": batch["support_img"].repeat(1, 5, 1, 1, 1)}
        batch5["support_mask"] = batch["support_mask"].repeat(1, 5, 1, 1)
        out5 = five(**batch5)
    torch.testing.assert_close(out5.logits, out1.logits, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(out5.loss, out1.loss, atol=1e-5, rtol=1e-5)


def reference_forward(bam, query_img: torch.Tensor, support_img: torch.Tensor, support_mask: torch.Tensor):
    """BAM written episode by episode and shot by shot, as in the reference code (eval mode)."""

    def up(x: torch.Tensor, size) -> torch.Tensor:
        return F.interpolate(x, size=tuple(size), mode="bilinear", align_corners=True)

    def stages(net, img: torch.Tensor, mask: torch.Tensor | None = None):
        f0 = net.layer0(img)
        f2 = net.layer2(net.layer1(f0))
        f3 = net.layer3(f2)
        m3 = None if mask is None else up(mask, f3.shape[-2:])
        f4 = net.layer4(f3 if m3 is None else f3 * m3)
        return up(f2, f3.shape[-2:]), f3, f4, m3

    def gram(x: torch.Tensor) -> torch.Tensor:
        f = x.flatten(2)[0]
        n = f.norm(dim=1, keepdim=True)
        return f @ f.T / (n @ n.T + 1e-7)

    finals = []
    for b in range(query_img.shape[0]):
        q2, q3, q4, _ = stages(bam.backbone, query_img[b : b + 1])
        qf = bam.down_query(torch.cat([q3, q2], 1))
        protos, priors, ests = [], [], []
        for k in range(support_img.shape[1]):
            m = (support_mask[b, k] == 1).float()[None, None]
            s2, s3, s4, m3 = stages(bam.backbone, support_img[b, k : k + 1], m)
            sf = bam.down_supp(torch.cat([s3, s2], 1))
            protos.append((sf * m3).sum(dim=(2, 3)) / (m3.sum() + 0.0005))
            s4 = s4 * up(m, s4.shape[-2:])
            qq, ss = q4.flatten(2)[0], s4.flatten(2)[0]
            cos = (ss.T @ qq) / (ss.norm(dim=0)[:, None] * qq.norm(dim=0)[None, :] + 1e-7)
            sim = cos.max(dim=0).values
            sim = (sim - sim.min()) / (sim.max() - sim.min() + 1e-7)
            priors.append(up(sim.view(1, 1, *q4.shape[-2:]), qf.shape[-2:]))
            ests.append(torch.linalg.matrix_norm(gram(q2) - gram(s2)) / q2.shape[1])
        est = torch.stack(ests).view(1, -1)
        w = bam.kshot_rw(est)[0] if bam.kshot_rw is not None else torch.ones(1)
        proto = sum(wk * p for wk, p in zip(w, protos)).view(1, -1, 1, 1)
        prior = sum(wk * p for wk, p in zip(w, priors))
        e = (w * est[0]).sum()
        x = bam.ASPP_meta(bam.init_merge(torch.cat([qf, proto.expand_as(qf), prior], 1)))
        x = bam.res1_meta(x)
        meta = bam.cls_meta(bam.res2_meta(x) + x).softmax(1)
        base = bam.base_learner.head(bam.base_learner.backbone(query_img[b : b + 1])["layer4"]).softmax(1)
        g, c = bam.gram_merge.weight.flatten(), bam.cls_merge.weight.flatten()
        bg, fg = g[0] * meta[:, :1] + g[1] * e, g[0] * meta[:, 1:] + g[1] * e
        merged_bg = c[0] * bg + c[1] * base[:, 1:].sum(1, keepdim=True)
        finals.append(up(torch.cat([merged_bg, fg], 1), query_img.shape[-2:]))
    return torch.cat(finals)


@pytest.mark.parametrize(("name", "shot"), [("resnet50", 3), ("vgg16_bn", 3), ("resnet50", 1)])
def test_batched_forward_matches_per_shot_reference(name: str, shot: int) -> None:
    bam = tiny_bam(name, shot)
    with torch.no_grad():
        for p in [bam.gram_merge.weight, bam.cls_merge.weight]:
            p.copy_(torch.randn_like(p))  # make the Gram and base terms matter
        if bam.kshot_rw is not None:
            for p in bam.kshot_rw.parameters():
                torch.nn.init.normal_(p)
    bam.eval()
    batch = episode(2, shot)
    with torch.no_grad():
        got = bam(batch["query_img"], batch["support_img"], batch["support_mask"]).logits
        want = reference_forward(bam, batch["query_img"], batch["support_img"], batch["support_mask"])
    torch.testing.assert_close(got, want, atol=2e-5, rtol=1e-4)


def test_registry_builds_bam_from_a_checkpoint_path(tmp_path: Path) -> None:
    from svfseg.methods.bam import BAM
    from svfseg.methods.registry import build_model

    net, path = save_tiny(tmp_path, fold=1)
    shell = build_backbone("resnet50", width_mult=TINY, warn_if_random=False)
    bam = build_model("bam", shell, shot=5, base_learner=path, fold=FoldSpec("pascal", 1), reduce_dim=16)
    assert isinstance(bam, BAM) and bam.shot == 5 and bam.num_base_classes == 15
    for k, v in net.state_dict().items():
        assert torch.equal(bam.base_learner.state_dict()[k], v), k
        if k.startswith("backbone."):
            assert torch.equal(bam.state_dict()[k], v), k  # meta branch starts from the stage-1 backbone
    with pytest.raises(BaseLearnerCheckpointError, match="fold: file has 1, run needs 0"):
        build_model("bam", shell, shot=1, base_learner=path, fold=FoldSpec("pascal", 0))
    with pytest.raises(ValueError, match=r"needs fold=FoldSpec\(dataset, fold\)"):
        build_model("bam", shell, shot=1, base_learner=path)
    vgg = build_backbone("vgg16_bn", width_mult=TINY, warn_if_random=False)
    with pytest.raises(ValueError, match="does not match the base learner's backbone"):
        build_model("bam", vgg, shot=1, base_learner=net)


def test_a_run_builds_bam_on_its_base_learner_through_the_method_table(tmp_path: Path) -> None:
    from svfseg.methods.bam import BAM
    from svfseg.methods.factory import build_fewshot_model

    net, path = save_tiny(tmp_path, fold=1)
    fold = FoldSpec(dataset="pascal", fold=1, shot=1)
    spec = {"name": "resnet50", "width_mult": TINY, "pretrained": "/ignored/by/bam.pth"}
    method = {"name": "bam", "base_learner": str(path), "reduce_dim": 16}
    bam = build_fewshot_model(method, spec, fold=fold)
    assert isinstance(bam, BAM) and bam.num_base_classes == 15
    for k, v in net.state_dict().items():
        assert torch.equal(bam.base_learner.state_dict()[k], v), k
    shell = build_fewshot_model({**method, "base_learner": None}, spec, fold=fold, load_pretrained=False)
    assert shell.state_dict().keys() == bam.state_dict().keys()
    with pytest.raises(ValueError, match=r"method\.base_learner is null"):
        build_fewshot_model({**method, "base_learner": None}, spec, fold=fold)
    with pytest.raises(ValueError, match="method=bam needs a dilated CNN backbone"):
        build_fewshot_model(method, {"name": "dinov2_vits14"}, fold=fold, load_pretrained=False)


def test_svf_strategy_converts_only_the_meta_branch() -> None:
    from svfseg.finetune import build_strategy
    from svfseg.svf import svf_layers

    bam = tiny_bam()
    groups = build_strategy("svf").apply(bam)
    base_ids = {id(p) for p in bam.base_learner.parameters()}
    assert not any(id(p) in base_ids for g in groups for p in g["params"])
    assert len(list(svf_layers(bam.backbone))) > 0 and not list(svf_layers(bam.base_learner))
    bam.train()
    bam(**episode(2, 1)).loss.backward()
    assert all(p.grad is None for p in bam.base_learner.parameters())
    assert any(p.grad is not None for g in groups if g["name"].startswith("backbone.") for p in g["params"])
