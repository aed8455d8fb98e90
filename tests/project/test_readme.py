"""The README's "SVF on any model" snippet runs as printed and does what its comments say."""

from __future__ import annotations

import contextlib
import io
import os
import re
from pathlib import Path

import torch
from torch import nn

README = Path(__file__).resolve().parents[2] / "README.md"


def _svf_snippet() -> str:
    text = README.read_text()
    section = text[text.index("## SVF on any model") :]
    match = re.search(r"```python\n(.*?)```", section, re.S)
    assert match, "README has no python block under 'SVF on any model'"
    return match.group(1)


def test_readme_svf_snippet_runs_and_matches_its_comments(tmp_path: Path) -> None:
    code = _svf_snippet()
    assert "12,544 trainable singular values" in code and "~64 KB" in code
    out = io.StringIO()
    namespace: dict = {}
    cwd = os.getcwd()
    os.chdir(tmp_path)
    try:
        with contextlib.redirect_stdout(out):
            exec(compile(code, str(README), "exec"), namespace)  # the documented code, verbatim
    finally:
        os.chdir(cwd)
    printed = out.getvalue()
    assert "12,544" in printed  # the summary's trainable singular values of layer2-4
    size = (tmp_path / "svf.pt").stat().st_size
    assert 40_000 < size < 90_000, size  # "~64 KB"
    model = namespace["model"]
    assert all(type(m) in (nn.Conv2d, nn.Linear) or not hasattr(m, "s0") for m in model.modules())
    assert sum(isinstance(m, nn.Conv2d) for m in model.modules()) == 53  # merged back to plain convs
    assert torch.load(tmp_path / "svf.pt", weights_only=True)  # loads safely
