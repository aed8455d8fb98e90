"""The real-photo demo's parts: trivial baselines, the study's paired intervals, the qualitative figure,
the verdict, like-for-like run settings, and (with CCP data) a tiny end-to-end demo."""

from __future__ import annotations

import json
import math
from dataclasses import asdict, replace
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from svfseg.backbones import build_backbone
from svfseg.compose import compose_train_config
from svfseg.demo.baselines import PRIOR_THRESHOLD, evaluate_baselines
from svfseg.demo.qualitative import pick_episodes, qualitative_figure
from svfseg.demo.real import RealDemoSettings, is_svf, run_demo, strategy_dir, verdict
from svfseg.demo.study import check_same_settings, interval, run_study, study_markdown, summarise_study
from svfseg.labels import IGNORE_INDEX
from svfseg.methods.registry import build_model
from tests.helpers.data import env_folder
from tests.helpers.real_learning import SKIP, SRC_ENV


def _tiny_model():
    backbone = build_backbone("resnet50", width_mult=0.125, warn_if_random=False)
    return build_model("baseline", backbone, shot=1, reduce_dim=16).eval()


def _episodes(n: int = 6, size: int = 33, seed: int = 0) -> list[dict]:
    g = torch.Generator().manual_seed(seed)
    batches = []
    for i in range(0, n, 3):
        b = min(3, n - i)
        label = (torch.rand(b, size, size, generator=g) > 0.7).long()
        label[:, :2] = IGNORE_INDEX  # ignored rows count nowhere
        batches.append(
            {
                "query_img": torch.randn(b, 3, size, size, generator=g),
                "support_img": torch.randn(b, 1, 3, size, size, generator=g),
                "support_mask": (torch.rand(b, 1, size, size, generator=g) > 0.5).float(),
                "query_mask": label.clone(),
                "label_ori": label,
                "ori_hw": [(size, size)] * b,
                "class_idx": torch.arange(i, i + b) % 2,
            }
        )
    return batches


def _numpy_miou(preds: list[np.ndarray], labels: list[np.ndarray], classes: list[int], n: int) -> float:
    inter, union = np.zeros(n), np.zeros(n)
    for p, lab, c in zip(preds, labels, classes):
        valid = lab != IGNORE_INDEX
        inter[c] += np.sum((p == 1) & (lab == 1) & valid)
        union[c] += np.sum(((p == 1) | (lab == 1)) & valid)
    return float(np.mean(inter / union))


def test_trivial_baselines_match_a_numpy_count() -> None:
    model, batches = _tiny_model(), _episodes()
    got = evaluate_baselines(model, batches, num_classes=2)
    labels = [b["label_ori"][i].numpy() for b in batches for i in range(len(b["class_idx"]))]
    classes = [int(c) for b in batches for c in b["class_idx"]]
    all_fg = _numpy_miou([np.ones_like(lab) for lab in labels], labels, classes, 2)
    assert got["all_foreground"]["miou"] == pytest.approx(all_fg, abs=1e-6)
    # the prior, thresholded by hand from the model's own cues
    from svfseg.methods.components import episode_cues, resize

    preds = []
    with torch.no_grad():
        for b in batches:
            prior = episode_cues(model, b["query_img"], b["support_img"], b["support_mask"]).priors.mean(1)
            prior = resize(prior, b["query_img"].shape[-2:])
            preds += [(p[0] > PRIOR_THRESHOLD).long().numpy() for p in prior]
    assert got["cosine_prior"]["miou"] == pytest.approx(_numpy_miou(preds, labels, classes, 2), abs=1e-6)
    assert got["cosine_prior"]["n_episodes"] == 6


def test_paired_interval_is_the_t_interval() -> None:
    values = [0.01, 0.03, -0.02, 0.04]
    r = interval(values)
    mean = sum(values) / 4
    sd = math.sqrt(sum((v - mean) ** 2 for v in values) / 3)
    half = 3.182446305284263 * sd / 2  # t(0.975, 3)
    assert r["mean"] == pytest.approx(mean)
    assert (r["low"], r["high"]) == pytest.approx((mean - half, mean + half))
    assert math.isnan(interval([0.5])["low"])


def test_study_pairs_runs_of_the_same_fold_and_seed() -> None:
    runs = {
        0: {"svf": {0: {"miou": 0.30}, 1: {"miou": 0.20}}, "freeze": {0: {"miou": 0.25}, 1: {"miou": 0.26}}},
        1: {"svf": {0: {"miou": 0.10}}, "freeze": {0: {"miou": 0.05}, 1: {"miou": 0.5}}},
    }
    s = summarise_study(runs)
    pair = s["paired"]["svf - freeze"]
    assert pair["n"] == 3  # fold 1 seed 1 has no SVF run: not paired
    assert pair["mean"] == pytest.approx((0.05 - 0.06 + 0.05) / 3)
    assert s["overall"]["freeze"]["n"] == 4
    assert s["per_fold"][0]["svf"]["miou_mean"] == pytest.approx(0.25)
    table = study_markdown(s, {0: {"all_foreground": {"miou": 0.04}, "cosine_prior": {"miou": 0.03}}})
    assert "| svf | 25.00 ± 5.00 (n=2) | 10.00 ± 0.00 (n=1) |" in table
    assert "| svf - freeze | +1.33 |" in table


def test_verdict_says_when_nothing_beats_the_baselines() -> None:
    comparison = {
        "ordering": ["svf", "freeze"],
        "svf": {"miou_mean": 0.05, "miou_std": 0.01},
        "freeze": {"miou_mean": 0.10, "miou_std": 0.01},
        "baselines": {"all_foreground": {"miou": 0.05}, "cosine_prior": {"miou": 0.04}},
    }
    assert verdict(comparison).startswith("Above the best trivial baseline (5.00")
    assert verdict(comparison).endswith(": freeze.")
    comparison["freeze"]["miou_mean"] = 0.055
    assert verdict(comparison).startswith("No strategy")


def test_qualitative_figure_has_one_panel_per_column_and_distinct_classes() -> None:
    episodes = pick_episodes(_episodes(6), 2)
    assert [int(e["class_idx"][0]) for e in episodes] == [0, 1]
    model = _tiny_model()
    fig = qualitative_figure(episodes, {"a": model, "b": model}, ["cat", "dog"], title="t")
    axes = fig.get_axes()
    assert len(axes) == 2 * 5
    assert all(ax.get_images() for ax in axes)  # no empty panel
    assert axes[0].get_title() == "support: cat" and axes[3].get_title().startswith("a (IoU ")


def test_every_strategy_gets_the_same_settings(tmp_path: Path) -> None:
    s = RealDemoSettings()
    runs = {
        f: s.overrides(tmp_path / "ccp", tmp_path / "w.pth", tmp_path / f, f, 0, tmp_path / "head.ckpt")
        for f in ("freeze", "full", "svf")
    }
    differing = {
        o
        for o in set().union(*runs.values())
        if not all(o in r for r in runs.values())
        and not o.startswith(("finetune", "paths.", "finetune.backbone_lr_mult"))
    }
    assert differing == set()
    cfg = compose_train_config(runs["svf"])
    assert cfg.finetune.backbone_lr_mult == s.backbone_lr_mult
    assert cfg.optim.lr == s.lr and cfg.dataset.train_size == s.size and cfg.init_head.endswith("head.ckpt")


# The demo's settings at a size that runs in seconds (the pipeline, not the learning, is under test).
TINY = RealDemoSettings(
    strategies=("freeze", "svf"),
    size=65,
    head_steps=3,
    steps_per_epoch=2,
    epochs=2,
    n_episodes=8,
    train_episodes_for_curve=8,
    num_workers=0,
)


@pytest.mark.slow
def test_tiny_real_demo_end_to_end(tmp_path: Path) -> None:
    src = env_folder(SRC_ENV, "label_list.mat")
    if src is None:
        pytest.skip(SKIP)
    settings = replace(TINY, seeds=(0, 1))
    out = tmp_path / "demo"
    comparison = run_demo(out, tmp_path / "ccp", tmp_path / "weights", settings, src=str(src))
    saved = json.loads((out / "comparison.json").read_text())
    assert saved["dataset"].startswith("Clothing Co-Parsing") and saved["backbone"] == "efficientnet_lite0"
    assert set(saved["ordering"]) == {"freeze", "svf"} and saved["svf"]["seeds"] == [0, 1]
    assert set(saved["baselines"]) == {"all_foreground", "cosine_prior"}
    assert saved["svf"]["per_seed"]["0"]["singular_values"]["max_abs_relative_change"] > 0
    assert comparison["verdict"] == saved["verdict"]
    assert set(saved["plots"]) == {"figure2", "figure4", "cues", "qualitative"}
    for path in saved["plots"].values():
        assert Path(path).stat().st_size < 400_000
        with Image.open(path) as im:
            assert im.size[0] > 200


@pytest.mark.slow
def _must_not_run(*args: object, **kwargs: object) -> None:
    raise AssertionError("a resumed study scored its baselines again")


def test_tiny_study_runs_seed_major_and_resumes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Two folds x one seed x {freeze, svf} at tiny size; a second call trains nothing and reports the same."""
    src = env_folder(SRC_ENV, "label_list.mat")
    if src is None:
        pytest.skip(SKIP)
    settings = replace(TINY, seeds=(0,))
    out = tmp_path / "study"
    first = run_study(out, tmp_path / "ccp", tmp_path / "weights", settings, folds=(0, 1), src=str(src))
    assert set(first["runs"]) == {"0", "1"}
    for fold in ("0", "1"):
        assert set(first["runs"][fold]) == {"freeze", "svf"}
        assert first["runs"][fold]["svf"]["0"]["singular_values"]["max_abs_relative_change"] > 0
    overall = first["summary"]["overall"]
    assert (
        overall["svf"]["n"] == 2
        and "val_last" in overall["svf"]
        and "sv_mean_abs_relative_change" in overall["svf"]
    )
    assert first["summary"]["paired"]["svf - freeze"]["n"] == 2
    mtimes = {p: p.stat().st_mtime_ns for p in out.rglob("*.ckpt")}
    monkeypatch.setattr("svfseg.demo.study.score_baselines", _must_not_run)  # reused from study.json
    again = run_study(out, tmp_path / "ccp", tmp_path / "weights", settings, folds=(0, 1), src=str(src))
    assert {p: p.stat().st_mtime_ns for p in out.rglob("*.ckpt")} == mtimes  # nothing retrained
    assert again["summary"] == first["summary"]
    assert (out / "figure2_miou_curves.png").stat().st_size < 400_000
    assert "svf - freeze" in (out / "study.md").read_text()


def test_experiment_rows_run_as_strategies_in_their_own_folders(tmp_path: Path) -> None:
    """``peft/lora_match`` selects the experiment row (fine-tune choice + options); folders have no slash."""
    s = RealDemoSettings()
    common = (tmp_path / "data", tmp_path / "w.pth", tmp_path / "run", 0, tmp_path / "head.ckpt")
    row = s.overrides(common[0], common[1], common[2], "peft/lora_match", *common[3:])
    assert "experiment=peft/lora_match" in row and not any(o.startswith("finetune=") for o in row)
    assert f"finetune.backbone_lr_mult={s.backbone_lr_mult}" in row
    frozen = s.overrides(common[0], common[1], common[2], "peft/freeze", *common[3:])
    assert not any(o.startswith("finetune.backbone_lr_mult") for o in frozen)
    assert strategy_dir("peft/lora_match") == "peft-lora_match" and strategy_dir("svf") == "svf"
    assert is_svf("peft/svf_top") and is_svf("salt") and not is_svf("peft/lora_match")


def test_study_pairs_every_strategy_with_svf_and_refuses_other_settings(tmp_path: Path) -> None:
    runs = {
        0: {
            "peft/freeze": {0: {"miou": 0.1}},
            "peft/svf": {0: {"miou": 0.3}},
            "peft/dora": {0: {"miou": 0.2}},
        }
    }
    paired = summarise_study(runs)["paired"]
    assert set(paired) == {"peft/svf - peft/freeze", "peft/svf - peft/dora"}
    assert paired["peft/svf - peft/dora"]["mean"] == pytest.approx(0.1)
    (tmp_path / "study.json").write_text(json.dumps({"settings": {**asdict(RealDemoSettings()), "lr": 0.5}}))
    with pytest.raises(ValueError, match=r"lr: 0.5 -> 0.1"):
        check_same_settings(tmp_path, RealDemoSettings())
    check_same_settings(tmp_path / "empty", RealDemoSettings())  # no study yet: nothing to check


@pytest.mark.parametrize("synthetic", [False, True])
def test_a_wrong_strategy_is_refused_before_any_work(
    synthetic: bool, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """``--strategies nosuch`` used to fail after the data, the weights, the baselines and a head were made
    (a minute and more); every run's config is now composed first, and the demo stops with one line each."""
    from svfseg.demo.__main__ import main as demo_main

    folders = [
        "--out",
        str(tmp_path / "out"),
        "--data",
        str(tmp_path / "data"),
        "--weights",
        str(tmp_path / "w"),
    ]
    args = [*(["--synthetic"] if synthetic else []), "--strategies", "nosuch", "svf", "peft/nosuch", *folders]
    assert demo_main(args) == 2
    err = capsys.readouterr().err.splitlines()
    assert err[0] == "error: --strategies nosuch: In 'train': Could not find 'finetune/nosuch'"
    group = "finetune" if synthetic else "experiment"  # the real demo also takes experiment rows
    assert err[1] == f"error: --strategies peft/nosuch: In 'train': Could not find '{group}/peft/nosuch'"
    assert err[2].startswith(
        "error: a strategy is a conf/finetune name (bitfit, bn, dora, freeze, full, lora"
    )
    assert err[2].endswith("svf_top)" if synthetic else "such as peft/lora_match")
    assert list(tmp_path.iterdir()) == []  # no data, weights or run folder was made


def test_a_missing_ccp_source_is_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from svfseg.demo.__main__ import main as demo_main

    args = ["--src", str(tmp_path / "nowhere"), "--data", str(tmp_path / "ccp"), "--out", str(tmp_path / "o")]
    assert demo_main(args) == 2
    err = capsys.readouterr().err
    assert err.startswith(
        f"error: the CCP source {tmp_path / 'nowhere'} is neither a folder nor a zip archive"
    )
