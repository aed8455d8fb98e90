"""Credential redaction: the overrides Hydra records, and the module's light imports."""

from __future__ import annotations

import subprocess
import sys

import pytest

from svfseg.redaction import REDACTED, redact_override


@pytest.mark.parametrize(
    ("override", "expected"),
    [
        ("+logger.wandb.api_key=abc123", f"+logger.wandb.api_key={REDACTED}"),
        ("logger.wandb.wandb_token=t", f"logger.wandb.wandb_token={REDACTED}"),
        ("~db.password=x", f"~db.password={REDACTED}"),
        ("model.num_tokens=7", "model.num_tokens=7"),  # a count, not a credential
        ("optim.lr=0.015", "optim.lr=0.015"),
        ("finetune=svf", "finetune=svf"),
        ("+logger.wandb.api_key", "+logger.wandb.api_key"),  # no value to hide
    ],
)
def test_redact_override_hides_only_credential_values(override: str, expected: str) -> None:
    assert redact_override(override) == expected


def test_the_run_record_path_loads_neither_torch_nor_wandb() -> None:
    # train.py writes the run folder's record before the model stack is imported
    code = (
        "import sys, svfseg.redaction, svfseg.run_dir; "
        "print(sorted(m for m in ('torch', 'wandb', 'pytorch_lightning') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
