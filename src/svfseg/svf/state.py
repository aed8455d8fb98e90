"""The small SVF artifact: trainable SVF tensors plus a fingerprint of the base weights.

A full ``model.state_dict()`` of a converted model already holds U, V, s and the per-layer metadata, and
loading it never re-runs the SVD. This module adds the few-KB artifact for sharing a fine-tune:

    {"format": "svfseg.svf", "version": 1, "base_fingerprint": sha256 hex,
     "layers": {name: {"fingerprint", "kind", "parametrization", "rank", "groups"}},
     "tensors": {"<layer>.<u|s|s_delta|v>": CPU tensor}}

Only str/int/dict/tensor values, so ``torch.load(path, weights_only=True)`` reads it. "Trainable" means
``requires_grad`` at save time. Restoring needs a model converted from the same original weights: the
per-layer fingerprint is the sha256 of the original weight and bias, so it is stable across machines;
the factors are recomputed by the SVD there (signs are normalised, see ``decompose``). Exactly repeated
singular values could still span a rotated subspace on another LAPACK build; the full state dict is the
exact record when that matters.
"""

from __future__ import annotations

import hashlib
from typing import Any

import torch
from torch import Tensor, nn

from svfseg.svf.convert import svf_layers
from svfseg.svf.errors import SVFStateError
from svfseg.svf.layers import SVFLayer

FORMAT = "svfseg.svf"
FORMAT_VERSION = 1
_SHOWN = 6


def _layers(model: nn.Module) -> dict[str, SVFLayer]:
    layers = dict(svf_layers(model))
    if not layers:
        raise SVFStateError(
            f"{type(model).__name__} holds no SVF layer; call apply_svf before (de)serialising"
        )
    return layers


def base_fingerprint(model: nn.Module) -> str:
    """sha256 over (name, original-weight fingerprint) of every SVF layer, in name order."""
    h = hashlib.sha256(f"{FORMAT}|base".encode())
    for name, layer in sorted(_layers(model).items()):
        h.update(f"|{name}={layer.fingerprint}".encode())
    return h.hexdigest()


def _trainable(layers: dict[str, SVFLayer]) -> dict[str, nn.Parameter]:
    return {
        f"{name}.{t_name}": p
        for name, layer in layers.items()
        for t_name, p in layer.svf_tensors()
        if p.requires_grad
    }


def _layer_meta(layer: SVFLayer) -> dict[str, Any]:
    return {
        "fingerprint": layer.fingerprint,
        "kind": layer.kind,
        "parametrization": layer.parametrization,
        "rank": layer.rank,
        "groups": layer.groups,
    }


def svf_state_dict(model: nn.Module) -> dict[str, Any]:
    """The trainable SVF tensors of ``model`` (on CPU) with the base fingerprint and format version."""
    layers = _layers(model)
    return {
        "format": FORMAT,
        "version": FORMAT_VERSION,
        "base_fingerprint": base_fingerprint(model),
        "layers": {name: _layer_meta(layer) for name, layer in layers.items()},
        "tensors": {k: p.detach().to("cpu").clone() for k, p in _trainable(layers).items()},
    }


def _listing(names: list[str]) -> str:
    more = f", ... ({len(names)} in all)" if len(names) > _SHOWN else ""
    return ", ".join(names[:_SHOWN]) + more


def _check_header(state: Any) -> None:
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        got = state.get("format") if isinstance(state, dict) else type(state).__name__
        raise SVFStateError(f"not an SVF artifact: format={got!r}, expected {FORMAT!r} (from svf_state_dict)")
    if state.get("version") != FORMAT_VERSION:
        raise SVFStateError(
            f"SVF artifact version {state.get('version')!r} is not supported (this svfseg reads version "
            f"{FORMAT_VERSION})"
        )
    missing = [k for k in ("base_fingerprint", "layers", "tensors") if k not in state]
    if missing:
        raise SVFStateError(f"SVF artifact lacks the key(s) {missing}")


def _check_layers(saved: dict[str, dict[str, Any]], layers: dict[str, SVFLayer]) -> None:
    missing = sorted(set(layers) - set(saved))
    unexpected = sorted(set(saved) - set(layers))
    if missing or unexpected:
        raise SVFStateError(
            "SVF artifact and model convert different layers: "
            f"missing from the artifact: [{_listing(missing)}]; not SVF layers in the model: "
            f"[{_listing(unexpected)}]; convert the model with the include/exclude used in training"
        )
    for key in ("kind", "parametrization", "rank", "groups"):
        wrong = [n for n in sorted(layers) if saved[n].get(key) != getattr(layers[n], key)]
        if wrong:
            n = wrong[0]
            raise SVFStateError(
                f"SVF artifact '{key}' differs at {len(wrong)} layer(s), e.g. {n}: artifact "
                f"{saved[n].get(key)!r}, model {getattr(layers[n], key)!r}"
            )
    changed = [n for n in sorted(layers) if saved[n].get("fingerprint") != layers[n].fingerprint]
    if changed:
        n = changed[0]
        raise SVFStateError(
            f"SVF artifact was trained on other base weights: fingerprint mismatch at {len(changed)} of "
            f"{len(layers)} layer(s), e.g. {n}: artifact {str(saved[n].get('fingerprint'))[:12]}..., "
            f"model {layers[n].fingerprint[:12]}...; load the pretrained weights used in training "
            "before apply_svf"
        )


def load_svf_state_dict(model: nn.Module, state: dict[str, Any]) -> None:
    """Copy an artifact from :func:`svf_state_dict` into ``model`` after checking it belongs to it.

    Raises :class:`SVFStateError` for another format/version, other converted layers, other base
    weights, missing/unexpected tensor keys or wrong shapes; nothing is written unless all checks pass.
    """
    _check_header(state)
    layers = _layers(model)
    _check_layers(state["layers"], layers)
    if state["base_fingerprint"] != base_fingerprint(model):
        raise SVFStateError(
            "SVF artifact base_fingerprint does not match the model although every layer matches; "
            "the artifact is corrupted or was edited"
        )
    targets = _trainable(layers)
    tensors: dict[str, Tensor] = state["tensors"]
    missing = sorted(set(targets) - set(tensors))
    unexpected = sorted(set(tensors) - set(targets))
    if missing or unexpected:
        raise SVFStateError(
            f"SVF artifact tensors do not match the model's trainable SVF tensors: missing [{_listing(missing)}]; "
            f"unexpected [{_listing(unexpected)}]; convert with the same train=... subspaces "
            "(requires_grad decides what is saved and expected)"
        )
    for key, p in targets.items():
        if tuple(tensors[key].shape) != tuple(p.shape):
            raise SVFStateError(
                f"SVF artifact tensor '{key}' has shape {tuple(tensors[key].shape)}, model expects {tuple(p.shape)}"
            )
    with torch.no_grad():
        for key, p in targets.items():
            p.copy_(tensors[key].to(device=p.device, dtype=p.dtype))
