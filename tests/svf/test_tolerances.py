"""Tolerances that hold under TF32 and bf16 matmuls, checked by emulation on CPU and for real on GPUs.

``FLOAT32_LAYER_RTOL[precision]`` bounds the relative error of one SVF or plain layer. On a CPU, TF32 and
bf16 operand rounding is emulated (round each operand's mantissa to 10 or 7 explicit bits, accumulate in
float64) to show the bound holds with room; on a CUDA device (``bash benchmarks/gpu_check.sh`` runs this
file) the same bound is asserted on the real kernels at each ``matmul_precision``.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from svfseg.precision import FLOAT32_LAYER_RTOL, apply_matmul_precision
from svfseg.svf import SVFConv2d

SHAPES = [(3, 32, 3), (64, 64, 3), (256, 256, 3), (1024, 256, 1), (512, 2048, 1)]  # (in, out, kernel)
DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
MANTISSA_BITS = {"high": 11, "medium": 8}  # significant bits: TF32 has 10 explicit, bf16 has 7


def _round_mantissa(t: Tensor, bits: int) -> Tensor:
    mantissa, exponent = torch.frexp(t.double())
    return torch.ldexp(torch.round(mantissa * 2**bits) / 2**bits, exponent)


def _relative(out: Tensor, exact: Tensor) -> float:
    return float((out.detach().double() - exact).abs().max() / exact.abs().max())


def _layer(c_in: int, c_out: int, k: int, seed: int) -> tuple[nn.Conv2d, Tensor]:
    g = torch.Generator().manual_seed(seed)
    conv = nn.Conv2d(c_in, c_out, k, padding=k // 2, bias=False)
    with torch.no_grad():
        conv.weight.copy_(torch.randn(conv.weight.shape, generator=g) / (c_in * k * k) ** 0.5)
    x = torch.randn(2, c_in, 12, 12, generator=g).relu()  # post-ReLU features, as in a backbone
    return conv, x


@pytest.mark.parametrize("precision", ["high", "medium"])
def test_layer_tolerance_covers_emulated_operand_rounding(precision: str) -> None:
    """Both SVF paths under rounded operands stay at a quarter of the bound or less (measured: a ninth)."""
    bits, worst = MANTISSA_BITS[precision], 0.0
    for seed in range(3):
        for c_in, c_out, k in SHAPES:
            conv, x = _layer(c_in, c_out, k, seed)
            exact = F.conv2d(x.double(), conv.weight.double(), padding=k // 2)
            u, s, vh = torch.linalg.svd(conv.weight.double().reshape(c_out, -1), full_matrices=False)
            u, s, vh = u.float(), s.float(), vh.float()
            r = lambda t: _round_mantissa(t, bits)
            # evaluation: merged weight U diag(s) V^T (a matmul), then one conv
            merged = (r(u * s) @ r(vh)).float().reshape(conv.weight.shape)
            worst = max(worst, _relative(F.conv2d(r(x), r(merged), padding=k // 2), exact))
            # training: V-conv, scale by s, 1x1 U-conv
            mid = F.conv2d(r(x), r(vh.reshape(-1, c_in, k, k)), padding=k // 2).float() * s[:, None, None]
            worst = max(worst, _relative(F.conv2d(r(mid), r(u[:, :, None, None])), exact))
    assert worst < FLOAT32_LAYER_RTOL[precision] / 4, worst


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("precision", ["highest", "high"])
def test_svf_conv_matches_the_conv_within_the_bound_on_each_device(device: str, precision: str) -> None:
    before = apply_matmul_precision(precision)
    try:
        for c_in, c_out, k in SHAPES:
            conv, x = _layer(c_in, c_out, k, seed=0)
            exact = F.conv2d(x.double(), conv.weight.double(), padding=k // 2)
            svf = SVFConv2d.from_conv(conv).to(device)
            x = x.to(device)
            svf.train()
            train_out = svf(x)
            svf.eval()
            with torch.no_grad():
                eval_out = svf(x)
            plain = conv.to(device)(x)
            for out in (train_out, eval_out, plain):
                assert _relative(out.detach().cpu(), exact) < FLOAT32_LAYER_RTOL[precision], (c_in, c_out, k)
    finally:
        torch.set_float32_matmul_precision(before[0])
        torch.backends.cudnn.allow_tf32 = before[1]
