"""Run the real command lines (train.py, eval.py, python -m ...) as subprocesses on the tiny profile."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]

# Every variable a launcher (SLURM, torchrun, LSF, MPI, a manual multi-machine start) sets that Lightning's
# environment detection reads: a test deletes them to run as a plain command line does.
LAUNCH_VARIABLES = (
    "SLURM_NTASKS",
    "SLURM_NTASKS_PER_NODE",
    "SLURM_NNODES",
    "SLURM_JOB_NAME",
    "SLURM_JOB_ID",
    "TORCHELASTIC_RUN_ID",
    "WORLD_SIZE",
    "RANK",
    "LOCAL_RANK",
    "GROUP_RANK",
    "NODE_RANK",
    "MASTER_ADDR",
    "MASTER_PORT",
    "LSB_JOBID",
    "LSB_DJOB_RANKFILE",
    "LSB_HOSTS",
    "LSB_MCPU_HOSTS",
    "JSM_NAMESPACE_LOCAL_RANK",
    "JSM_NAMESPACE_SIZE",
    "OMPI_COMM_WORLD_SIZE",
    "PMI_SIZE",
)


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
