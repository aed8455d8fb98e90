"""Weights & Biases logger that never blocks a run.

Without an API key (``WANDB_API_KEY`` unset and no ``~/.netrc`` entry) or with ``WANDB_MODE=offline``
the run is logged offline under the run directory; ``wandb sync <dir>`` uploads it later. The key is
read by wandb itself from the environment and is never written into configs or logs by svfseg.
"""

from __future__ import annotations

import logging
import netrc
import os
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf
from pytorch_lightning.loggers import WandbLogger

log = logging.getLogger(__name__)

SECRET_KEYS = ("api_key", "key", "token", "password")


def has_wandb_credentials() -> bool:
    """True when wandb could authenticate: an env key or a netrc entry for the W&B host."""
    if os.environ.get("WANDB_API_KEY"):
        return True
    try:
        rc = netrc.netrc()
    except (FileNotFoundError, netrc.NetrcParseError, OSError):
        return False
    host = os.environ.get("WANDB_BASE_URL", "https://api.wandb.ai").split("://")[-1].split("/")[0]
    return rc.authenticators(host) is not None


def scrub_secrets(options: dict[str, Any]) -> dict[str, Any]:
    """Drop credential-like keys so a key typed into a config never reaches a saved config or a log."""
    return {k: v for k, v in options.items() if k.lower() not in SECRET_KEYS}


def build_wandb_logger(node: DictConfig | dict[str, Any]) -> WandbLogger:
    """Instantiate the W&B logger, switching to offline mode when it could not reach an account."""
    options: dict[str, Any] = OmegaConf.to_container(node, resolve=True) if OmegaConf.is_config(node) else dict(node)  # type: ignore[assignment]
    options.pop("_target_", None)
    dropped = set(options) - set(scrub_secrets(options))
    if dropped:
        log.warning("ignored %s in the wandb logger config: set WANDB_API_KEY in the environment instead", dropped)
    options = scrub_secrets(options)
    offline = bool(options.pop("offline", False)) or os.environ.get("WANDB_MODE") in ("offline", "disabled")
    if not offline and not has_wandb_credentials():
        log.warning(
            "no W&B credentials (WANDB_API_KEY or netrc): logging offline to %s; upload later with `wandb sync`",
            options.get("save_dir", "."),
        )
        offline = True
    if offline:
        os.environ["WANDB_MODE"] = "offline"
    Path(str(options.get("save_dir", "."))).mkdir(parents=True, exist_ok=True)
    return WandbLogger(offline=offline, **options)
