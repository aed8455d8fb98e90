"""Fused factorised conv for training with frozen U and V: y = conv1x1(conv(x, V^T), U diag(s)) + b.

Why a custom autograd Function: the composed form conv_V -> (* s) -> conv_U keeps two activations of
R channels per layer for backward (V^T x for dL/ds and the scaled copy as conv_U's input, which is only
needed for U's weight gradient). With U and V frozen only V^T x is needed: scaling U's columns by s
(a tiny weight op) instead of the activation never materialises the scaled copy, and backward reuses one
grouped 1x1 GEMM t = U^T dL/dy for both dL/ds = sum(t * V^T x) and dL/d(V^T x) = s * t. Same math as
the SVF repo's three ops, about half their extra activation memory.

Under autocast (``trainer.precision=bf16-mixed``) the layer passes x, V and U in the autocast dtype:
U diag(s) is formed in float32 and cast once, and dL/ds is accumulated in float32, so s and its gradient
stay float32 as for the composed graph. Single differentiation only (``once_differentiable``); layers
whose U or V train and ``execution="three_op"`` use the composed autograd graph instead.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.autograd.function import once_differentiable
from torch.nn.grad import conv2d_input


def _scaled_u(u: Tensor, s: Tensor, groups: int) -> Tensor:
    """U diag(s) per group as a (C_out, R_g, 1, 1) grouped 1x1 conv weight."""
    c_out, r_g = u.shape[0], u.shape[1]
    return (u.reshape(groups, c_out // groups, r_g) * s.reshape(groups, 1, r_g)).reshape(u.shape)


class FactorisedConv2d(torch.autograd.Function):
    """Inputs: x (already padded for non-zeros modes), V^T and U as conv weights, s, bias, conv options."""

    @staticmethod
    def forward(
        ctx: Any,
        x: Tensor,
        v: Tensor,
        s: Tensor,
        u: Tensor,
        bias: Tensor | None,
        stride: tuple[int, int],
        padding: tuple[int, int],
        dilation: tuple[int, int],
        groups: int,
    ) -> Tensor:
        h = F.conv2d(x, v, None, stride, padding, dilation, groups)
        scaled = _scaled_u(u.to(s.dtype), s, groups).to(h.dtype)  # U diag(s) in s's precision, cast once
        y = F.conv2d(h, scaled, bias, 1, 0, 1, groups)
        ctx.save_for_backward(h, v, s, u)
        ctx.x_shape = x.shape
        ctx.options = (stride, padding, dilation, groups)
        ctx.has_bias = bias is not None
        return y

    @staticmethod
    @once_differentiable
    def backward(ctx: Any, grad_y: Tensor) -> tuple[Tensor | None, ...]:
        h, v, s, u = ctx.saved_tensors
        stride, padding, dilation, groups = ctx.options
        need_x, need_s, need_b = ctx.needs_input_grad[0], ctx.needs_input_grad[2], ctx.needs_input_grad[4]
        grad_x = grad_s = grad_b = None
        if need_x or need_s:
            t = conv2d_input(h.shape, u, grad_y, 1, 0, 1, groups)  # U^T dL/dy, per group
            if need_x:
                grad_h = t * s.reshape(-1, 1, 1).to(t.dtype)
                grad_x = conv2d_input(ctx.x_shape, v, grad_h, stride, padding, dilation, groups)
            if need_s:  # accumulated in s's precision (float32 also under bf16 autocast)
                grad_s = t.to(s.dtype).mul_(h.to(s.dtype)).sum(dim=(0, 2, 3))
        if need_b and ctx.has_bias:
            grad_b = grad_y.sum(dim=(0, 2, 3))
        return grad_x, None, grad_s, None, grad_b, None, None, None, None
