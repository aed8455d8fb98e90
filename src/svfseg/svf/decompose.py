"""Weight folding, SVD and fingerprints: the numerical side of a conversion, free of nn.Module code.

The SVD always runs on CPU (LAPACK ``gesdd``): GPU solvers are slow for many small matrices and
less precise for ill-conditioned ones, and a conversion happens once. Signs are normalised so that every left singular vector has a positive largest-magnitude
entry; the factors are then the same on any LAPACK build up to rounding, which keeps an artifact
that trains ``u`` or ``v`` portable between machines.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import torch
from torch import Tensor


@dataclass(frozen=True)
class Factors:
    """Grouped SVD factors in the storage layout of the SVF layers.

    ``u``: (C_out, R_g); rows of group j are ``j*C_out/G .. (j+1)*C_out/G`` (a grouped 1x1 conv weight).
    ``s``: (G*R_g,); ``v``: (G*R_g, C_in/G * prod(kernel)) (a grouped conv weight with the original kernel).
    """

    u: Tensor
    s: Tensor
    v: Tensor


def group_rank(out_features: int, fan_in: int) -> int:
    """Full rank of one group's folded weight matrix (no rounding, unlike the SVF repo's multiple of 4)."""
    return min(out_features, fan_in)


def decompose(weight: Tensor, groups: int, svd_dtype: torch.dtype) -> Factors:
    """SVD of ``weight`` (C_out, C_in/G, *kernel) folded to G matrices (C_out/G, C_in/G*prod(kernel)).

    The SVD runs on CPU in ``svd_dtype``; the factors come back in the weight's dtype and device.
    """
    if not svd_dtype.is_floating_point or svd_dtype.is_complex:
        raise ValueError(
            f"svd_dtype={svd_dtype} is not a real floating dtype; use torch.float64 or torch.float32"
        )
    c_out = weight.shape[0]
    if c_out % groups:
        raise ValueError(f"weight with {c_out} output channels cannot be split into groups={groups}")
    mats = weight.detach().to(device="cpu", dtype=svd_dtype).reshape(groups, c_out // groups, -1)
    u, s, vh = torch.linalg.svd(mats, full_matrices=False)  # (G, m, R), (G, R), (G, R, n)
    # Sign convention: the largest-|.| entry of each left singular vector is positive.
    idx = u.abs().argmax(dim=1, keepdim=True)  # (G, 1, R)
    sign = torch.gather(u, 1, idx).sign()
    sign = torch.where(sign == 0, torch.ones_like(sign), sign)
    u = u * sign
    vh = vh * sign.transpose(1, 2)
    rank = s.shape[1]
    out = {"device": weight.device, "dtype": weight.dtype}
    return Factors(
        u=u.reshape(c_out, rank).to(**out).contiguous(),
        s=s.reshape(groups * rank).to(**out).contiguous(),
        v=vh.reshape(groups * rank, -1).to(**out).contiguous(),
    )


def placeholder_factors(weight: Tensor, groups: int) -> Factors:
    """Zero factors with the shapes ``decompose`` would return: a structure for a state dict to fill."""
    c_out = weight.shape[0]
    if c_out % groups:
        raise ValueError(f"weight with {c_out} output channels cannot be split into groups={groups}")
    fan_in = weight[0].numel()
    rank = group_rank(c_out // groups, fan_in)
    new = {"device": weight.device, "dtype": weight.dtype}
    return Factors(
        u=torch.zeros(c_out, rank, **new),
        s=torch.zeros(groups * rank, **new),
        v=torch.zeros(groups * rank, fan_in, **new),
    )


def tensor_digest(h: hashlib._Hash, tensor: Tensor) -> None:
    """Feed shape, dtype and the exact bytes of ``tensor`` into ``h`` (any dtype, any device)."""
    t = tensor.detach().to("cpu").contiguous()
    h.update(f"{tuple(t.shape)}|{t.dtype}|".encode())
    h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())


def weight_fingerprint(kind: str, weight: Tensor, bias: Tensor | None) -> str:
    """sha256 of the original layer (kind, weight, bias); identifies the base an SVF artifact belongs to."""
    h = hashlib.sha256(f"svfseg-layer|{kind}|".encode())
    tensor_digest(h, weight)
    h.update(b"|bias|")
    if bias is not None:
        tensor_digest(h, bias)
    return h.hexdigest()
