"""Where each backbone's ImageNet weights come from, and which source reproduces the paper.

The paper (like PFENet and BAM) uses the PSPNet "v2" deep-stem ResNets and torchvision's VGG-16-bn.
The v2 files are only on Google Drive links in those projects' READMEs, with no stable address a
program can fetch, so ``fetch`` prints where to get them. timm's ``resnet50s.gluon_in1k`` /
``resnet101s.gluon_in1k`` have the same deep-stem architecture (64-64-128 stem, Bottleneck stages) on
the Hugging Face hub: ``fetch`` downloads and converts them, as an alternative (other ImageNet training,
so absolute numbers will differ from the paper's).
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
        kind: ``hf`` (Hugging Face hub file), ``url`` (plain HTTPS) or ``manual`` (instructions only).
        paper: True for the weights the paper's numbers were produced with.
        repo_id, filename, revision: the hub file (``hf``).
        url, sha256_prefix: the download and the leading hex digits of its sha256 (``url``; torchvision
            puts them in the file name).
        convert: ``timm_deep_stem`` (timm ``conv1.{0,1,3,4,6}`` / ``bn1`` -> PSPNet v2 ``conv1..3`` /
            ``bn1..3``) or ``none``.
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
        backbone="vgg16",
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


def source(name: str) -> WeightSource:
    """The source called ``name``; an unknown name lists the known ones."""
    for s in SOURCES:
        if s.name == name:
            return s
    raise KeyError(f"unknown weights {name!r}: choose one of {[s.name for s in SOURCES]}")
