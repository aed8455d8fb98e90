"""import-bam on files laid out like BAM's real releases: encoder aliases, DDP prefix, training wrapper.

The source network is a module tree written here the way BAM's ``model/PSPNet.py`` registers it (layer0..4,
then ``encoder = nn.Sequential(layer0, ..., layer4)``, ``ppm``, ``cls``); its key names never come from
svfseg's modules. The imported base learner must give the same class scores as that network.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchvision.models.vgg import cfgs, make_layers

from svfseg.data.fold import FoldSpec
from svfseg.methods.pspnet import load_base_learner
from svfseg.weights.__main__ import main
from svfseg.weights.bam_import import BAMImportError, import_bam_base_learner

REPO = Path(__file__).resolve().parents[2]
WIDTH = 0.125  # svfseg's width_mult for the narrow nets below
BASE = 8  # BAM's 64-channel unit at that width (64 * 0.125)
BINS = (1, 2, 3, 6)
BLOCKS = {"resnet50": (3, 4, 6, 3), "resnet101": (3, 4, 23, 3)}
FOLDERS = {"resnet50": "resnet50", "resnet101": "resnet101", "vgg16_bn": "vgg"}
VGG_RANGES = ((0, 7), (7, 14), (14, 24), (24, 34), (34, 43))  # BAM's slices of vgg16_bn's features


class BamBottleneck(nn.Module):
    """BAM's ResNet block: 1x1 -> 3x3 (carries the stride) -> 1x1 x4, projection on the first block."""

    expansion = 4

    def __init__(self, inplanes: int, planes: int, stride: int = 1, downsample: nn.Module | None = None):
        super().__init__()
        self.conv1 = nn.Conv2d(inplanes, planes, kernel_size=1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, kernel_size=3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = nn.Conv2d(planes, planes * 4, kernel_size=1, bias=False)
        self.bn3 = nn.BatchNorm2d(planes * 4)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample

    def forward(self, x: Tensor) -> Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        residual = x if self.downsample is None else self.downsample(x)
        return self.relu(out + residual)


class BamDeepBaseResNet(nn.Module):
    """BAM's deep-base ResNet (3x3 stem 64-64-128); only the parts its PSPNet takes are built."""

    def __init__(self, blocks: tuple[int, int, int, int], base: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, base, 3, stride=2, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(base)
        self.relu1 = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(base, base, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(base)
        self.relu2 = nn.ReLU(inplace=True)
        self.conv3 = nn.Conv2d(base, 2 * base, 3, padding=1, bias=False)
        self.bn3 = nn.BatchNorm2d(2 * base)
        self.relu3 = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
        self.inplanes = 2 * base
        self.layer1 = self._stage(base, blocks[0], 1)
        self.layer2 = self._stage(2 * base, blocks[1], 2)
        self.layer3 = self._stage(4 * base, blocks[2], 2)
        self.layer4 = self._stage(8 * base, blocks[3], 2)

    def _stage(self, planes: int, n: int, stride: int) -> nn.Sequential:
        downsample = None
        if stride != 1 or self.inplanes != planes * 4:
            downsample = nn.Sequential(
                nn.Conv2d(self.inplanes, planes * 4, kernel_size=1, stride=stride, bias=False),
                nn.BatchNorm2d(planes * 4),
            )
        layers = [BamBottleneck(self.inplanes, planes, stride, downsample)]
        self.inplanes = planes * 4
        layers += [BamBottleneck(self.inplanes, planes) for _ in range(1, n)]
        return nn.Sequential(*layers)


class BamPPM(nn.Module):
    """BAM's pyramid pooling: per bin pool -> 1x1 conv -> BN -> ReLU, upsampled and concatenated."""

    def __init__(self, in_dim: int, reduction: int, bins: tuple[int, ...]) -> None:
        super().__init__()
        self.features = nn.ModuleList(
            nn.Sequential(
                nn.AdaptiveAvgPool2d(b),
                nn.Conv2d(in_dim, reduction, kernel_size=1, bias=False),
                nn.BatchNorm2d(reduction),
                nn.ReLU(inplace=True),
            )
            for b in bins
        )

    def forward(self, x: Tensor) -> Tensor:
        size = x.shape[2:]
        out = [x]
        out += [F.interpolate(f(x), size, mode="bilinear", align_corners=True) for f in self.features]
        return torch.cat(out, 1)


def bam_vgg16_bn_features(base: int) -> nn.Sequential:
    """torchvision's vgg16_bn ``features`` (configuration D; ``base`` = 64 is the real one) with BAM's pools.

    BAM's own ``make_layers`` uses ``ceil_mode=True`` max-pools; torchvision's floor them, so they are
    switched here as BAM's file would have them.
    """
    cfg = [c if c == "M" else int(c) * base // 64 for c in cfgs["D"]]
    features = make_layers(cfg, batch_norm=True)
    for m in features:
        if isinstance(m, nn.MaxPool2d):
            m.ceil_mode = True
    return features


class BamStylePSPNet(nn.Module):
    """BAM's stage-1 PSPNet registered as its ``model/PSPNet.py`` does (``zoom_factor`` 8)."""

    def __init__(self, backbone: str, classes: int, base: int) -> None:
        super().__init__()
        if backbone == "vgg16_bn":
            features = bam_vgg16_bn_features(base)
            stages = [nn.Sequential(*[features[i] for i in range(a, b)]) for a, b in VGG_RANGES]
            self.layer0, self.layer1, self.layer2, self.layer3, self.layer4 = stages
            fea_dim = 8 * base
        else:
            resnet = BamDeepBaseResNet(BLOCKS[backbone], base)
            self.layer0 = nn.Sequential(
                resnet.conv1, resnet.bn1, resnet.relu1, resnet.conv2, resnet.bn2, resnet.relu2,
                resnet.conv3, resnet.bn3, resnet.relu3, resnet.maxpool,
            )  # fmt: skip
            self.layer1, self.layer2, self.layer3, self.layer4 = (
                resnet.layer1, resnet.layer2, resnet.layer3, resnet.layer4,
            )  # fmt: skip
            # BAM's patch loop: stride 1 everywhere in layer3/4, 3x3 convs dilated 2 / 4.
            for layer, d in ((self.layer3, 2), (self.layer4, 4)):
                for name, m in layer.named_modules():
                    if "conv2" in name:
                        m.dilation, m.padding, m.stride = (d, d), (d, d), (1, 1)
                    elif "downsample.0" in name:
                        m.stride = (1, 1)
            fea_dim = 32 * base
        self.encoder = nn.Sequential(self.layer0, self.layer1, self.layer2, self.layer3, self.layer4)
        self.ppm = BamPPM(fea_dim, fea_dim // len(BINS), BINS)
        self.cls = nn.Sequential(
            nn.Conv2d(fea_dim * 2, 8 * base, kernel_size=3, padding=1, bias=False),
            nn.BatchNorm2d(8 * base),
            nn.ReLU(inplace=True),
            nn.Dropout2d(p=0.1),
            nn.Conv2d(8 * base, classes, kernel_size=1),
        )

    def forward(self, x: Tensor) -> Tensor:
        h = int((x.shape[2] - 1) / 8 * 8 + 1)
        w = int((x.shape[3] - 1) / 8 * 8 + 1)
        x = self.cls(self.ppm(self.encoder(x)))
        return F.interpolate(x, size=(h, w), mode="bilinear", align_corners=True)


def release_file(
    root: Path, backbone: str, *, dataset: str = "pascal", fold: int = 0, base: int = BASE, seed: int = 0
) -> tuple[Path, BamStylePSPNet]:
    """BAM's ``best.pth`` for a random BamStylePSPNet: DDP ``module.`` keys in the training wrapper."""
    torch.manual_seed(seed)
    classes = 16 if dataset == "pascal" else 61
    model = BamStylePSPNet(backbone, classes, base)
    # BAM's optimizer groups (encoder, ppm, cls); one step so the momentum buffers exist.
    sgd = torch.optim.SGD(
        [
            {"params": model.encoder.parameters()},
            {"params": model.ppm.parameters()},
            {"params": model.cls.parameters()},
        ],
        lr=1e-3,
        momentum=0.9,
        weight_decay=1e-4,
    )
    for p in model.parameters():
        p.grad = torch.randn_like(p)
    sgd.step()
    bns = [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
    with torch.no_grad():
        for m in bns:  # non-trivial BN affine, so a mis-mapped BN shows in the scores
            m.weight.uniform_(0.5, 1.5)
            m.bias.uniform_(-0.2, 0.2)
            m.momentum = None  # running stats = the mean over the calibration batches
        # Running statistics from real forward passes: the scores then depend on the input (random
        # statistics would normalise vanished activations into an input-independent constant).
        model.train()
        for _ in range(2):
            model(torch.randn(2, 3, 49, 49))
    model.eval()
    state = {f"module.{k}": v for k, v in model.state_dict().items()}
    path = root / "initmodel" / "PSPNet" / dataset / f"split{fold}" / FOLDERS[backbone] / "best.pth"
    path.parent.mkdir(parents=True)
    torch.save({"epoch": 37, "state_dict": state, "optimizer": sgd.state_dict()}, path)
    return path, model


def edit_state(path: Path, edit) -> None:
    ckpt = torch.load(path, weights_only=True)
    edit(ckpt["state_dict"])
    torch.save(ckpt, path)


def assert_same_scores(ours: Tensor, theirs: Tensor) -> None:
    assert ours.shape == theirs.shape
    rel = (ours - theirs).abs().max() / theirs.abs().max()
    assert theirs.abs().max() > 0 and rel <= 1e-5, f"relative difference {rel:.3g}"


@pytest.mark.parametrize("backbone", ["resnet50", "resnet101", "vgg16_bn"])
def test_release_file_imports_and_gives_bams_class_scores(tmp_path: Path, backbone: str) -> None:
    source, bam = release_file(tmp_path, backbone, fold=2)
    keys = torch.load(source, weights_only=True)["state_dict"].keys()
    aliases = [k for k in keys if k.startswith("module.encoder.")]
    twins = {re.sub(r"^module\.encoder\.(\d)\.", r"module.layer\1.", k) for k in aliases}
    assert aliases and twins == {k for k in keys if re.match(r"module\.layer\d\.", k)}  # every tensor twice
    out, warning = import_bam_base_learner(
        source, dataset="pascal", fold=2, backbone=backbone, weights_dir=tmp_path / "w", width_mult=WIDTH
    )
    assert warning is None
    loaded = load_base_learner(
        out, backbone_name=backbone, fold=FoldSpec("pascal", 2), width_mult=WIDTH
    ).eval()
    meta = torch.load(out, weights_only=True)["meta"]
    assert (meta["source"], meta["source_epoch"], meta["backbone"]) == ("bam-release", 37, backbone)
    x = torch.randn(2, 3, 65, 57)  # odd sizes: VGG's ceil-mode pools and the align-corners upsample
    with torch.no_grad():
        ours, _ = loaded(x)
        theirs = bam(x)
    assert_same_scores(ours, theirs)


def test_cli_imports_a_full_width_vgg_release_file(tmp_path: Path) -> None:
    source, bam = release_file(tmp_path, "vgg16_bn", dataset="coco", fold=1, base=64, seed=1)
    out = tmp_path / "w" / "coco_vgg.pt"
    cmd = [sys.executable, "-m", "svfseg.weights", "import-bam", str(source), "--dataset", "coco"]
    cmd += ["--fold", "1", "--backbone", "vgg16_bn", "--out", str(out)]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run(cmd, env=env, cwd=REPO, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert f"wrote {out}" in done.stdout
    loaded = load_base_learner(out, backbone_name="vgg16_bn", fold=FoldSpec("coco", 1)).eval()
    x = torch.randn(1, 3, 41, 41)
    with torch.no_grad():
        ours, _ = loaded(x)
        theirs = bam(x)
    assert_same_scores(ours, theirs)


@pytest.mark.parametrize("how", ["values", "dtype"])
def test_an_alias_that_differs_from_its_layer_twin_is_refused(tmp_path: Path, how: str) -> None:
    source, _ = release_file(tmp_path, "resnet50")
    key = "module.encoder.3.2.bn1.running_mean"

    def edit(state: dict[str, Tensor]) -> None:
        if how == "values":
            state[key] = state[key].clone()
            state[key][0] += 1e-3
        else:
            state[key] = state[key].double()

    edit_state(source, edit)
    match = r"encoder aliases differ from their layer twins: \[encoder\.3\.2\.bn1\.running_mean"
    with pytest.raises(BAMImportError, match=match) as err:
        import_bam_base_learner(
            source,
            dataset="pascal",
            fold=0,
            backbone="resnet50",
            weights_dir=tmp_path / "w",
            width_mult=WIDTH,
        )
    assert "layer3.2.bn1.running_mean" in str(err.value) and "edited or corrupted" in str(err.value)
    assert ("values differ" if how == "values" else "torch.float64") in str(err.value)
    assert not (tmp_path / "w").exists()


def test_an_alias_without_a_layer_twin_is_refused(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    source, _ = release_file(tmp_path, "resnet50")
    edit_state(source, lambda state: state.pop("module.layer2.1.conv1.weight"))
    out = tmp_path / "w" / "pspnet.pt"
    argv = ["import-bam", str(source), "--dataset", "pascal", "--fold", "0", "--backbone", "resnet50"]
    assert main([*argv, "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert "encoder aliases without a layer twin: [encoder.2.1.conv1.weight]" in err
    assert "not a BAM PSPNet" in err and not out.exists()
