"""python -m svfseg.weights import-bam: BAM's released PSPNet checkpoints -> svfseg base-learner files."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from svfseg.data.fold import FoldSpec
from svfseg.methods.pspnet import PSPNet, backbone_shell, load_base_learner
from svfseg.weights.__main__ import main
from svfseg.weights.bam_import import BAMImportError, import_bam_base_learner

WIDTH = 0.125
# svfseg's stem names -> BAM's nn.Sequential indices, written out independently of the module under test.
STEM_TO_BAM = {"conv1": "0", "bn1": "1", "conv2": "3", "bn2": "4", "conv3": "6", "bn3": "7"}


def bam_state(model: PSPNet, backbone: str) -> dict[str, torch.Tensor]:
    """``model``'s tensors under BAM's names, with the ``module.`` prefix DDP training adds."""
    out = {}
    for key, value in model.state_dict().items():
        name = key.removeprefix("backbone.")
        parts = name.split(".")
        if backbone != "vgg16_bn" and parts[0] == "layer0":
            name = ".".join(["layer0", STEM_TO_BAM[parts[1]], *parts[2:]])
        out[f"module.{name}"] = value.clone()
    return out


def _source(
    tmp_path: Path, dataset: str, fold: int, folder: str, backbone: str, classes: int
) -> tuple[Path, PSPNet]:
    torch.manual_seed(fold)
    model = PSPNet(backbone_shell(backbone, WIDTH), num_classes=classes).eval()
    for m in model.modules():  # non-trivial BN statistics, so a mis-mapped BN shows
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-1, 1)
            m.running_var.uniform_(0.5, 2)
    path = tmp_path / "initmodel" / "PSPNet" / dataset / f"split{fold}" / folder / "best.pth"
    path.parent.mkdir(parents=True)
    torch.save({"state_dict": bam_state(model, backbone), "epoch": 100}, path)
    return path, model


@pytest.mark.parametrize(("backbone", "folder"), [("resnet50", "resnet50"), ("vgg16_bn", "vgg")])
def test_import_renames_every_key_and_reproduces_the_network(
    tmp_path: Path, backbone: str, folder: str
) -> None:
    source, original = _source(tmp_path, "pascal", 1, folder, backbone, classes=16)
    out, warning = import_bam_base_learner(
        source, dataset="pascal", fold=1, backbone=backbone, weights_dir=tmp_path / "w", width_mult=WIDTH
    )
    assert warning is None
    assert out == tmp_path / "w" / "base_learner" / "pascal" / "fold1" / backbone / "pspnet.pt"
    loaded = load_base_learner(
        out, backbone_name=backbone, fold=FoldSpec("pascal", 1), width_mult=WIDTH
    ).eval()
    meta = torch.load(out, weights_only=True)["meta"]
    assert meta["source"] == "bam-release" and len(meta["source_sha256"]) == 64
    x = torch.randn(1, 3, 65, 65)
    with torch.no_grad():
        (ours, _), (theirs, _) = loaded(x), original(x)
    assert torch.equal(ours, theirs)
    for key, value in original.state_dict().items():
        assert torch.equal(loaded.state_dict()[key], value), key


def _nothing_written(root: Path) -> bool:
    return not (root / "w").exists()


@pytest.mark.parametrize(
    ("case", "match"),
    [
        ("another_fold", r"another setting \(fold: the file's folder says 2, you asked for 1\)"),
        ("another_backbone", r"fold|backbone"),
        ("coco_file_for_pascal", r"the classifier has 61 outputs, a pascal fold-1 base learner has 16"),
        ("missing_key", r"missing keys \[backbone\.layer4\.2\.bn3\.weight\]"),
        (
            "truncated",
            r"does not read as a PyTorch checkpoint \(truncated or corrupt:.*download BAM.s best\.pth again",
        ),
        ("not_a_state_dict", r"holds no state dict of tensors"),
    ],
)
def test_bad_bam_files_are_refused_and_nothing_is_written(tmp_path: Path, case: str, match: str) -> None:
    backbone = "resnet50"
    if case == "another_fold":
        source, _ = _source(tmp_path, "pascal", 2, "resnet50", backbone, classes=16)
    elif case == "another_backbone":  # a VGG file renamed into the resnet50 folder
        source, _ = _source(tmp_path, "pascal", 1, "resnet50", "vgg16_bn", classes=16)
        match = r"does not fit the PSPNet .*unexpected keys \[backbone\.layer0\.conv1\.bias"
    elif case == "coco_file_for_pascal":
        source, _ = _source(tmp_path, "pascal", 1, "resnet50", backbone, classes=61)
    else:
        source, _ = _source(tmp_path, "pascal", 1, "resnet50", backbone, classes=16)
        if case == "missing_key":
            ckpt = torch.load(source, weights_only=True)
            del ckpt["state_dict"]["module.layer4.2.bn3.weight"]
            torch.save(ckpt, source)
        elif case == "truncated":
            source.write_bytes(source.read_bytes()[:1000])
        elif case == "not_a_state_dict":
            torch.save({"state_dict": {"epoch": 3}}, source)
    with pytest.raises(BAMImportError, match=match):
        import_bam_base_learner(
            source, dataset="pascal", fold=1, backbone=backbone, weights_dir=tmp_path / "w", width_mult=WIDTH
        )
    assert _nothing_written(tmp_path)


def test_cli_exit_codes_and_the_path_warning(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    source, _ = _source(tmp_path, "coco", 0, "resnet50", "resnet50", classes=61)
    loose = tmp_path / "downloads" / "best.pth"  # outside BAM's layout: imported, with a warning
    loose.parent.mkdir()
    loose.write_bytes(source.read_bytes())
    out = tmp_path / "w" / "coco.pt"
    # The CLI builds full-width nets (BAM's releases); the narrow test file does not fit one.
    assert (
        main(
            [
                "import-bam",
                str(loose),
                "--dataset",
                "coco",
                "--fold",
                "0",
                "--backbone",
                "resnet50",
                "--out",
                str(out),
            ]
        )
        == 2
    )
    assert "has tensors of the wrong shape" in capsys.readouterr().err and not out.exists()
    path, warning = import_bam_base_learner(
        loose, dataset="coco", fold=0, backbone="resnet50", out=out, width_mult=WIDTH
    )
    assert path == out and out.is_file()
    assert warning is not None and "fold cannot be checked from the path" in warning
    meta = torch.load(out, weights_only=True)["meta"]
    assert (meta["dataset"], meta["fold"], meta["coco_split"], meta["num_classes"]) == (
        "coco",
        0,
        "interleaved",
        61,
    )
