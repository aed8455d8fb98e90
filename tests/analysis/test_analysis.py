"""Analysis of SVF runs: singular-value changes, cue maps, figures, checkpoint helpers and the notebook.

A tiny ResNet-50 is converted with SVF and its singular values are rescaled by known factors, standing in
for fine-tuning; every reading is checked against values computed here from the original weights.
"""

from __future__ import annotations

import copy
import csv
import math
import os
from dataclasses import dataclass
from pathlib import Path

import cv2
import matplotlib
import nbformat
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from matplotlib.patches import Rectangle
from torch import Tensor, nn

from svfseg.analysis import (
    Curve,
    capture_input,
    cue_maps,
    direction_coefficients,
    find_backbone,
    image_from_dataset,
    load_run,
    mean_curve,
    overlay_cues,
    parse_run_dirs,
    plot_before_after,
    plot_strategy_panels,
    plot_top_k_change,
    prepare_image,
    select_convs,
    singular_value_changes,
    stage_change_stats,
)
from svfseg.backbones import build_backbone
from svfseg.data.transforms import IMAGENET_MEAN, IMAGENET_STD
from svfseg.svf import SVFConv2d, apply_svf, svf_layers, svf_summary

matplotlib.use("Agg")
NOTEBOOK = Path(__file__).resolve().parents[2] / "notebooks" / "svf_analysis.ipynb"
STAGES = ["layer2.*", "layer3.*", "layer4.*"]


@dataclass
class Converted:
    """A converted backbone, the original weights and the factors s/s0 applied per layer."""

    model: nn.Module
    weights: dict[str, Tensor]
    factors: dict[str, Tensor]


def _convert(parametrization: str) -> Converted:
    torch.manual_seed(0)
    model = build_backbone("resnet50", width_mult=0.125).eval()
    weights = {n: m.weight.detach().clone() for n, m in model.named_modules() if isinstance(m, nn.Conv2d)}
    apply_svf(model, include=STAGES, parametrization=parametrization)
    gen = torch.Generator().manual_seed(1)
    factors = {}
    with torch.no_grad():
        for name, layer in svf_layers(model):
            factor = torch.exp(0.3 * torch.randn(layer.rank, generator=gen, dtype=torch.float64))
            factors[name] = factor
            if parametrization == "direct":
                layer.s.copy_(layer.s0 * factor.to(layer.s0.dtype))
            else:
                layer.s_delta.copy_(torch.log(factor).to(layer.s0.dtype))
    return Converted(model, weights, factors)


@pytest.fixture(scope="module")
def direct() -> Converted:
    return _convert("direct")


@pytest.fixture(scope="module")
def image() -> np.ndarray:
    """A 48x64 RGB image: a bright disc on a darker textured background."""
    yy, xx = np.mgrid[0:48, 0:64]
    rng = np.random.default_rng(0)
    img = rng.integers(0, 90, size=(48, 64, 3))
    disc = (yy - 24) ** 2 + (xx - 40) ** 2 < 12**2
    img[disc] = (230, 60, 40)
    return img.astype(np.uint8)


# ----------------------------------------------------------------------------------------- spectra
def test_changes_read_initial_svd_and_trained_values(direct: Converted) -> None:
    name = "layer3.5.conv2"
    change = singular_value_changes(direct.model, [name])[name]
    w = direct.weights[name].double().reshape(direct.weights[name].shape[0], -1)
    svd = torch.linalg.svdvals(w)
    torch.testing.assert_close(change.initial, svd, rtol=1e-5, atol=1e-6)
    assert torch.all(change.initial[:-1] >= change.initial[1:])
    torch.testing.assert_close(change.current, svd * direct.factors[name][change.index], rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(change.ratio, direct.factors[name][change.index], rtol=1e-5, atol=1e-6)
    top = change.top_k(30)
    assert top.initial.numel() == min(30, svd.numel())
    torch.testing.assert_close(top.current, change.current[: top.initial.numel()])


def test_changes_exp_parametrisation_and_all_layers() -> None:
    conv = _convert("exp")
    changes = singular_value_changes(conv.model)
    assert list(changes) == [n for n, _ in svf_layers(conv.model)]
    for name, change in changes.items():
        expected = change.initial * conv.factors[name][change.index]
        torch.testing.assert_close(change.current, expected, rtol=1e-5, atol=1e-7)


def test_grouped_conv_is_flattened_and_sorted_over_groups() -> None:
    model = nn.Sequential(nn.Conv2d(8, 6, 3, groups=2))
    w = model[0].weight.detach().double().clone()
    apply_svf(model)
    change = singular_value_changes(model)["0"]
    per_group = [torch.linalg.svdvals(w[g * 3 : (g + 1) * 3].reshape(3, -1)) for g in range(2)]
    torch.testing.assert_close(change.initial, torch.sort(torch.cat(per_group), descending=True).values)
    for pos, idx in enumerate(change.index.tolist()):
        group, within = divmod(idx, change.group_rank)
        assert math.isclose(float(change.initial[pos]), float(per_group[group][within]), rel_tol=1e-6)


def test_unknown_layer_and_unconverted_model_are_refused(direct: Converted) -> None:
    with pytest.raises(KeyError, match=r"layer3\.0\.conv9"):
        singular_value_changes(direct.model, ["layer3.0.conv9"])
    with pytest.raises(ValueError, match="no SVF layer"):
        singular_value_changes(nn.Sequential(nn.Conv2d(3, 4, 3)))


def test_select_convs_on_resnet(direct: Converted) -> None:
    assert select_convs(direct.model, "layer3", "3x3") == [f"layer3.{i}.conv2" for i in range(6)]
    assert select_convs(direct.model, "layer2", "1x1") == [f"layer2.{i}.conv3" for i in range(4)]
    every = select_convs(direct.model, "layer2", "all")
    assert "layer2.0.downsample.0" in every and len(every) == 4 * 3 + 1
    with pytest.raises(ValueError, match=r"stages with SVF convs: \['layer2', 'layer3', 'layer4'\]"):
        select_convs(direct.model, "layer1", "3x3")
    with pytest.raises(ValueError, match="kind='5x5'"):
        select_convs(direct.model, "layer3", "5x5")


def test_select_convs_through_wrappers_and_on_vgg(direct: Converted) -> None:
    wrapper = nn.Module()
    wrapper.backbone = direct.model
    assert select_convs(wrapper, "layer3", "1x1")[-1] == "backbone.layer3.5.conv3"
    assert find_backbone(wrapper) is direct.model
    outer = nn.Module()
    outer.model = wrapper
    assert find_backbone(outer) is direct.model
    two = nn.Module()
    two.a, two.b = direct.model, copy.deepcopy(direct.model)  # named_modules lists a shared one once
    with pytest.raises(ValueError, match="several modules"):
        select_convs(two, "layer3", "3x3")
    vgg = build_backbone("vgg16_bn", width_mult=0.125)
    apply_svf(vgg, include="layer3.*")
    assert select_convs(vgg, "layer3", "3x3") == ["layer3.0", "layer3.3", "layer3.6"]
    with pytest.raises(ValueError, match="no SVF conv of kind '1x1'"):
        select_convs(vgg, "layer3", "1x1")


def test_stage_change_stats(direct: Converted) -> None:
    stats = stage_change_stats(direct.model)
    assert list(stats) == ["layer2", "layer3", "layer4"]
    summary = svf_summary(direct.model)
    for stage, rel in stats.items():
        assert rel.numel() == summary.stage(stage).singular_values
        expected = torch.cat([f - 1 for n, f in direct.factors.items() if n.startswith(stage + ".")])
        torch.testing.assert_close(torch.sort(rel).values, torch.sort(expected).values, rtol=1e-5, atol=1e-6)


def _bars(ax: matplotlib.axes.Axes) -> list[float]:
    return [p.get_height() for p in ax.patches if isinstance(p, Rectangle)]


def test_plot_top_k_change_draws_initial_and_trained_bars(direct: Converted) -> None:
    names = select_convs(direct.model, "layer3", "3x3")
    changes = singular_value_changes(direct.model, names)
    fig = plot_top_k_change(changes, k=10)
    visible = [ax for ax in fig.axes if ax.get_visible()]
    assert len(visible) == len(names)
    first = changes[names[0]].top_k(10)
    np.testing.assert_allclose(
        _bars(visible[0]), [*first.initial.tolist(), *first.current.tolist()], rtol=1e-6
    )
    assert visible[0].get_title() == names[0]
    ratio_fig = plot_top_k_change(changes, k=5, mode="ratio")
    heights = np.asarray(_bars(ratio_fig.axes[0]))
    np.testing.assert_allclose(heights, first.ratio[:5].numpy() - 1, rtol=1e-6)
    with pytest.raises(ValueError, match="mode="):
        plot_top_k_change(changes, mode="log")


# ----------------------------------------------------------------------------------------- cues
def _manual_input_of_last_3x3(model: nn.Module, x: Tensor) -> Tensor:
    """Input of layer3.5.conv2 computed stage by stage, without hooks."""
    with torch.no_grad():
        for stage in ("layer0", "layer1", "layer2"):
            x = getattr(model, stage)(x)
        for block in list(model.layer3)[:5]:
            x = block(x)
        last = model.layer3[5]
        return last.relu(last.bn1(last.conv1(x)))


def test_capture_input_matches_manual_forward(direct: Converted, image: np.ndarray) -> None:
    _, x = prepare_image(image)
    got = capture_input(direct.model, "layer3.5.conv2", x)
    torch.testing.assert_close(got, _manual_input_of_last_3x3(direct.model, x))
    direct.model.train()
    capture_input(direct.model, "layer3.5.conv2", x)
    assert direct.model.training  # mode restored
    direct.model.eval()
    with pytest.raises(TypeError, match="not an SVFConv2d"):
        capture_input(direct.model, "layer3.5.bn2", x)


def test_direction_coefficients_are_v_projection_and_rebuild_output(
    direct: Converted, image: np.ndarray
) -> None:
    layer = dict(direct.model.named_modules())["layer3.5.conv2"]
    assert isinstance(layer, SVFConv2d) and layer.dilation == (2, 2)
    x = capture_input(direct.model, "layer3.5.conv2", prepare_image(image)[1])
    coeff = direction_coefficients(layer, x)
    vt = layer.v.detach().reshape(layer.rank, layer.in_channels, 3, 3)
    expected = F.conv2d(x, vt, stride=layer.stride, padding=layer.padding, dilation=layer.dilation)
    torch.testing.assert_close(coeff, expected)
    # sum_i u_i s0_i c_i is the original conv's output on x.
    s0 = layer.s0.reshape(1, -1, 1, 1)
    rebuilt = torch.einsum("or,brhw->bohw", layer.u.detach(), coeff * s0)
    original = F.conv2d(x, direct.weights["layer3.5.conv2"], padding=2, dilation=2)
    torch.testing.assert_close(rebuilt, original, rtol=1e-4, atol=1e-4)


def test_cue_maps_pick_extreme_ratios_and_weight_by_s(direct: Converted, image: np.ndarray) -> None:
    name = "layer3.5.conv3"
    _, x = prepare_image(image)
    cues = cue_maps(direct.model, name, x, n_grown=2, n_shrunk=1)
    factor = direct.factors[name]
    assert cues.indices[0] == int(torch.argmax(factor)) and cues.indices[2] == int(torch.argmin(factor))
    assert factor[cues.indices[1]] == torch.sort(factor, descending=True).values[1]
    assert cues.kinds == ("grown", "grown", "shrunk")
    np.testing.assert_allclose(cues.ratios, factor[list(cues.indices)].numpy(), rtol=1e-5)
    assert cues.maps.shape == (3, *image.shape[:2])
    layer = dict(direct.model.named_modules())[name]
    inp = _manual_input_of_last_3x3(direct.model, x)
    with torch.no_grad():
        inp = direct.model.layer3[5].relu(direct.model.layer3[5].bn2(direct.model.layer3[5].conv2(inp)))
        v = layer.v.reshape(layer.rank, -1)
        for k, idx in enumerate(cues.indices):
            c = torch.einsum("c,bchw->bhw", v[idx], inp).abs() * layer.s[idx]
            up = F.interpolate(c[None], size=image.shape[:2], mode="bilinear", align_corners=False)[0, 0]
            up = (up - up.min()) / (up.max() - up.min())
            torch.testing.assert_close(cues.maps[k], up, rtol=1e-4, atol=1e-5)
    assert "s/s0 = " in cues.titles[0]
    with pytest.raises(ValueError, match="at most"):
        cue_maps(direct.model, name, x, n_grown=layer.rank, n_shrunk=1)


def test_overlay_and_prepare_image(image: np.ndarray) -> None:
    resized, tensor = prepare_image(image, size=32)
    assert resized.shape == (24, 32, 3) and tensor.shape == (1, 3, 24, 32)
    pixel = (resized[5, 7].astype(np.float64) - np.multiply(IMAGENET_MEAN, 255)) / np.multiply(
        IMAGENET_STD, 255
    )
    np.testing.assert_allclose(tensor[0, :, 5, 7].numpy(), pixel, rtol=1e-5)
    maps = torch.rand(3, 24, 32)
    fig = overlay_cues(resized, maps, ["a", "b", "c"])
    shown = [ax for ax in fig.axes if ax.images]
    assert len(shown) == 4 and [ax.get_title() for ax in shown[1:]] == ["a", "b", "c"]
    np.testing.assert_allclose(shown[1].images[1].get_array(), maps[0].numpy())
    with pytest.raises(ValueError, match="do not match the image"):
        overlay_cues(image, maps, ["a", "b", "c"])


def test_overlay_with_mask_and_colour_bar_leaves_no_blank_panel(image: np.ndarray) -> None:
    resized, _ = prepare_image(image, size=32)
    maps = torch.rand(6, 24, 32)
    mask = np.zeros(resized.shape[:2], bool)
    mask[5:10, 5:12] = True
    fig = overlay_cues(resized, maps, [f"m{i}" for i in range(6)], mask=mask, ncols=4, suptitle="setting")
    panels = [ax for ax in fig.axes if ax.images]
    bars = [ax for ax in fig.axes if not ax.images]
    assert len(panels) == 8 and len(fig.axes) == 9  # image, mask, 6 maps, one colour bar: nothing blank
    assert panels[1].get_title().startswith("ground truth") and len(bars) == 1
    assert "min-max" in bars[0].get_ylabel() and fig._suptitle.get_text() == "setting"
    np.testing.assert_array_equal(~panels[1].images[1].get_array().mask, mask)
    default = overlay_cues(resized, maps[:5], list("abcde"))  # 6 panels: two full rows of 3
    assert len([ax for ax in default.axes if ax.images]) == 6 and len(default.axes) == 7
    with pytest.raises(ValueError, match="mask of shape"):
        overlay_cues(resized, maps, [f"m{i}" for i in range(6)], mask=mask[:-1])


def test_before_after_chart_draws_values_and_percent_change(direct: Converted) -> None:
    name = select_convs(direct.model, "layer3", "3x3")[-1]
    change = singular_value_changes(direct.model, [name])[name]
    fig = plot_before_after(change, k=7, title="t", initial_label="initial (proxy-pretrained)")
    values, percent = fig.axes
    top = change.top_k(7)
    np.testing.assert_allclose(_bars(values), [*top.initial.tolist(), *top.current.tolist()], rtol=1e-6)
    np.testing.assert_allclose(_bars(percent), 100 * (top.ratio.numpy() - 1), rtol=1e-6, atol=1e-9)
    assert values.get_legend().get_texts()[0].get_text() == "initial (proxy-pretrained)"
    assert "%" in percent.get_ylabel()


def _write_curve_csv(run: Path, val: list[float], train: list[float]) -> None:
    (run / "csv").mkdir(parents=True)
    with (run / "csv" / "metrics.csv").open("w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["epoch", "step", "val/miou", "train_episodes/miou", "train/loss"])
        for epoch, (v, t) in enumerate(zip(val, train)):
            writer.writerow([epoch, 10 * epoch, "", "", 0.5])
            writer.writerow([epoch, 10 * epoch + 9, v, t, ""])


def test_strategy_panels_share_axes_and_show_the_mean_over_seeds(tmp_path: Path) -> None:
    _write_curve_csv(tmp_path / "a0", [0.1, 0.2, 0.3], [0.2, 0.3, 0.5])
    _write_curve_csv(tmp_path / "a1", [0.3, 0.4, 0.5], [0.4, 0.5, 0.7])
    _write_curve_csv(tmp_path / "b0", [0.2, 0.2, 0.2], [0.6, 0.6, 0.6])
    fig = plot_strategy_panels({"a": [tmp_path / "a0", tmp_path / "a1"], "b": [tmp_path / "b0"]}, title="T")
    left, right = fig.axes
    assert left.get_shared_y_axes().joined(left, right) and left.get_shared_x_axes().joined(left, right)
    lines = {line.get_label(): line for line in left.get_lines()}
    np.testing.assert_allclose(lines["val episodes (novel)"].get_ydata(), [20, 30, 40])
    np.testing.assert_allclose(lines["train episodes (base)"].get_ydata(), [30, 40, 60])
    np.testing.assert_array_equal(lines["val episodes (novel)"].get_xdata(), [1, 2, 3])
    assert left.get_title() == "a (2 seeds)" and right.get_title() == "b (1 seed)"
    assert left.get_xlabel() == "epoch" and left.get_ylabel() == "mIoU (%)"
    assert left.get_ylim()[0] == 0
    _write_curve_csv(tmp_path / "z0", [0.0, 0.0], [0.0, 0.0])
    (flat,) = plot_strategy_panels({"z": [tmp_path / "z0"]}, title="T", unit="run").axes
    assert flat.get_ylim() == (0.0, 1.0)  # all zeros: the axis starts at 0, not symmetric around it
    assert flat.get_title() == "z (1 run)"
    epochs, mean, low, high = mean_curve(
        [Curve((0, 1, 2), (0.1, 0.2, 0.3)), Curve((0, 1), (0.3, 0.4))]
    )  # only the epochs both runs have
    assert epochs == (0, 1) and mean == pytest.approx([0.2, 0.3]) and low == [0.1, 0.2] and high == [0.3, 0.4]


def test_save_png_writes_a_small_palette_image(tmp_path: Path, image: np.ndarray) -> None:
    from PIL import Image

    from svfseg.analysis.png import save_png

    resized, _ = prepare_image(image, size=64)
    fig = overlay_cues(resized, torch.rand(3, *resized.shape[:2]), ["a", "b", "c"])
    path = save_png(fig, tmp_path / "cues.png", dpi=80)
    with Image.open(path) as saved:
        assert saved.mode == "P" and saved.size == (
            round(fig.get_figwidth() * 80),
            round(fig.get_figheight() * 80),
        )
    plain = tmp_path / "plain.png"
    fig.savefig(plain, dpi=80)
    assert path.stat().st_size < plain.stat().st_size


# ----------------------------------------------------------------------------------------- checkpoint helpers
def test_checkpoint_helpers(tmp_path: Path, image: np.ndarray) -> None:
    with pytest.raises(FileNotFoundError, match=r"checkpoint .*missing\.ckpt not found"):
        load_run(tmp_path / "missing.ckpt")
    (tmp_path / "JPEGImages").mkdir()
    cv2.imwrite(str(tmp_path / "JPEGImages" / "a.png"), image[:, :, ::-1])
    np.testing.assert_array_equal(image_from_dataset(tmp_path, "JPEGImages/a.png"), image)
    np.testing.assert_array_equal(image_from_dataset(None, tmp_path / "JPEGImages" / "a.png"), image)
    with pytest.raises(FileNotFoundError, match=r"b\.png not found"):
        image_from_dataset(tmp_path, "JPEGImages/b.png")
    spec = os.pathsep.join(["svf=runs/a", "full = runs/b", ""])
    assert parse_run_dirs(spec) == {"svf": Path("runs/a"), "full": Path("runs/b")}
    assert parse_run_dirs("") == {}
    with pytest.raises(ValueError, match="not 'label=path'"):
        parse_run_dirs("runs/a")


# ----------------------------------------------------------------------------------------- notebook
def test_notebook_runs_on_a_synthetic_svf_model(
    direct: Converted, image: np.ndarray, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Every cell but the checkpoint loading runs; the loaded objects are replaced by the test model."""
    cv2.imwrite(str(tmp_path / "img.png"), image[:, :, ::-1])
    run = tmp_path / "run" / "csv"
    run.mkdir(parents=True)
    with (run / "metrics.csv").open("w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["epoch", "step", "val/miou", "train_episodes/miou"])
        writer.writerows([[0, 10, 0.3, 0.35], [1, 20, 0.4, 0.5]])
    out = tmp_path / "out"
    monkeypatch.setenv("SVFSEG_CKPT", str(tmp_path / "unused.ckpt"))
    monkeypatch.setenv("SVFSEG_RUN_DIRS", f"svf={tmp_path / 'run'}")
    monkeypatch.setenv("SVFSEG_IMAGE", str(tmp_path / "img.png"))
    monkeypatch.setenv("SVFSEG_ANALYSIS_OUT", str(out))
    nb = nbformat.read(NOTEBOOK, as_version=4)
    nbformat.validate(nb)
    assert all(
        not c.get("outputs") and not c.get("execution_count") for c in nb.cells if c.cell_type == "code"
    )
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert "parameters" in code[0].metadata.get("tags", [])
    assert "load_run(CKPT)" in code[1].source and "load" in code[1].metadata.get("tags", [])
    namespace: dict[str, object] = {}
    exec(compile(code[0].source, "parameters", "exec"), namespace)
    namespace.update(module=direct.model, run_config={}, backbone=direct.model, IMAGE_SIZE=64, N_CUES=1)
    for i, cell in enumerate(code[2:], start=2):
        exec(compile(cell.source, f"cell{i}", "exec"), namespace)
    pngs = sorted(p.name for p in out.glob("*.png"))
    assert pngs == sorted(
        [
            "fig8_layer3_3x3.png",
            "fig10_layer2_3x3.png",
            "fig9_layer3_1x1.png",
            "fig11_layer2_1x1.png",
            "fig5_cues_layer3_last_3x3.png",
            "fig6_cues_layer3_last_1x1.png",
            "miou_curves.png",
        ]
    )
    assert all(cv2.imread(str(out / p)) is not None for p in pngs)
