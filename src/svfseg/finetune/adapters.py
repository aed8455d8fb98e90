"""LoRA / DoRA adapters from ``peft`` inside a backbone: inject, list, merge back into plain layers.

peft's ``inject_adapter_in_model`` replaces each targeted ``nn.Conv2d`` / ``nn.Linear`` by a peft LoRA
layer that keeps the original layer as ``base_layer`` (state dict keys ``<name>.base_layer.weight``,
``<name>.lora_A.default.weight``, ``<name>.lora_B.default.weight`` and, for DoRA,
``<name>.lora_magnitude_vector.default.weight``); the rest of the model stays a plain ``nn.Module``.

peft is imported only when adapters are injected: importing it loads ``transformers`` (seconds), and
runs of the other strategies never need it. A model holds LoRA layers only if peft was imported, so
:func:`lora_layers` reads peft's layer class from ``sys.modules`` instead of importing it.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator, Sequence

from torch import nn

ADAPTER = "default"  # peft's adapter name; one adapter per layer


def _lora_layer_type() -> type | None:
    module = sys.modules.get("peft.tuners.lora")
    return None if module is None else module.LoraLayer


def lora_layers(module: nn.Module) -> Iterator[tuple[str, nn.Module]]:
    """Every peft LoRA / DoRA layer under ``module`` with its qualified name, in module order."""
    layer_type = _lora_layer_type()
    if layer_type is None:
        return
    for name, m in module.named_modules():
        if isinstance(m, layer_type):
            yield name, m


def adapter_parameters(layer: nn.Module) -> list[tuple[str, nn.Parameter]]:
    """The adapter's own parameters of one LoRA layer (lora_A, lora_B, DoRA magnitude), not the base layer's."""
    return [(n, p) for n, p in layer.named_parameters() if not n.startswith("base_layer.")]


def _match_base_geometry(name: str, layer: nn.Module) -> None:
    """Give ``lora_A`` the base conv's dilation, which peft 0.21 drops (huggingface/peft issue 3697).

    Without it a dilated conv (layer3/layer4 of the PSPNet ResNets) and its adapter branch give maps of
    different sizes, and the merged kernel B A would not be the function the adapter computed.
    """
    base = layer.get_base_layer()
    if not isinstance(base, nn.Conv2d):
        return
    if base.padding_mode != "zeros":
        raise ValueError(
            f"LoRA on {name}: padding_mode={base.padding_mode!r} is not supported (peft pads the adapter "
            "branch with zeros); leave this conv out of the target selection"
        )
    for conv in layer.lora_A.values():
        conv.dilation = tuple(base.dilation)


def inject_lora(
    module: nn.Module,
    names: Sequence[str],
    *,
    rank: int,
    alpha: float,
    dropout: float,
    use_dora: bool,
) -> list[str]:
    """Wrap exactly the layers ``names`` (qualified names under ``module``) with peft LoRA (or DoRA).

    Adapters start exact (``lora_B`` = 0, DoRA magnitude = the weight's column norms), so the model
    computes the original function until it trains. Returns the wrapped names; anything else that peft
    wrapped, or a name it left out, is an error.
    """
    from peft import LoraConfig, inject_adapter_in_model

    existing = [n for n, _ in lora_layers(module)]
    if existing:
        raise ValueError(
            f"the backbone already holds {len(existing)} LoRA layers (e.g. {existing[0]}); LoRA/DoRA is "
            "injected once: apply the strategy to a freshly built model"
        )
    config = LoraConfig(
        r=rank,
        lora_alpha=alpha,
        lora_dropout=dropout,
        target_modules=list(names),
        use_dora=use_dora,
        bias="none",
        init_lora_weights=True,
    )
    inject_adapter_in_model(config, module, adapter_name=ADAPTER)
    wrapped = dict(lora_layers(module))
    if sorted(wrapped) != sorted(names):
        missing = sorted(set(names) - set(wrapped))
        extra = sorted(set(wrapped) - set(names))
        raise RuntimeError(f"peft wrapped other layers than asked: missing {missing[:5]}, extra {extra[:5]}")
    for name, layer in wrapped.items():
        _match_base_geometry(name, layer)
    return list(names)


def merge_lora(module: nn.Module) -> list[str]:
    """Fold every LoRA / DoRA layer into its base layer and put the plain layer back; in place.

    The result holds plain ``nn.Conv2d`` / ``nn.Linear`` modules (export, faster inference). The merged
    weight requires grad iff an adapter parameter did. Returns the merged names.
    """
    layers = list(lora_layers(module))
    for name, layer in layers:
        trained = any(p.requires_grad for _, p in adapter_parameters(layer))
        layer.merge(safe_merge=True)
        base = layer.get_base_layer()
        base.weight.requires_grad_(trained)
        base.train(layer.training)
        parent_name, _, attr = name.rpartition(".")
        setattr(module.get_submodule(parent_name) if parent_name else module, attr, base)
    return [name for name, _ in layers]
