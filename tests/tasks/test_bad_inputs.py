"""Bad input, tried on purpose: one table, the exact error of each row, and nothing written where it should not be.

Every row breaks one thing on its own copy of a small synthetic dataset (or config, checkpoint, weights
file), runs the real code path a user would hit (the DataModule, ``train``, ``evaluate``,
``build_backbone``) and asserts the exception type, the message (which names the file, key or value and
the fix) and that no output appeared (no list cache, no ``metrics.json``, no run folder) and no input was
changed. The last rows are the ones that must *not* fail: W&B without a key or a network goes offline
and training goes on, and the key never reaches a file.

Static checks close the module: every ``torch.load`` in the package passes ``weights_only=True`` and
nothing calls ``eval``/``exec``.
"""

from __future__ import annotations

import ast
import hashlib
import os
import shutil
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pytest
import torch
from omegaconf import open_dict

from svfseg.backbones import build_backbone
from svfseg.backbones.weights import BackboneWeightsError
from svfseg.config_checks import ConfigError
from svfseg.data.io import DataFileError, MissingDataError
from svfseg.tasks.builders import build_datamodule
from svfseg.tasks.evaluate import evaluate
from svfseg.tasks.resolve import TrainRun
from svfseg.tasks.train import train
from tests.helpers.hydra import compose_config, tiny_train_config

SRC = Path(__file__).resolve().parents[2] / "src" / "svfseg"
FAKE_KEY = "fake0key1bad2inputs3never4written5678abcd"


# ------------------------------------------------------------------------------------------ fixtures
@pytest.fixture(scope="module")
def base_ckpt(synthetic_pascal, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A finished baseline/resnet50 fold-0 1-shot run (freeze) on the shared synthetic dataset."""
    root, min_pixels = synthetic_pascal
    out = tmp_path_factory.mktemp("bad_inputs_ckpt")
    cfg = tiny_train_config(
        root, out, min_pixels=min_pixels, extra=["finetune=freeze", "test_after_fit=false"]
    )
    train(cfg)
    return out / "checkpoints" / "last.ckpt"


@dataclass
class Ctx:
    """What a row may touch: its own dataset copy, an output folder, the shared checkpoint."""

    root: Path
    min_pixels: int
    out: Path
    ckpt: Path
    tmp: Path
    monkeypatch: pytest.MonkeyPatch
    notes: dict[str, Any] = field(default_factory=dict)

    def train_cfg(self, extra: list[str] | None = None):
        return tiny_train_config(self.root, self.out, min_pixels=self.min_pixels, extra=extra or [])

    def datamodule(self):
        return build_datamodule(TrainRun.from_config(self.train_cfg()))

    def first_train_pair(self) -> tuple[str, str]:
        line = (self.root / "lists" / "train.txt").read_text().splitlines()[0]
        image, label = line.split()
        return image, label

    def eval_cfg(self, extra: list[str]):
        return compose_config(
            "eval",
            [f"ckpt_path={self.ckpt}", f"paths.output_dir={self.out}", "trainer.accelerator=cpu", *extra],
        )


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


# ------------------------------------------------------------------------------------------ the rows
def truncated_jpeg(ctx: Ctx) -> Callable[[], Any]:
    image, _ = ctx.first_train_pair()
    path = ctx.root / image
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    ctx.notes["match"] = rf"image {path} is corrupt or truncated"
    dm = ctx.datamodule()
    dm.setup("fit")  # lists read labels only; the image is read with its episode
    ds = dm.train_dataset()
    index = [i for i, (img, _) in enumerate(dm.train_list.pairs) if img == image]
    assert index, f"{image} is not in the training list"
    return lambda: ds[(0, index[0])]


def label_class_out_of_range(ctx: Ctx) -> Callable[[], Any]:
    _, label = ctx.first_train_pair()
    path = ctx.root / label
    lab = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    lab[0, :3] = 42  # Pascal has classes 1..20
    cv2.imwrite(str(path), lab)
    ctx.notes["match"] = rf"label {path} has values \[42\] outside \{{0\.\.20, 255\}}"
    ctx.notes["valid_caches"] = True
    return lambda: ctx.datamodule().setup("fit")


def list_line_names_a_missing_file(ctx: Ctx) -> Callable[[], Any]:
    lst = ctx.root / "lists" / "train.txt"
    lst.write_text(lst.read_text() + "JPEGImages/nowhere_0001.jpg SegmentationClassAug/nowhere_0001.png\n")
    ctx.notes["match"] = (
        r"2 files of the source list are missing under .*nowhere_0001\.png.*nowhere_0001\.jpg; prepare the "
        r"dataset with: python -m svfseg\.dataprep\.synthetic --layout pascal --root "
    )
    ctx.notes["valid_caches"] = True
    return lambda: ctx.datamodule().setup("fit")


def empty_list(ctx: Ctx) -> Callable[[], Any]:
    lst = ctx.root / "lists" / "train.txt"
    lst.write_text("")
    ctx.notes["match"] = rf"{lst}: the list has no 'IMAGE LABEL' lines"
    ctx.notes["valid_caches"] = True
    return lambda: ctx.datamodule().setup("fit")


def checkpoint_of_another_method(ctx: Ctx) -> Callable[[], Any]:
    ctx.notes["match"] = (
        r"the checkpoint was trained for method=baseline but the command asks for method_name=pfenet"
    )
    return lambda: evaluate(ctx.eval_cfg(["method_name=pfenet"]))


def checkpoint_of_another_backbone(ctx: Ctx) -> Callable[[], Any]:
    ctx.notes["match"] = (
        r"the checkpoint was trained for backbone=resnet50 but the command asks for backbone_name=vgg16_bn"
    )
    return lambda: evaluate(ctx.eval_cfg(["backbone_name=vgg16_bn"]))


def resume_from_a_checkpoint_of_another_method(ctx: Ctx) -> Callable[[], Any]:
    ctx.notes["match"] = (
        rf"ckpt_path={ctx.ckpt} was trained for method=baseline but this run is method=pfenet"
    )
    return lambda: train(ctx.train_cfg(["method=pfenet", f"ckpt_path={ctx.ckpt}"]))


def resume_with_another_finetune_strategy(ctx: Ctx) -> Callable[[], Any]:
    ctx.notes["match"] = (
        rf"ckpt_path={ctx.ckpt} was trained with finetune=freeze but this run sets finetune=svf; a run "
        "resumes with the strategy it was trained with"
    )
    return lambda: train(ctx.train_cfg(["finetune=svf", f"ckpt_path={ctx.ckpt}"]))


def resume_with_other_strategy_options(ctx: Ctx) -> Callable[[], Any]:
    svf_ckpt = ctx.notes["svf_ckpt"] = ctx.tmp / "svf.ckpt"
    ckpt = torch.load(ctx.ckpt, map_location="cpu", weights_only=True)
    ckpt["hyper_parameters"]["run"]["finetune"] = {"name": "svf", "stages": ["layer4"], "train": ["s"]}
    ckpt["svfseg"]["strategy_applied"] = True
    torch.save(ckpt, svf_ckpt)  # what a finetune=svf finetune.stages=[layer4] run records
    ctx.notes["match"] = (
        rf"ckpt_path={svf_ckpt} was trained with .*finetune.stages=\['layer4'\].* but this run sets "
        r".*finetune.stages=\['layer2', 'layer3', 'layer4'\]"
    )
    return lambda: train(ctx.train_cfg(["finetune=svf", f"ckpt_path={svf_ckpt}"]))


def checkpoint_of_another_fold(ctx: Ctx) -> Callable[[], Any]:
    ctx.notes["match"] = r"the checkpoint was trained for fold=0 but the command asks for fold=2"
    return lambda: evaluate(ctx.eval_cfg(["fold=2"]))


def resume_from_a_checkpoint_of_another_fold(ctx: Ctx) -> Callable[[], Any]:
    ctx.notes["match"] = rf"ckpt_path={ctx.ckpt} was trained for fold=0 but this run is fold=1"
    return lambda: train(ctx.train_cfg(["fold=1", f"ckpt_path={ctx.ckpt}"]))


def weights_file_with_missing_keys(ctx: Ctx) -> Callable[[], Any]:
    state = build_backbone("resnet50", width_mult=0.125, warn_if_random=False).state_dict()
    del state["layer4.2.conv3.weight"], state["layer1.0.bn1.running_mean"]
    path = ctx.tmp / "resnet50_v2.pth"
    torch.save(state, path)
    ctx.notes["match"] = rf"{path}.*missing.*layer1\.0\.bn1\.running_mean.*layer4\.2\.conv3\.weight"
    return lambda: build_backbone("resnet50", pretrained=path, width_mult=0.125)


def config_shot_zero(ctx: Ctx) -> Callable[[], Any]:
    ctx.notes["match"] = r"shot=0 is invalid"
    return lambda: train(ctx.train_cfg(["shot=0"]))


def config_fold_four(ctx: Ctx) -> Callable[[], Any]:
    ctx.notes["match"] = r"fold=4 is invalid: choose one of \[0, 1, 2, 3\]"
    return lambda: train(ctx.train_cfg(["fold=4"]))


def output_dir_below_a_file(ctx: Ctx) -> Callable[[], Any]:
    blocker = ctx.tmp / "a_file"
    blocker.write_text("not a folder")
    cfg = ctx.train_cfg()
    with open_dict(cfg):
        cfg.paths.output_dir = str(blocker / "run")
    ctx.notes["match"] = rf"paths.output_dir={blocker / 'run'} cannot be created: {blocker} is a file"
    ctx.notes["absent"] = [blocker / "run"]
    return lambda: train(cfg)


def output_dir_not_writable(ctx: Ctx) -> Callable[[], Any]:
    locked = ctx.tmp / "locked"
    locked.mkdir()
    # root ignores permission bits, so the check's view of the folder is what this row controls
    real_access = os.access
    ctx.monkeypatch.setattr(
        os, "access", lambda p, mode, **kw: False if Path(p) == locked else real_access(p, mode, **kw)
    )
    cfg = ctx.train_cfg()
    with open_dict(cfg):
        cfg.paths.output_dir = str(locked / "run")
    ctx.notes["match"] = rf"paths.output_dir={locked / 'run'} cannot be created: {locked} is not writable"
    ctx.notes["absent"] = [locked / "run"]
    return lambda: train(cfg)


@dataclass(frozen=True)
class Row:
    make: Callable[[Ctx], Callable[[], Any]]
    error: type[BaseException]

    @property
    def id(self) -> str:
        return self.make.__name__


ROWS = [
    Row(truncated_jpeg, DataFileError),
    Row(label_class_out_of_range, DataFileError),
    Row(list_line_names_a_missing_file, MissingDataError),
    Row(empty_list, ValueError),
    Row(checkpoint_of_another_method, ValueError),
    Row(checkpoint_of_another_backbone, ValueError),
    Row(resume_from_a_checkpoint_of_another_method, ValueError),
    Row(resume_with_another_finetune_strategy, ConfigError),
    Row(resume_with_other_strategy_options, ConfigError),
    Row(checkpoint_of_another_fold, ValueError),
    Row(resume_from_a_checkpoint_of_another_fold, ValueError),
    Row(weights_file_with_missing_keys, BackboneWeightsError),
    Row(config_shot_zero, ConfigError),
    Row(config_fold_four, ConfigError),
    Row(output_dir_below_a_file, ConfigError),
    Row(output_dir_not_writable, ConfigError),
]


@pytest.mark.parametrize("row", ROWS, ids=[r.id for r in ROWS])
def test_bad_input_gives_its_exact_error_and_writes_nothing(
    row: Row, synthetic_pascal, base_ckpt: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    shared_root, min_pixels = synthetic_pascal
    root = tmp_path / "data"
    shutil.copytree(shared_root, root, ignore=shutil.ignore_patterns(".svfseg_cache"))
    ckpt_digest = _digest(base_ckpt)
    ctx = Ctx(root, min_pixels, tmp_path / "out", base_ckpt, tmp_path, monkeypatch)
    action = row.make(ctx)  # breaks the input (and may prepare, e.g. build the lists, before the failure)
    before = _tree(tmp_path)

    with pytest.raises(row.error, match=ctx.notes["match"]):
        action()

    # nothing written by the failing call: not a file added, changed or removed anywhere under the row's
    # folder (dataset copy, list cache, output folder), and the shared checkpoint unchanged. Rows that
    # break the training list may leave the caches of what was valid and read before (the val list and
    # its label counts), never a training list.
    after = _tree(tmp_path)
    if ctx.notes.get("valid_caches"):
        added = sorted(set(after) - set(before))
        assert all(Path(p).parent.name == ".svfseg_cache" and "-train-" not in p for p in added), added
        after = {p: d for p, d in after.items() if p not in added}
    assert after == before
    assert not ctx.out.exists()
    for path in ctx.notes.get("absent", []):
        assert not path.exists(), path
    assert _digest(base_ckpt) == ckpt_digest


def _tree(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): _digest(p) for p in sorted(folder.rglob("*")) if p.is_file()}


# ------------------------------------------------------------------------------------------ must not fail
@pytest.mark.slow
@pytest.mark.parametrize("key", [None, FAKE_KEY], ids=["no_key", "key_but_no_network"])
def test_wandb_without_key_or_network_goes_offline_and_training_goes_on(
    synthetic_pascal, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capfd: pytest.CaptureFixture[str], key
) -> None:
    monkeypatch.delenv("WANDB_MODE", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))  # no ~/.netrc login
    monkeypatch.setenv("WANDB_CONFIG_DIR", str(tmp_path / "wandb_config"))
    monkeypatch.setenv("WANDB_BASE_URL", "http://127.0.0.1:9")  # nothing listens on the discard port
    if key is None:
        monkeypatch.delenv("WANDB_API_KEY", raising=False)
    else:
        monkeypatch.setenv("WANDB_API_KEY", key)
    root, min_pixels = synthetic_pascal
    out = tmp_path / "run"
    cfg = tiny_train_config(root, out, min_pixels=min_pixels, extra=["logger=wandb", "finetune=svf"])
    metrics = train(cfg)
    assert 0.0 <= metrics["miou"] <= 1.0 and (out / "metrics.json").is_file()
    assert len(list((out / "wandb").glob("offline-run-*"))) == 1
    if key is not None:
        files = [p for p in tmp_path.rglob("*") if p.is_file()]
        assert [str(p) for p in files if key.encode() in p.read_bytes()] == []
        captured = capfd.readouterr()
        assert key not in captured.out + captured.err


# ------------------------------------------------------------------------------------------ static checks
def _calls(tree: ast.AST) -> list[ast.Call]:
    return [n for n in ast.walk(tree) if isinstance(n, ast.Call)]


def test_every_torch_load_is_weights_only_and_nothing_calls_eval() -> None:
    loads, readers, offenders = 0, 0, []
    for path in sorted(SRC.rglob("*.py")):
        tree = ast.parse(path.read_text(), filename=str(path))
        for call in _calls(tree):
            func = call.func
            name = (
                func.id
                if isinstance(func, ast.Name)
                else func.attr
                if isinstance(func, ast.Attribute)
                else ""
            )
            if name in ("eval", "exec") and isinstance(func, ast.Name):
                offenders.append(f"{path}:{call.lineno}: {name}()")
            readers += name == "read_tensor_file"
            if (
                name == "load"
                and isinstance(func, ast.Attribute)
                and getattr(func.value, "id", "") == "torch"
            ):
                loads += 1
                flags = {k.arg: k.value for k in call.keywords}
                value = flags.get("weights_only")
                if not (isinstance(value, ast.Constant) and value.value is True):
                    offenders.append(f"{path}:{call.lineno}: torch.load without weights_only=True")
            if name == "load_from_checkpoint" or (
                name in ("fit", "test", "validate") and any(k.arg == "ckpt_path" for k in call.keywords)
            ):
                flags = {k.arg: k.value for k in call.keywords}
                value = flags.get("weights_only")
                if not (isinstance(value, ast.Constant) and value.value is True):
                    offenders.append(f"{path}:{call.lineno}: {name} without weights_only=True")
    # One torch.load (svfseg.files.read_tensor_file); every loader reads through it: backbone weights, the
    # BAM import, the wheel and download checks, checkpoints and SVF artifacts, the base learner, exports.
    assert loads == 1
    assert readers >= 8
    assert offenders == []


def test_a_single_stray_label_pixel_is_reported() -> None:
    # Out-of-range values are found from the full pixel histogram, so one stray pixel in the last corner
    # of a 500x500 label is reported, not sampled away.
    from svfseg.data.io import check_label_values

    lab = np.zeros((500, 500), np.uint8)
    lab[499, 499] = 21
    with pytest.raises(DataFileError, match=r"label x\.png has values \[21\] outside \{0\.\.20, 255\}"):
        check_label_values(lab, 20, "x.png")
