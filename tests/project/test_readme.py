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


def _layout_block() -> str:
    text = README.read_text()
    start = text.index("## Project layout")
    return text[start : text.index("\n```\n", text.index("```", start) + 3)]


def test_project_layout_names_every_package_module_doc_and_config_group() -> None:
    """README's layout section matches the tree: a new folder or module is named there, a removed one is gone."""
    root = README.parent
    block = _layout_block()
    named = set(re.findall(r"src/svfseg/[\w/]+\.py|src/svfseg/[\w/]+/", block))
    package = root / "src" / "svfseg"
    present = {f"src/svfseg/{p.name}/" for p in package.iterdir() if p.is_dir() and p.name != "__pycache__"}
    present |= {f"src/svfseg/{p.name}" for p in package.glob("*.py") if p.name != "__init__.py"}
    assert present - named == set(), "in the tree, not in README's layout"
    assert {n for n in named if not (root / n).exists()} == set(), "in README's layout, not in the tree"
    docs = {p.relative_to(root / "docs").as_posix() for p in (root / "docs").rglob("*.md")}
    assert {d for d in docs if d not in block} == set(), "docs pages missing from README's layout"
    groups = {p.name for p in (root / "conf").iterdir() if p.is_dir() and p.name not in ("local", "recipe")}
    assert {g for g in groups if not re.search(rf"\b{g}\b", block)} == set(), "config groups missing"
