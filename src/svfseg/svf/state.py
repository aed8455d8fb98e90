"""The small fine-tune artifact: every trained tensor of a model plus fingerprints of the base weights.

A full ``model.state_dict()`` of a converted model already holds U, V, s and the per-layer metadata, and
loading it never re-runs the SVD. This module adds the small artifact for sharing a fine-tune, in the
spirit of an adapter file with ``modules_to_save``:

    {"format": "svfseg.svf", "version": 2,
     "base_fingerprint": sha256 hex over the SVF layers ("" without SVF layers),
     "frozen_fingerprint": sha256 hex over every tensor the artifact does not hold (outside SVF layers),
     "layers": {name: {"fingerprint", "kind", "parametrization", "rank", "groups"
                       (+ "directions", "group_k", "residual_rank" for top/bottom/residual layers)}},
     "tensors": {"<layer>.<u|s|s_delta|v>": CPU tensor},        # trained SVF factors
     "modules": {"<module>.<parameter|buffer>": CPU tensor}}    # every other trained tensor

What is saved is decided by ``requires_grad`` at save time, not by a list of names, so any selection of
trainable tensors is covered:

* ``tensors``: the SVF factors that require grad;
* ``modules``: every other parameter that requires grad, by its name in ``model``, plus the persistent
  buffers of the (non-SVF) modules that own such a parameter: a BatchNorm whose affine trains carries its
  running statistics along, since a fine-tune with BN in train mode moves them too.

Only str/int/dict/tensor values, so ``torch.load(path, weights_only=True)`` reads it. Restoring needs a
model built from the same original weights with the same tensors trainable. The per-layer fingerprint is
the sha256 of a converted layer's original weight and bias, and ``frozen_fingerprint`` the sha256 of every
other parameter and persistent buffer the artifact does not hold, so both are stable across machines.
The factors are recomputed by the SVD there (signs are normalised, see ``decompose``). Exactly repeated
singular values could still span a rotated subspace on another LAPACK build; the full state dict is the
exact record when that matters. Version 1 artifacts (SVF tensors only, no ``modules``) still load onto a
model whose only trainable tensors are SVF factors.
"""

from __future__ import annotations

import hashlib
from typing import Any

import torch
from torch import Tensor, nn

from svfseg.messages import preview
from svfseg.svf.convert import require_svf_layers, svf_layers
from svfseg.svf.decompose import tensor_digest
from svfseg.svf.errors import SVFStateError
from svfseg.svf.layers import SVFLayer

FORMAT = "svfseg.svf"
FORMAT_VERSION = 2
READABLE_VERSIONS = (1, 2)


def base_fingerprint(model: nn.Module) -> str:
    """sha256 over (name, original-weight fingerprint) of every SVF layer, in name order."""
    h = hashlib.sha256(f"{FORMAT}|base".encode())
    for name, layer in sorted(require_svf_layers(model, "base_fingerprint").items()):
        h.update(f"|{name}={layer.fingerprint}".encode())
    return h.hexdigest()


def _trainable(layers: dict[str, SVFLayer]) -> dict[str, nn.Parameter]:
    return {
        f"{name}.{t_name}": p
        for name, layer in layers.items()
        for t_name, p in layer.svf_tensors()
        if p.requires_grad
    }


def _persistent_buffers(module: nn.Module) -> list[tuple[str, Tensor]]:
    skip = getattr(module, "_non_persistent_buffers_set", set())
    return [(n, b) for n, b in module.named_buffers(recurse=False) if n not in skip]


def _plain_trained(model: nn.Module, layers: dict[str, SVFLayer]) -> dict[str, Tensor]:
    """Trainable parameters that are not SVF factors, plus the persistent buffers of their (non-SVF) owners."""
    factors = {id(p) for layer in layers.values() for _, p in layer.svf_tensors()}
    svf_modules = {id(layer) for layer in layers.values()}
    seen: set[int] = set()
    out: dict[str, Tensor] = {}
    for mod_name, module in model.named_modules():
        prefix = f"{mod_name}." if mod_name else ""
        own = []
        for n, p in module.named_parameters(recurse=False):
            if p.requires_grad and id(p) not in factors and id(p) not in seen:
                seen.add(id(p))
                own.append((n, p))
        if not own:
            continue
        out.update((prefix + n, p) for n, p in own)
        if id(module) not in svf_modules:  # an SVF layer's s0 derives from the base weights
            out.update((prefix + n, b) for n, b in _persistent_buffers(module))
    return out


def adapter_tensors(model: nn.Module) -> dict[str, Tensor]:
    """The live tensors :func:`adapter_state_dict` would save, by name (SVF factors and plain tensors).

    Useful to size an artifact before writing it: ``sum(t.numel() for t in adapter_tensors(m).values())``.
    """
    layers = dict(svf_layers(model))
    return {**_trainable(layers), **_plain_trained(model, layers)}


def frozen_fingerprint(model: nn.Module, held: set[str] | None = None) -> str:
    """sha256 over every parameter and persistent buffer outside SVF layers and outside ``held``.

    ``held`` defaults to the names :func:`adapter_state_dict` saves; the rest is the base the artifact
    assumes. SVF layers are left out: their original weights are covered by :func:`base_fingerprint`.
    """
    layers = dict(svf_layers(model))
    if held is None:
        held = set(_plain_trained(model, layers))
    svf_modules = {id(layer) for layer in layers.values()}
    h = hashlib.sha256(f"{FORMAT}|frozen".encode())
    seen: set[int] = set()
    for mod_name, module in model.named_modules():
        if id(module) in svf_modules:
            continue
        prefix = f"{mod_name}." if mod_name else ""
        for n, t in [*module.named_parameters(recurse=False), *_persistent_buffers(module)]:
            if t is None or id(t) in seen or prefix + n in held:
                continue
            seen.add(id(t))
            h.update(f"|{prefix}{n}=".encode())
            tensor_digest(h, t)
    return h.hexdigest()


def _layer_meta(layer: SVFLayer) -> dict[str, Any]:
    return {
        "fingerprint": layer.fingerprint,
        "kind": layer.kind,
        "parametrization": layer.parametrization,
        "rank": layer.rank,
        "groups": layer.groups,
        **layer.selection_meta(),
    }


def _cpu(t: Tensor) -> Tensor:
    return t.detach().to("cpu").clone()


def adapter_state_dict(model: nn.Module) -> dict[str, Any]:
    """Every trained tensor of ``model`` (on CPU), SVF layers or not, with the base fingerprints.

    See the module docstring for the format; :func:`load_adapter_state_dict` restores it.
    """
    layers = dict(svf_layers(model))
    plain = _plain_trained(model, layers)
    return {
        "format": FORMAT,
        "version": FORMAT_VERSION,
        "base_fingerprint": base_fingerprint(model) if layers else "",
        "frozen_fingerprint": frozen_fingerprint(model, set(plain)),
        "layers": {name: _layer_meta(layer) for name, layer in layers.items()},
        "tensors": {k: _cpu(p) for k, p in _trainable(layers).items()},
        "modules": {k: _cpu(t) for k, t in plain.items()},
    }


def svf_state_dict(model: nn.Module) -> dict[str, Any]:
    """:func:`adapter_state_dict` of a model that holds SVF layers (raises :class:`NoSVFLayerError` otherwise).

    Besides the trainable SVF tensors it holds every other trainable tensor (e.g. BN affine under
    ``train_bn``), so restoring it reproduces the fine-tuned model.
    """
    require_svf_layers(model, "svf_state_dict")
    return adapter_state_dict(model)


def _check_header(state: Any) -> None:
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        got = state.get("format") if isinstance(state, dict) else type(state).__name__
        raise SVFStateError(
            f"not an SVF artifact: format={got!r}, expected {FORMAT!r} (from adapter_state_dict / svf_state_dict)"
        )
    if state.get("version") not in READABLE_VERSIONS:
        raise SVFStateError(
            f"SVF artifact version {state.get('version')!r} is not supported (this svfseg reads versions "
            f"{', '.join(map(str, READABLE_VERSIONS))})"
        )
    keys = ("base_fingerprint", "layers", "tensors")
    if state["version"] >= 2:
        keys += ("frozen_fingerprint", "modules")
    missing = [k for k in keys if k not in state]
    if missing:
        raise SVFStateError(f"SVF artifact lacks the key(s) {missing}")


def _check_layers(saved: dict[str, dict[str, Any]], layers: dict[str, SVFLayer]) -> None:
    missing = sorted(set(layers) - set(saved))
    unexpected = sorted(set(saved) - set(layers))
    if missing or unexpected:
        raise SVFStateError(
            "SVF artifact and model convert different layers: "
            f"missing from the artifact: [{preview(missing)}]; not SVF layers in the model: "
            f"[{preview(unexpected)}]; convert the model with the include/exclude used in training"
        )

    def meta(name: str, key: str) -> Any:
        # absent for layers that train every singular value (and in artifacts older than the option)
        older = {"directions": "all", "group_k": layers[name].group_rank, "residual_rank": 0}
        return saved[name].get(key, older.get(key))

    keys = ("kind", "parametrization", "rank", "groups", "directions", "group_k", "residual_rank")
    for key in keys:
        wrong = [n for n in sorted(layers) if meta(n, key) != getattr(layers[n], key)]
        if wrong:
            n = wrong[0]
            raise SVFStateError(
                f"SVF artifact '{key}' differs at {len(wrong)} layer(s), e.g. {n}: artifact "
                f"{meta(n, key)!r}, model {getattr(layers[n], key)!r}; convert the model with the "
                "options used in training (finetune.directions, k, residual_rank, parametrization)"
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


def _check_shapes(saved: dict[str, Tensor], targets: dict[str, Tensor]) -> None:
    for key, p in targets.items():
        if tuple(saved[key].shape) != tuple(p.shape):
            raise SVFStateError(
                f"SVF artifact tensor '{key}' has shape {tuple(saved[key].shape)}, model expects {tuple(p.shape)}"
            )


def _check_plain(model: nn.Module, state: dict[str, Any], targets: dict[str, Tensor]) -> None:
    saved: dict[str, Tensor] = state.get("modules", {})
    missing = sorted(set(targets) - set(saved))
    unexpected = sorted(set(saved) - set(targets))
    if missing or unexpected:
        homes = {n for n, _ in model.named_parameters()} | {n for n, _ in model.named_buffers()}
        frozen = [k for k in unexpected if k in homes]
        homeless = [k for k in unexpected if k not in homes]
        old = " (a version 1 artifact holds SVF tensors only)" if state["version"] == 1 else ""
        raise SVFStateError(
            "SVF artifact and model train different non-SVF tensors: trainable in the model but not in "
            f"the artifact{old}: [{preview(missing)}]; in the artifact but frozen in the model: "
            f"[{preview(frozen)}]; in the artifact but not in the model: [{preview(homeless)}]. "
            "Apply the fine-tune strategy used in training (the same tensors with requires_grad) before "
            "loading; best.ckpt is the complete record"
        )
    _check_shapes(saved, targets)


def load_adapter_state_dict(model: nn.Module, state: dict[str, Any]) -> None:
    """Copy an artifact from :func:`adapter_state_dict` into ``model`` after checking it belongs to it.

    ``model`` must be built from the same original weights with the same tensors trainable (the
    fine-tune strategy applied, SVF layers converted with the same options). Raises
    :class:`SVFStateError` for another format/version, other converted layers, other base weights
    (per-layer fingerprints, ``base_fingerprint``, ``frozen_fingerprint``), a trainable tensor of the
    model missing from the artifact, an artifact tensor with no trainable home in the model, or a wrong
    shape; nothing is written unless all checks pass. Version 1 artifacts (no plain tensors, no frozen
    fingerprint) are read too.
    """
    _check_header(state)
    layers = dict(svf_layers(model))
    _check_layers(state["layers"], layers)
    if layers and state["base_fingerprint"] != base_fingerprint(model):
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
            f"SVF artifact tensors do not match the model's trainable SVF tensors: missing [{preview(missing)}]; "
            f"unexpected [{preview(unexpected)}]; convert with the same train=... subspaces "
            "(requires_grad decides what is saved and expected)"
        )
    _check_shapes(tensors, targets)
    plain = _plain_trained(model, layers)
    _check_plain(model, state, plain)
    if state["version"] >= 2 and state["frozen_fingerprint"] != frozen_fingerprint(model, set(plain)):
        raise SVFStateError(
            "SVF artifact was trained on other base weights: the frozen tensors of the model (every "
            "parameter and buffer outside the artifact and the SVF layers) differ from those at save "
            "time (frozen_fingerprint); load the pretrained weights used in training"
        )
    modules: dict[str, Tensor] = state.get("modules", {})
    with torch.no_grad():
        for key, p in targets.items():
            p.copy_(tensors[key].to(device=p.device, dtype=p.dtype))
        for key, t in plain.items():
            t.copy_(modules[key].to(device=t.device, dtype=t.dtype))


def load_svf_state_dict(model: nn.Module, state: dict[str, Any]) -> None:
    """Same as :func:`load_adapter_state_dict` (the name predates artifacts without SVF layers)."""
    load_adapter_state_dict(model, state)
