"""The old commands of the dataset tools (``python -m svfseg.data.prepare`` / ``.synthetic``) say where they went."""

from __future__ import annotations

import subprocess
import sys

import pytest


@pytest.mark.parametrize("tool", ["prepare", "synthetic"])
def test_the_old_command_names_the_new_one_with_the_same_arguments_and_exits_2(tool: str) -> None:
    args = ["ccp", "--out", "data/my ccp"]
    proc = subprocess.run(
        [sys.executable, "-m", f"svfseg.data.{tool}", *args], capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 2
    assert proc.stdout == ""
    assert proc.stderr.strip() == (
        f"python -m svfseg.data.{tool} has moved: run python -m svfseg.dataprep.{tool} ccp --out 'data/my ccp'"
    )


def test_the_stubs_load_none_of_the_tools() -> None:
    code = (
        "import sys, runpy; sys.argv = ['x']\n"
        "try:\n    runpy.run_module('svfseg.data.prepare', run_name='__main__')\n"
        "except SystemExit as e:\n    assert e.code == 2\n"
        "print(sorted(m for m in sys.modules if m.startswith(('svfseg.dataprep', 'scipy', 'torch'))))"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "[]"
