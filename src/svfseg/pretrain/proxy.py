"""Pretrain a deep-stem ResNet on the procedural proxy and write an ordinary PSPNet "v2" weight file.

SVF's premise is a pretrained backbone whose subspaces are worth keeping; ImageNet weights cannot be
fetched everywhere (CI, air-gapped machines), so this builds a small stand-in in minutes on a CPU. The
file has exactly the key layout of ``resnet50_v2.pth`` (``conv1..3``, ``bn1..3``, ``layer1..4``, ``fc``)
and is read by the normal strict loader through ``backbone.pretrained=<file>``.

Pretraining is dense (a 1x1 classifier on the stride-8 features, per-pixel cross-entropy over the proxy
categories plus background): every pixel is a label, so a CPU budget of a few hundred steps teaches far
more than image-level classification would, and few-shot segmentation reads exactly these dense features.

Next to ``<name>.pth`` a ``<name>.pth.json`` record keeps the recipe, the file's sha256, the held-out proxy
scores and the command that rebuilds it. A second call with the same recipe returns the file at once;
a file that does not match its record, or was built with another recipe, is refused, never overwritten.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from filelock import FileLock
from torch import Tensor, nn

from svfseg.backbones.base import Backbone
from svfseg.backbones.provenance import PROXY_RECORD_KIND, find_record, read_record, record_path
from svfseg.backbones.resnet import DEEP_STEM, build_resnet
from svfseg.backbones.weights import load_backbone_weights
from svfseg.data.transforms import normalize_to_tensor
from svfseg.files import atomic_write, sha256_file, torch_save
from svfseg.pretrain.proxy_data import render_proxy_pool

RECIPE_VERSION = 1
HELD_OUT = 256  # proxy images never trained on, scored after pretraining
# The loss reads the label at every 4th pixel: half the cost of full resolution, and still 2x finer
# than the stride-8 features it supervises.
LOSS_STRIDE = 4


class ProxyWeightsError(RuntimeError):
    """A proxy weight file that exists but does not match its record or the requested recipe."""


@dataclass(frozen=True)
class ProxySpec:
    """Everything the proxy weights depend on (with the machine's float arithmetic)."""

    backbone: str = "resnet50"
    width_mult: float = 0.125
    n_categories: int = 64
    image_size: int = 64
    n_images: int = 4096
    steps: int = 450
    batch_size: int = 32
    lr: float = 0.05
    weight_decay: float = 1e-4
    seed: int = 0
    version: int = RECIPE_VERSION

    def __post_init__(self) -> None:
        if self.backbone not in DEEP_STEM:
            raise ValueError(
                f"proxy pretraining builds PSPNet-layout deep-stem ResNets: backbone={self.backbone!r} is not "
                f"one of {DEEP_STEM}"
            )
        for name in ("n_categories", "image_size", "n_images", "steps", "batch_size"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"proxy {name}={getattr(self, name)!r} must be a positive integer")
        if self.image_size < 32:
            raise ValueError(f"proxy image_size={self.image_size}: use at least 32 px")

    @property
    def file_name(self) -> str:
        return f"{self.backbone}_w{self.width_mult:g}_proxy_seed{self.seed}.pth"

    def command(self, weights_dir: Path) -> str:
        """The CLI call that builds exactly this file (recorded, and printed in error messages)."""
        default = ProxySpec()
        flags = [
            f"--{f.name.replace('_', '-')} {getattr(self, f.name)}"
            for f in fields(self)
            if f.name != "version" and getattr(self, f.name) != getattr(default, f.name)
        ]
        return " ".join(["python -m svfseg.pretrain", f"--out {weights_dir}", *flags])


@dataclass(frozen=True)
class ProxyResult:
    path: Path
    record: dict[str, Any]
    built: bool  # False: returned from the cache


def pspnet_state_dict(backbone: Backbone, head: nn.Conv2d) -> dict[str, Tensor]:
    """Backbone tensors under the PSPNet v2 names (stem without ``layer0.``), the classifier as ``fc``."""
    state: dict[str, Tensor] = {}
    for key, value in backbone.state_dict().items():
        state[key.removeprefix("layer0.")] = value.detach().clone()
    state["fc.weight"] = head.weight.detach().flatten(1).clone()
    state["fc.bias"] = head.bias.detach().clone()
    return state


def _lr_at(step: int, spec: ProxySpec) -> float:
    """Linear warm-up over the first 5% of steps, then cosine decay to zero."""
    warm = max(1, spec.steps // 20)
    if step < warm:
        return spec.lr * (step + 1) / warm
    progress = (step - warm) / max(1, spec.steps - warm)
    return spec.lr * 0.5 * (1.0 + math.cos(math.pi * progress))


def _to_input(images: np.ndarray) -> Tensor:
    """(N, H, W, 3) uint8 RGB -> (N, 3, H, W) float, normalised as the few-shot transforms do."""
    return torch.stack([normalize_to_tensor(image) for image in images])


def _dense_logits(backbone: Backbone, head: nn.Conv2d, x: Tensor, stride: int = 1) -> Tensor:
    """Per-pixel category logits, upsampled from the stride-8 features to ``1/stride`` of the input."""
    logits = head(backbone(x)["layer4"])
    size = (x.shape[-2] // stride, x.shape[-1] // stride)
    return F.interpolate(logits, size=size, mode="bilinear", align_corners=False)


def _subsample(labels: np.ndarray, stride: int) -> np.ndarray:
    """The label at the centre of each ``stride`` x ``stride`` cell (matches ``_dense_logits(stride)``)."""
    return labels[:, stride // 2 :: stride, stride // 2 :: stride]


def score_dense(
    backbone: Backbone, head: nn.Conv2d, images: np.ndarray, labels: np.ndarray
) -> dict[str, float]:
    """Pixel accuracy, foreground/background IoU and category mIoU (present categories) on held-out images."""
    n_cls = head.out_channels
    confusion = torch.zeros(n_cls, n_cls, dtype=torch.int64)
    backbone.eval()
    with torch.no_grad():
        for start in range(0, len(images), 64):
            pred = _dense_logits(backbone, head, _to_input(images[start : start + 64])).argmax(1)
            truth = torch.from_numpy(labels[start : start + 64]).long()
            confusion += torch.bincount((truth * n_cls + pred).flatten(), minlength=n_cls * n_cls).view(
                n_cls, n_cls
            )
    inter = confusion.diag().double()
    union = confusion.sum(0).double() + confusion.sum(1).double() - inter
    present = confusion.sum(1) > 0
    fg_truth, fg_pred = confusion[1:].sum(), confusion[:, 1:].sum()
    fg_inter = confusion[1:, 1:].sum()
    return {
        "pixel_accuracy": float(inter.sum() / confusion.sum()),
        "category_miou": float((inter[present] / union[present]).mean()),
        "foreground_iou": float(fg_inter / (fg_truth + fg_pred - fg_inter)),
    }


def pretrain(
    spec: ProxySpec, *, log: Callable[[str], None] | None = None
) -> tuple[Backbone, nn.Conv2d, dict[str, Any]]:
    """Train the backbone and its dense classifier; returns them with the loss curve and held-out scores."""
    say = log or (lambda _msg: None)
    start = time.perf_counter()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(spec.seed)
        backbone = build_resnet(spec.backbone, width_mult=spec.width_mult)
        head = nn.Conv2d(backbone.channels["layer4"], spec.n_categories + 1, 1)
        images, labels = render_proxy_pool(
            spec.n_images + HELD_OUT, spec.image_size, spec.n_categories, spec.seed
        )
        train_x, train_y = images[: spec.n_images], labels[: spec.n_images]
        say(f"rendered {len(images)} proxy images in {time.perf_counter() - start:.1f} s")
        params = list(backbone.parameters()) + list(head.parameters())
        optimizer = torch.optim.SGD(
            params, lr=spec.lr, momentum=0.9, nesterov=True, weight_decay=spec.weight_decay
        )
        order = torch.Generator().manual_seed(spec.seed)
        losses: list[float] = []
        backbone.train()
        for step in range(spec.steps):
            idx = torch.randint(0, spec.n_images, (spec.batch_size,), generator=order).numpy()
            flip = torch.rand(spec.batch_size, generator=order).numpy() < 0.5
            batch_x = np.where(flip[:, None, None, None], train_x[idx][:, :, ::-1], train_x[idx])
            batch_y = np.where(flip[:, None, None], train_y[idx][:, :, ::-1], train_y[idx])
            for group in optimizer.param_groups:
                group["lr"] = _lr_at(step, spec)
            logits = _dense_logits(backbone, head, _to_input(np.ascontiguousarray(batch_x)), LOSS_STRIDE)
            target = np.ascontiguousarray(_subsample(batch_y, LOSS_STRIDE))
            loss = F.cross_entropy(logits, torch.from_numpy(target).long())
            if not torch.isfinite(loss):
                raise FloatingPointError(
                    f"proxy pretraining diverged at step {step} (loss {loss.item()}); lower --lr"
                )
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            losses.append(loss.item())
            if (step + 1) % 50 == 0 or step + 1 == spec.steps:
                say(
                    f"step {step + 1}/{spec.steps}  loss {np.mean(losses[-50:]):.3f}  ({time.perf_counter() - start:.0f} s)"
                )
        scores = score_dense(backbone, head, images[spec.n_images :], labels[spec.n_images :])
    say(
        f"held-out proxy images: pixel accuracy {scores['pixel_accuracy']:.3f}, foreground IoU "
        f"{scores['foreground_iou']:.3f}, category mIoU {scores['category_miou']:.3f}"
    )
    info = {
        "loss_first_50": float(np.mean(losses[:50])),
        "loss_last_50": float(np.mean(losses[-50:])),
        "held_out": scores,
        "seconds": round(time.perf_counter() - start, 1),
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
    }
    return backbone, head, info


def _check_cached(path: Path, spec: ProxySpec, weights_dir: Path) -> dict[str, Any] | None:
    """The record of a valid cached file for ``spec``; None when nothing is there; raises on a mismatch."""
    record = read_record(path)
    if not path.exists() and record is None:
        return None
    rebuild = (
        f"delete {path} and {find_record(path) or record_path(path)}, then run `{spec.command(weights_dir)}`"
    )
    if record is None:
        raise ProxyWeightsError(
            f"{path} exists but has no proxy record {record_path(path)}: it was not built by "
            f"`python -m svfseg.pretrain`. Keep it and choose another --out, or {rebuild}."
        )
    if record.get("spec") != asdict(spec):
        old = record.get("spec") or {}
        diff = ", ".join(
            f"{k}: {old.get(k)!r} there, {v!r} asked" for k, v in asdict(spec).items() if old.get(k) != v
        )
        raise ProxyWeightsError(
            f"{path} was built with another recipe ({diff}). Choose another --out, or {rebuild}."
        )
    if not path.is_file() or sha256_file(path) != record.get("sha256"):
        raise ProxyWeightsError(
            f"{path} does not match the sha256 in its record {find_record(path)} (truncated or edited): {rebuild}."
        )
    return record


def build_proxy_weights(
    spec: ProxySpec, weights_dir: str | Path, *, log: Callable[[str], None] | None = None
) -> ProxyResult:
    """The proxy weight file of ``spec`` under ``weights_dir``: built once, then returned from the cache.

    Safe under concurrent callers (a file lock; the file and its record are written atomically, the
    weights first), so parallel test workers or sweep jobs build it once.
    """
    weights_dir = Path(weights_dir)
    weights_dir.mkdir(parents=True, exist_ok=True)
    path = weights_dir / spec.file_name
    with FileLock(str(path.with_name(f".{path.name}.lock"))):
        cached = _check_cached(path, spec, weights_dir)
        if cached is not None:
            return ProxyResult(path, cached, built=False)
        backbone, head, info = pretrain(spec, log=log)
        atomic_write(path, lambda tmp: torch_save(pspnet_state_dict(backbone, head), tmp))
        # The written file must load through the normal strict loader, into a fresh backbone.
        load_backbone_weights(build_resnet(spec.backbone, width_mult=spec.width_mult), path, "pspnet")
        record = {
            "kind": PROXY_RECORD_KIND,
            "file": path.name,
            "sha256": sha256_file(path),
            "spec": asdict(spec),
            "rebuild": spec.command(weights_dir),
            "use": f"backbone={spec.backbone} backbone.width_mult={spec.width_mult:g} backbone.pretrained={path}",
            **info,
        }
        atomic_write(record_path(path), lambda tmp: tmp.write_text(json.dumps(record, indent=1) + "\n"))
    return ProxyResult(path, record, built=True)
