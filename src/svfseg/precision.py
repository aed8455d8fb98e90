"""The float32 matmul / conv precision of a run, set explicitly instead of inherited from PyTorch defaults.

PyTorch's defaults differ by op: matmuls run in full fp32 (``highest``) while cuDNN convolutions may use
TF32 on Ampere / Hopper GPUs. The paper's setting is fp32, so ``highest`` (the default here) turns TF32
off for both; ``high`` turns it on for both (faster, relative error about 1e-3, so bit-level and
"identical on N processes" comparisons no longer hold).
"""

from __future__ import annotations

import torch

MATMUL_PRECISIONS = ("highest", "high", "medium")

# Relative error, max |out - exact| / max |exact|, that one float32 conv or linear layer (SVF or plain)
# stays under at each precision: fp32 (highest), TF32 operands with a 10-bit mantissa (high), bf16
# operands (medium). Measured under emulated operand rounding at 6e-4 (TF32) and 5e-3 (bf16) for
# ResNet-sized layers; tests/svf/test_tolerances.py checks these bounds on every available device.
FLOAT32_LAYER_RTOL = {"highest": 1e-5, "high": 5e-3, "medium": 5e-2}


def check_matmul_precision(value: object) -> str:
    """``value`` if it is a float32 matmul precision; the error names the key and the choices."""
    if value not in MATMUL_PRECISIONS:
        raise ValueError(f"matmul_precision={value!r} is invalid: choose one of {list(MATMUL_PRECISIONS)}")
    return str(value)


def apply_matmul_precision(value: str) -> tuple[str, bool]:
    """Set matmul and cuDNN precision for this process; returns the previous (precision, cudnn TF32)."""
    check_matmul_precision(value)
    previous = (torch.get_float32_matmul_precision(), bool(torch.backends.cudnn.allow_tf32))
    torch.set_float32_matmul_precision(value)
    torch.backends.cudnn.allow_tf32 = value != "highest"
    return previous
