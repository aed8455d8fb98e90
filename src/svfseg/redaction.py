"""Credentials never reach a saved config, a log or a run record: which keys hold one, and the redaction.

A key typed into a config (``+logger.wandb.api_key=...``) would otherwise be written to ``.hydra/``,
``svfseg-run.json``, every checkpoint and the W&B run config. This module imports neither torch nor
wandb: the run directory's record is written before either is loaded.
"""

from __future__ import annotations

import re
from argparse import Namespace
from typing import Any

from omegaconf import OmegaConf

# Logger options that must never be passed on (exact names).
SECRET_KEYS = ("api_key", "key", "token", "password")
# Config keys whose values are replaced by REDACTED wherever they occur: names containing one of the
# SECRET_PATTERNS, or with one of the SECRET_WORDS as a word (``wandb_token`` yes, ``num_tokens`` no).
SECRET_PATTERNS = ("api_key", "apikey", "access_key")
SECRET_WORDS = frozenset({"token", "password", "passwd", "pwd", "secret", "credentials"})
REDACTED = "<redacted>"


def is_secret_key(name: Any) -> bool:
    """True for config keys that hold credentials (``api_key``, ``wandb_token``, ``db_password``, ``key``)."""
    lowered = str(name).lower()
    words = set(re.split(r"[^a-z0-9]+", lowered))
    return lowered == "key" or any(p in lowered for p in SECRET_PATTERNS) or bool(words & SECRET_WORDS)


def redact_secrets(value: Any) -> Any:
    """A copy of ``value`` (dicts / lists at any depth) with every credential-like key's value replaced."""
    if OmegaConf.is_config(value):
        value = OmegaConf.to_container(value, resolve=False)
    if isinstance(value, Namespace):
        value = vars(value)
    if isinstance(value, dict):
        return {
            k: (REDACTED if is_secret_key(k) and v is not None else redact_secrets(v))
            for k, v in value.items()
        }
    if isinstance(value, (list, tuple)):
        return type(value)(redact_secrets(v) for v in value)
    return value


def scrub_secrets(options: dict[str, Any]) -> dict[str, Any]:
    """Drop credential-like keys so a key typed into a config never reaches a saved config or a log."""
    return {k: v for k, v in options.items() if k.lower() not in SECRET_KEYS and not is_secret_key(k)}


def redact_override(override: str) -> str:
    """``+logger.wandb.api_key=abc`` -> ``+logger.wandb.api_key=<redacted>``; others unchanged."""
    key, sep, _ = override.partition("=")
    if sep and is_secret_key(key.lstrip("+~").rsplit(".", 1)[-1]):
        return f"{key}={REDACTED}"
    return override
