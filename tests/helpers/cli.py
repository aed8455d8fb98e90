"""Run the real command lines (train.py, eval.py, python -m ...) as subprocesses on the tiny profile."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def run_cli(
    args: list[str],
    cwd: Path,
    *,
    timeout: int = 150,
    ok: bool = True,
    env: dict[str, str] | None = None,
) -> subprocess.CompletedProcess:
    """Run ``python ARGS`` in ``cwd``; ``env`` adds variables (a scheduler's, say) to the test environment."""
    env = {
        **os.environ,
        **(env or {}),
        "OMP_NUM_THREADS": "1",
        "WANDB_MODE": "offline",
        "COLUMNS": "120",
        "TERM": "dumb",
        "PYTHONIOENCODING": "utf-8",
    }
    env.pop("HYDRA_FULL_ERROR", None)
    proc = subprocess.run(
        [sys.executable, *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout
    )
    if ok and proc.returncode != 0:
        raise AssertionError(
            f"{' '.join(args)} exited with {proc.returncode}\n--- stdout\n{proc.stdout[-3000:]}\n"
            f"--- stderr\n{proc.stderr[-5000:]}"
        )
    return proc


def tiny_overrides(synthetic_pascal) -> list[str]:
    root, min_pixels = synthetic_pascal
    return [
        "dataset=synthetic",
        "debug=tiny",
        f"dataset.root={root}",
        f"dataset.min_pixels={min_pixels}",
        "~callbacks.progress_bar",
        "trainer.enable_model_summary=false",
        "trainer.max_epochs=1",
    ]
