"""The console scripts of pyproject.toml: every target is a callable ``main``, every tool also runs as
``python -m <module>``, and the installed scripts are the ones pyproject.toml declares."""

from __future__ import annotations

import importlib
import importlib.metadata
import importlib.util
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

tomllib = pytest.importorskip("tomllib")  # Python 3.11+

ROOT = Path(__file__).resolve().parents[2]
SCRIPTS: dict[str, str] = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]


def module_of_python_m(target: str) -> str:
    """``pkg.__main__:main`` runs as ``python -m pkg``; ``pkg.mod:main`` as ``python -m pkg.mod``."""
    module = target.split(":")[0]
    return module.removesuffix(".__main__")


def test_every_tool_has_a_script() -> None:
    assert set(SCRIPTS) >= {
        "svfseg-weights",
        "svfseg-prepare",
        "svfseg-lists",
        "svfseg-tables",
        "svfseg-export",
        "svfseg-demo",
        "svfseg-pretrain",
        "svfseg-budget",
    }


@pytest.mark.parametrize("name", sorted(SCRIPTS))
def test_the_script_target_is_a_callable_main_and_its_python_m_module_exists(name: str) -> None:
    module_name, _, attr = SCRIPTS[name].partition(":")
    assert attr == "main", f"{name}: the target is {SCRIPTS[name]}, not a module's main"
    assert callable(getattr(importlib.import_module(module_name), attr))
    python_m = module_of_python_m(SCRIPTS[name])
    spec = importlib.util.find_spec(python_m)
    assert spec is not None, f"python -m {python_m} has no module"
    if spec.submodule_search_locations is not None:  # a package: python -m runs its __main__
        assert importlib.util.find_spec(f"{python_m}.__main__") is not None
    else:  # a module: it calls its main when run as a script
        assert 'if __name__ == "__main__":' in Path(str(spec.origin)).read_text()


def test_the_installed_scripts_are_pyprojects() -> None:
    installed = {
        ep.name: ep.value
        for ep in importlib.metadata.distribution("svfseg").entry_points
        if ep.group == "console_scripts"
    }
    assert installed == SCRIPTS, "reinstall the package so its scripts match pyproject.toml: pip install -e ."


def test_an_installed_script_runs() -> None:
    script = shutil.which("svfseg-export", path=str(Path(sys.executable).parent))
    if script is None:
        pytest.skip("svfseg-export is not installed next to this interpreter (pip install -e .)")
    proc = subprocess.run([script, "--help"], capture_output=True, text=True, timeout=120, check=True)
    assert "--out" in proc.stdout and "--force" in proc.stdout
