"""Proxy pretraining: disjoint categories, a PSPNet-v2 file the strict loader reads, caching, bad files."""

from __future__ import annotations

import json
import re
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from svfseg.backbones import build_backbone
from svfseg.backbones.provenance import find_record, legacy_record_path, read_record, record_path
from svfseg.backbones.weights import BackboneWeightsError, detect_format, read_state_dict
from svfseg.data.class_names import COLOURS, SHAPES, TEXTURES, class_styles
from svfseg.pretrain import ProxySpec, ProxyWeightsError, build_proxy_weights, proxy_styles
from svfseg.pretrain.__main__ import main as proxy_main
from svfseg.pretrain.proxy_data import render_proxy_pool
from tests.helpers.data import tree_digest

# Seconds to build on 2 cores; enough to check files and caching, not to learn anything.
TINY = ProxySpec(width_mult=0.0625, n_categories=8, image_size=32, n_images=16, steps=3, batch_size=4)


def files(folder: Path) -> dict[str, str]:
    """sha256 per file, without the builder's (empty, hidden) lock files."""
    return {k: v for k, v in tree_digest(folder).items() if not k.endswith(".lock")}


@pytest.fixture(scope="module")
def tiny_proxy(tmp_path_factory: pytest.TempPathFactory):
    return build_proxy_weights(TINY, tmp_path_factory.mktemp("proxy"))


def test_categories_are_disjoint_from_every_fewshot_class_and_cover_the_primitives() -> None:
    fewshot = set(class_styles(20)) | set(class_styles(80))
    styles = proxy_styles(64)
    assert len(set(styles)) == 64 and not set(styles) & fewshot
    assert {s.shape for s in styles} == set(SHAPES)
    assert {s.colour for s in styles} == set(COLOURS)
    assert {s.texture for s in styles} == set(TEXTURES)
    # every combination is either a few-shot class or a possible proxy category
    assert len(proxy_styles(len(SHAPES) * len(COLOURS) * len(TEXTURES) - 80)) == 240
    with pytest.raises(ValueError, match=r"choose 1\.\.240"):
        proxy_styles(241)


def test_rendered_pool_is_a_pure_function_of_the_seed() -> None:
    a_img, a_lab = render_proxy_pool(6, 48, 10, seed=3)
    b_img, b_lab = render_proxy_pool(6, 48, 10, seed=3)
    c_img, _ = render_proxy_pool(6, 48, 10, seed=4)
    assert np.array_equal(a_img, b_img) and np.array_equal(a_lab, b_lab)
    assert not np.array_equal(a_img, c_img)
    assert a_img.shape == (6, 48, 48, 3) and a_lab.shape == (6, 48, 48)
    assert a_lab.max() <= 10 and (a_lab > 0).any(axis=(1, 2)).all()  # every image holds an object


def test_file_is_pspnet_v2_and_loads_through_the_normal_config_path(tiny_proxy) -> None:
    state = read_state_dict(tiny_proxy.path)
    assert detect_format(state) == "pspnet"
    assert {"conv1.weight", "bn3.running_var", "layer4.0.conv1.weight", "fc.weight", "fc.bias"} <= set(state)
    assert not any(k.startswith("layer0.") for k in state)
    assert state["fc.weight"].shape == (TINY.n_categories + 1, state["layer4.0.conv3.weight"].shape[0])
    backbone = build_backbone("resnet50", pretrained=tiny_proxy.path, width_mult=TINY.width_mult)
    loaded = backbone.state_dict()
    for key, value in state.items():
        if not key.startswith("fc."):
            ours = key if key.startswith("layer") else f"layer0.{key}"
            assert torch.equal(loaded[ours], value), key


def test_record_describes_the_file_and_a_second_call_returns_at_once(tiny_proxy, tmp_path: Path) -> None:
    assert record_path(tiny_proxy.path).name == f"{tiny_proxy.path.name}.json"  # <file>.json, as fetch's
    record = json.loads(record_path(tiny_proxy.path).read_text())
    assert tiny_proxy.built and record == tiny_proxy.record
    assert record["spec"]["width_mult"] == TINY.width_mult and record["spec"]["steps"] == 3
    assert record["use"].endswith(f"backbone.pretrained={tiny_proxy.path}")
    assert "--width-mult 0.0625" in record["rebuild"] and "--steps 3" in record["rebuild"]
    before = files(tiny_proxy.path.parent)
    start = time.perf_counter()
    again = build_proxy_weights(TINY, tiny_proxy.path.parent)
    assert not again.built and again.path == tiny_proxy.path and again.record == record
    assert time.perf_counter() - start < 2.0
    assert files(tiny_proxy.path.parent) == before


def test_same_seed_same_file_on_one_machine(tiny_proxy, tmp_path: Path) -> None:
    other = build_proxy_weights(TINY, tmp_path)
    assert other.built and other.record["sha256"] == tiny_proxy.record["sha256"]
    reseeded = build_proxy_weights(replace(TINY, seed=1), tmp_path)
    assert (
        reseeded.path.name.endswith("seed1.pth") and reseeded.record["sha256"] != tiny_proxy.record["sha256"]
    )


def test_other_recipe_at_the_same_path_is_refused_and_nothing_is_overwritten(tiny_proxy) -> None:
    before = files(tiny_proxy.path.parent)
    with pytest.raises(ProxyWeightsError, match=r"another recipe \(steps: 3 there, 4 asked\)") as err:
        build_proxy_weights(replace(TINY, steps=4), tiny_proxy.path.parent)
    assert str(tiny_proxy.path) in str(err.value)
    assert files(tiny_proxy.path.parent) == before


def _copy_with_record(src, dst_dir: Path, data: bytes) -> Path:
    dst_dir.mkdir(parents=True, exist_ok=True)
    path = dst_dir / src.path.name
    path.write_bytes(data)
    record_path(path).write_text(record_path(src.path).read_text())
    return path


def test_truncated_file_is_refused_by_loader_and_cache_naming_file_and_fix(
    tiny_proxy, tmp_path: Path
) -> None:
    path = _copy_with_record(tiny_proxy, tmp_path / "cut", tiny_proxy.path.read_bytes()[:5000])
    before = files(path.parent)
    with pytest.raises(BackboneWeightsError) as err:
        build_backbone("resnet50", pretrained=path, width_mult=TINY.width_mult)
    msg = str(err.value)
    assert str(path) in msg and "corrupt" in msg and "proxy-pretrained file" in msg
    assert "rebuild it with `python -m svfseg.pretrain" in msg
    with pytest.raises(ProxyWeightsError, match="does not match the sha256") as err:
        build_proxy_weights(TINY, path.parent)
    assert str(path) in str(err.value) and "python -m svfseg.pretrain" in str(err.value)
    assert files(path.parent) == before


def test_wrong_keys_are_listed_with_the_fix(tiny_proxy, tmp_path: Path) -> None:
    state = read_state_dict(tiny_proxy.path)
    state["layer2.0.conv9.weight"] = state.pop("layer2.0.conv2.weight")
    path = tmp_path / "keys" / tiny_proxy.path.name
    path.parent.mkdir()
    torch.save(state, path)
    record_path(path).write_text(record_path(tiny_proxy.path).read_text())
    with pytest.raises(BackboneWeightsError) as err:
        build_backbone("resnet50", pretrained=path, width_mult=TINY.width_mult)
    msg = str(err.value)
    assert (
        "1 missing key(s) [layer2.0.conv2.weight]" in msg
        and "1 unexpected key(s) [layer2.0.conv9.weight]" in msg
    )
    assert str(path) in msg and "rebuild it with" in msg


def test_other_width_says_which_width_the_file_was_built_for(tiny_proxy) -> None:
    with pytest.raises(BackboneWeightsError) as err:
        build_backbone("resnet50", pretrained=tiny_proxy.path, width_mult=0.125)
    msg = str(err.value)
    assert str(tiny_proxy.path) in msg and "shape mismatch" in msg
    assert "built for backbone.width_mult=0.0625, this backbone has 0.125" in msg
    assert "python -m svfseg.pretrain --width-mult 0.125" in msg


def test_a_record_of_the_older_name_is_still_read(tiny_proxy, tmp_path: Path) -> None:
    # files built before the one rule have <stem>.json beside the .pth: cached, hinted, never rewritten
    path = tmp_path / tiny_proxy.path.name
    path.write_bytes(tiny_proxy.path.read_bytes())
    old = legacy_record_path(path)
    assert old.name == f"{path.stem}.json"
    old.write_text(record_path(tiny_proxy.path).read_text())
    assert find_record(path) == old and read_record(path) == tiny_proxy.record
    before = files(tmp_path)
    again = build_proxy_weights(TINY, tmp_path)
    assert not again.built and again.record == tiny_proxy.record and files(tmp_path) == before
    with pytest.raises(BackboneWeightsError, match=re.escape(f"record {old})")):
        build_backbone("resnet50", pretrained=path, width_mult=0.125)
    with pytest.raises(ProxyWeightsError, match=re.escape(f"delete {path} and {old}, then run")):
        build_proxy_weights(replace(TINY, steps=4), tmp_path)
    # both there: the <file>.json record is the one read
    record_path(path).write_text(json.dumps({**tiny_proxy.record, "rebuild": "the new one"}))
    assert find_record(path) == record_path(path) and read_record(path)["rebuild"] == "the new one"


def test_a_foreign_file_at_the_path_is_never_overwritten(tmp_path: Path) -> None:
    path = tmp_path / TINY.file_name
    path.write_bytes(b"someone else's weights")
    with pytest.raises(ProxyWeightsError, match="has no proxy record"):
        build_proxy_weights(TINY, tmp_path)
    assert path.read_bytes() == b"someone else's weights"


def test_cli_builds_then_reuses(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    flags = ["--width-mult", "0.0625", "--n-categories", "8", "--image-size", "32", "--n-images", "16"]
    flags += ["--steps", "3", "--batch-size", "4", "--out", str(tmp_path)]
    assert proxy_main([*flags, "--quiet"]) == 0
    assert capsys.readouterr().out.strip() == str(tmp_path / TINY.file_name)
    assert proxy_main(flags) == 0
    out = capsys.readouterr().out
    assert (
        out.startswith(f"cached: {tmp_path / TINY.file_name}") and "python train.py backbone=resnet50" in out
    )
    assert proxy_main([*flags, "--steps", "0"]) == 2
    assert "steps=0 must be a positive integer" in capsys.readouterr().err


def test_spec_refuses_non_deep_stem_backbones() -> None:
    with pytest.raises(ValueError, match="deep-stem ResNets: backbone='vgg16_bn'"):
        ProxySpec(backbone="vgg16_bn")
