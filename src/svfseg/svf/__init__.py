"""Singular Value Fine-tuning (SVF, Sun et al., NeurIPS 2022) for any PyTorch model.

Every selected Conv2d / Linear becomes W = U diag(s) V^T (full rank, one SVD per group, float64 on CPU);
by default only the singular values ``s`` train. Usage on any model::

    model = torchvision.models.resnet50(weights="DEFAULT")
    apply_svf(model, include=["layer2.*", "layer3.*", "layer4.*"])   # in place; returns converted names
    mark_only_svf_trainable(model); print(svf_summary(model))         # 12,544 trainable singular values
    train(model, [p for p in model.parameters() if p.requires_grad])  # your loop
    torch.save(svf_state_dict(model), "svf.pt"); merge_svf(model)     # few-KB artifact; plain convs back

``load_svf_state_dict(model, torch.load("svf.pt", weights_only=True))`` restores the artifact on a model
converted from the same pretrained weights, with the same tensors trainable, and refuses any other
(:class:`SVFStateError`). The artifact holds every tensor with ``requires_grad`` (e.g. BN affine trained
next to the singular values); ``adapter_state_dict`` writes one for a model without SVF layers too.
"""

from svfseg.svf.convert import (
    apply_svf,
    disable_svf,
    mark_only_svf_trainable,
    merge_svf,
    require_svf_layers,
    set_svf_execution,
    svf_layers,
)
from svfseg.svf.errors import NoSVFLayerError, SVFSelectionError, SVFStateError
from svfseg.svf.layers import SVFConv2d, SVFLayer, SVFLinear
from svfseg.svf.options import EXECUTIONS, PARAMETRIZATIONS, SUBSPACES, SVD_DTYPES, SVFOptions
from svfseg.svf.state import (
    adapter_state_dict,
    adapter_tensors,
    base_fingerprint,
    frozen_fingerprint,
    load_adapter_state_dict,
    load_svf_state_dict,
    svf_state_dict,
)
from svfseg.svf.summary import SVFStageRow, SVFSummary, svf_summary

__all__ = [
    "EXECUTIONS",
    "PARAMETRIZATIONS",
    "SUBSPACES",
    "SVD_DTYPES",
    "NoSVFLayerError",
    "SVFConv2d",
    "SVFLayer",
    "SVFLinear",
    "SVFOptions",
    "SVFSelectionError",
    "SVFStageRow",
    "SVFStateError",
    "SVFSummary",
    "adapter_state_dict",
    "adapter_tensors",
    "apply_svf",
    "base_fingerprint",
    "disable_svf",
    "frozen_fingerprint",
    "load_adapter_state_dict",
    "load_svf_state_dict",
    "mark_only_svf_trainable",
    "merge_svf",
    "require_svf_layers",
    "set_svf_execution",
    "svf_layers",
    "svf_state_dict",
    "svf_summary",
]
