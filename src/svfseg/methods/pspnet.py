"""PSPNet, BAM's stage-1 base learner (as in BAM's code), and its checkpoint file.

BAM's stage 2 needs the exact PSPNet trained on the same dataset, fold and backbone; a checkpoint for
another fold would leak novel classes into the base learner and silently inflate results. The file
therefore carries a ``meta`` record that :func:`load_base_learner` checks before any weight is used.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from svfseg.backbones import Backbone, build_backbone
from svfseg.backbones.base import scale_width
from svfseg.data.fold import FoldSpec
from svfseg.files import atomic_write, read_tensor_file, torch_save
from svfseg.messages import preview
from svfseg.methods.components import cross_entropy

PPM_BINS: tuple[int, ...] = (1, 2, 3, 6)
CHECKPOINT_FORMAT = "svfseg-base-learner"
CHECKPOINT_VERSION = 1
_MAX_LISTED = 20


class PPM(nn.Module):
    """Pyramid pooling: per bin, AdaptiveAvgPool -> 1x1 conv (no bias) -> BN -> ReLU -> bilinear upsample.

    The pooled maps are concatenated after the input, so ``out_channels = in + reduction * len(bins)``.
    """

    def __init__(self, in_channels: int, reduction: int, bins: Sequence[int] = PPM_BINS) -> None:
        super().__init__()
        self.out_channels = in_channels + reduction * len(bins)
        self.features = nn.ModuleList(
            nn.Sequential(
                nn.AdaptiveAvgPool2d(b),
                nn.Conv2d(in_channels, reduction, kernel_size=1, bias=False),
                nn.BatchNorm2d(reduction),
                nn.ReLU(inplace=True),
            )
            for b in bins
        )

    def forward(self, x: Tensor) -> Tensor:
        size = x.shape[-2:]
        pooled = [F.interpolate(f(x), size=size, mode="bilinear", align_corners=True) for f in self.features]
        return torch.cat([x, *pooled], dim=1)


class PSPNet(nn.Module):
    """Backbone (uniform dilation, stride 8) + PPM + classifier over base classes and background.

    ``head`` is exposed separately because BAM runs it on layer4 features of its frozen copy.

    Args:
        backbone: a :class:`Backbone`; layer4 channels set the PPM width (2048 R50 / 512 VGG).
        num_classes: base classes + background.
        bins: PPM pooling sizes; each bin reduces to ``channels / len(bins)``.
        dropout: Dropout2d rate before the last 1x1 conv.
    """

    def __init__(
        self, backbone: Backbone, num_classes: int, bins: Sequence[int] = PPM_BINS, dropout: float = 0.1
    ) -> None:
        super().__init__()
        if num_classes < 2:
            raise ValueError(
                f"PSPNet num_classes must be >= 2 (base classes + background), got {num_classes}"
            )
        self.backbone = backbone
        self.num_classes = int(num_classes)
        self.bins = tuple(int(b) for b in bins)
        fea_dim = backbone.channels["layer4"]
        self.ppm = PPM(fea_dim, fea_dim // len(self.bins), self.bins)
        hidden = scale_width(512, backbone.width_mult)
        self.cls = nn.Sequential(
            nn.Conv2d(self.ppm.out_channels, hidden, kernel_size=3, padding=1, bias=False),
            nn.BatchNorm2d(hidden),
            nn.ReLU(inplace=True),
            nn.Dropout2d(p=dropout),
            nn.Conv2d(hidden, self.num_classes, kernel_size=1),
        )

    def head(self, layer4: Tensor) -> Tensor:
        """Class scores (B, num_classes, h, w) at feature resolution from layer4 features."""
        return self.cls(self.ppm(layer4))

    def forward(self, img: Tensor, target: Tensor | None = None) -> tuple[Tensor, Tensor | None]:
        """Logits at the input size and, when ``target`` (B, H, W) is given, CE with ignore 255."""
        logits = self.head(self.backbone(img)["layer4"])
        logits = F.interpolate(logits, size=img.shape[-2:], mode="bilinear", align_corners=True)
        loss = None
        if target is not None:
            loss = cross_entropy(logits, target)
        return logits, loss


# ----------------------------------------------------------------------------- checkpoint file


class BaseLearnerCheckpointError(RuntimeError):
    """A base-learner file that is missing, malformed or made for other settings."""


def stage1_command(
    dataset: str, fold: int, backbone: str, width_mult: float = 1.0, *, debug: str | None = None
) -> str:
    """The command that trains (and saves) the base learner for these settings: the one place it is written.

    ``dataset`` is the config's dataset name (``synthetic`` stays ``synthetic``), ``backbone`` a backbone
    name (each is also its config group's choice); a narrow width is passed on, and ``debug``
    (a ``conf/debug`` profile: ``tiny``, ``fdr``) last, as the run was started.
    """
    width = "" if float(width_mult) == 1.0 else f" backbone.width_mult={float(width_mult):g}"
    profile = f" debug={debug}" if debug else ""
    return f"python train.py stage=base method=bam dataset={dataset} fold={fold} backbone={backbone}{width}{profile}"


def base_learner_meta(pspnet: PSPNet, meta: Mapping[str, Any]) -> dict[str, Any]:
    """The checkpoint's meta record: the caller's ``dataset``/``fold`` (+ extras) and the architecture."""
    for key in ("dataset", "fold"):
        if key not in meta:
            raise KeyError(
                f"base-learner meta needs {key!r} (got keys {sorted(meta)}); pass e.g. dataset='pascal', fold=0"
            )
    arch = {
        "backbone": pspnet.backbone.name,
        "width_mult": float(pspnet.backbone.width_mult),
        "num_classes": pspnet.num_classes,
        "bins": list(pspnet.bins),
    }
    for key, value in arch.items():
        if key in meta and meta[key] != value:
            raise ValueError(f"base-learner meta[{key!r}]={meta[key]!r} contradicts the model ({value!r})")
    return {
        "format": CHECKPOINT_FORMAT,
        "version": CHECKPOINT_VERSION,
        "coco_split": "interleaved",
        **dict(meta),
        **arch,
    }


def save_base_learner(pspnet: PSPNet, path: str | Path, meta: Mapping[str, Any]) -> Path:
    """Write ``{"state_dict", "meta"}`` to ``path`` (parents created, atomically); returns the path.

    ``meta`` must hold ``dataset`` and ``fold``; it may add plain values (epoch, val mIoU, ...). Tensors
    are moved to CPU so the file loads anywhere with ``weights_only=True``.
    """
    path = Path(path)
    record = base_learner_meta(pspnet, meta)
    state = {k: v.detach().cpu() for k, v in pspnet.state_dict().items()}
    path.parent.mkdir(parents=True, exist_ok=True)
    # Atomic: a killed writer never leaves a partial file that stage 2 would try to load.
    return atomic_write(path, lambda tmp: torch_save({"state_dict": state, "meta": record}, tmp))


def _check_meta(path: Path, meta: Mapping[str, Any], expected: Mapping[str, Any], command: str) -> None:
    wrong = {k: (meta.get(k), v) for k, v in expected.items() if meta.get(k) != v}
    if wrong:
        detail = "; ".join(f"{k}: file has {got!r}, run needs {want!r}" for k, (got, want) in wrong.items())
        raise BaseLearnerCheckpointError(
            f"base learner {path} was trained for other settings ({detail}). BAM needs the PSPNet of the "
            f"same dataset, fold and backbone (another fold's base learner has seen this fold's novel "
            f"classes). Point base_learner at the right file or train it: {command}"
        )


def read_base_learner(
    path: str | Path,
    *,
    backbone_name: str,
    fold: FoldSpec,
    width_mult: float = 1.0,
    map_location: str | torch.device = "cpu",
    mmap: bool = False,
) -> dict[str, Any]:
    """The ``{"state_dict", "meta"}`` record of a base-learner file, refused unless made for these settings.

    The meta record must match the fold (its class structure's dataset, fold number and base-class
    count; the COCO split for COCO; a folder dataset's class record), ``backbone_name`` and
    ``width_mult``. ``mmap=True`` maps the tensors instead of reading them: train.py's start-up check
    reads only the record, before anything is built.
    """
    path = Path(path)
    command = stage1_command(fold.dataset, fold.fold, backbone_name, width_mult)
    if not path.is_file():
        raise FileNotFoundError(
            f"base learner checkpoint {path} does not exist. BAM's stage 2 needs the stage-1 PSPNet of "
            f"this dataset/fold/backbone; make it with: {command}"
        )
    ckpt = read_tensor_file(
        path,
        error=BaseLearnerCheckpointError,
        what="a base-learner file",
        fix=f"write it again with: {command}",
        map_location=map_location,
        mmap=mmap,
    )
    if not isinstance(ckpt, dict) or "state_dict" not in ckpt or "meta" not in ckpt:
        keys = sorted(ckpt) if isinstance(ckpt, dict) else type(ckpt).__name__
        raise BaseLearnerCheckpointError(
            f"{path} is not an svfseg base-learner file: expected a dict with 'state_dict' and 'meta', got "
            f"{keys}. Files are written by save_base_learner at the end of: {command}"
        )
    expected: dict[str, Any] = {
        "format": CHECKPOINT_FORMAT,
        "dataset": fold.split_dataset,
        "fold": fold.fold,
        "backbone": backbone_name,
        "width_mult": float(width_mult),
        "num_classes": fold.num_base_labels,
    }
    if fold.split_dataset == "coco":
        expected["coco_split"] = fold.coco_split
    if fold.folds is not None:  # a folder dataset: the file must be of the same folds and class count
        expected["classes"] = dict(fold.fold_record())
    _check_meta(path, ckpt["meta"], expected, command)
    return ckpt


def load_base_learner(
    path: str | Path,
    *,
    backbone_name: str,
    fold: FoldSpec,
    width_mult: float = 1.0,
    map_location: str | torch.device = "cpu",
) -> PSPNet:
    """Rebuild the stage-1 PSPNet from ``path``, refusing files made for other settings
    (:func:`read_base_learner`); the state dict must fill every key of the model and nothing else."""
    ckpt = read_base_learner(
        path, backbone_name=backbone_name, fold=fold, width_mult=width_mult, map_location=map_location
    )
    meta = ckpt["meta"]
    backbone = backbone_shell(backbone_name, width_mult)
    model = PSPNet(backbone, num_classes=int(meta["num_classes"]), bins=meta.get("bins", PPM_BINS))
    command = stage1_command(fold.dataset, fold.fold, backbone_name, width_mult)
    load_exact_state(model, ckpt["state_dict"], Path(path), command)
    return model


def backbone_shell(name: str, width_mult: float) -> Backbone:
    """The PSPNet backbone architecture (uniform dilation) without ImageNet weights.

    Its weights are overwritten from a checkpoint right away, hence no random-init warning.
    """
    return build_backbone(
        name, pretrained=None, dilation="uniform", width_mult=width_mult, warn_if_random=False
    )


def load_exact_state(model: nn.Module, state: Mapping[str, Tensor], path: Path, command: str) -> None:
    """Copy ``state`` into ``model`` only if keys and shapes match exactly; errors list the differences."""
    own = model.state_dict()
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    if missing or unexpected:
        raise BaseLearnerCheckpointError(
            f"base learner {path} does not fit the PSPNet it should rebuild: missing keys [{preview(sorted(missing), _MAX_LISTED)}], "
            f"unexpected keys [{preview(sorted(unexpected), _MAX_LISTED)}]. The file is damaged or from another code version; "
            f"recreate it with: {command}"
        )
    shapes = [
        f"{k}: file {tuple(state[k].shape)} vs model {tuple(v.shape)}"
        for k, v in own.items()
        if state[k].shape != v.shape
    ]
    if shapes:
        raise BaseLearnerCheckpointError(
            f"base learner {path} has tensors of the wrong shape ({preview(sorted(shapes), _MAX_LISTED)}); recreate it with: {command}"
        )
    model.load_state_dict(state, strict=True)
