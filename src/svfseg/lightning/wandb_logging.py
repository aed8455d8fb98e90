"""Weights & Biases logger that never blocks a run and never records a credential.

``logger.wandb.mode`` picks how the run is logged:

* ``auto`` (default): online only when wandb could authenticate (``WANDB_API_KEY`` or a netrc login)
  *and* the W&B API answers a quick HTTP probe (``probe_timeout``); otherwise offline under the run
  directory, to be uploaded later with ``wandb sync <run_dir>/wandb/offline-run-*``. If the online start
  still fails (e.g. a proxy that accepts connections but not W&B), the run falls back to offline too.
  ``WANDB_MODE=offline|disabled`` in the environment is honoured.
* ``online``: always online; refused up front without credentials (wandb would otherwise prompt on stdin).
* ``offline`` / ``disabled``: as wandb defines them. ``offline: true`` is the older spelling of ``offline``.

A run keeps one W&B run across resumes: its first start draws a run id and writes it to
``<run dir>/wandb/svfseg-wandb-id``; a resume of that folder (``ckpt_path=last`` / ``auto``, a requeued
SLURM job) passes the same id, and Lightning's logger asks wandb to continue it (``resume="allow"``), so
the curves stay one run instead of one run per attempt. A new start in the folder draws a new id.

The key is read by wandb itself from the environment. svfseg drops credential-like keys from the logger
options and redacts them (at any depth) from everything it logs as a config.
"""

from __future__ import annotations

import logging
import netrc
import os
import secrets
import string
import threading
import urllib.error
import urllib.request
from argparse import Namespace
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from omegaconf import DictConfig, OmegaConf
from pytorch_lightning.loggers import WandbLogger
from pytorch_lightning.loggers.logger import rank_zero_experiment
from pytorch_lightning.utilities import rank_zero_only

from svfseg.files import atomic_write_text
from svfseg.redaction import redact_secrets, scrub_secrets
from svfseg.run_dir import is_global_rank_zero

log = logging.getLogger(__name__)

MODES = ("auto", "online", "offline", "disabled")
DEFAULT_HOST = "https://api.wandb.ai"  # when wandb does not say its own default
# Seconds: the reachability probe in auto mode, and wandb.init's own wait for its service.
PROBE_TIMEOUT_S = 2.0
DEFAULT_INIT_TIMEOUT_S = 60.0
RUN_ID_FILE = "svfseg-wandb-id"  # under <save_dir>/wandb: the run folder's W&B run id, kept for resumes


def wandb_base_url() -> str:
    """The W&B API URL wandb will use: ``WANDB_BASE_URL`` or wandb's own default."""
    try:
        from wandb.sdk.lib.urls import DEFAULT_BASE_URL as default
    except ImportError:  # older wandb
        default = DEFAULT_HOST
    return os.environ.get("WANDB_BASE_URL") or default


def wandb_host() -> str:
    """The W&B API host (with port, if any), without scheme or path."""
    return urlsplit(wandb_base_url()).netloc or wandb_base_url()


def _netrc_hosts() -> set[str]:
    """Hosts a ``wandb login`` may have written to netrc for this base URL (Forge URLs map to api.wandb.ai)."""
    url = wandb_base_url()
    hosts = {urlsplit(url).hostname or "", "api.wandb.ai" if url == DEFAULT_HOST else ""}
    try:
        from wandb.sdk.lib.urls import forge_upstream_url

        hosts.add(urlsplit(forge_upstream_url(url)).hostname or "")
    except ImportError:
        pass
    return {h for h in hosts if h}


def has_wandb_credentials() -> bool:
    """True when wandb could authenticate: an env key or a netrc entry for the W&B host."""
    if os.environ.get("WANDB_API_KEY"):
        return True
    try:
        rc = netrc.netrc(os.environ.get("NETRC") or None)
    except (FileNotFoundError, netrc.NetrcParseError, OSError):
        return False
    return any(rc.authenticators(host) is not None for host in _netrc_hosts())


def wandb_reachable(timeout: float = PROBE_TIMEOUT_S) -> bool:
    """True when the W&B API answers an HTTP(S) request within ``timeout`` seconds, DNS lookup included.

    Any HTTP answer below 500 counts (the probe is not authenticated); a DNS failure, refused connection,
    TLS failure, proxy error or timeout does not. The request runs in a daemon thread that is abandoned
    when the time is up, so a dead network never blocks the run.
    """
    url = wandb_base_url()
    result: list[bool] = []

    def probe() -> None:
        try:
            with urllib.request.urlopen(url, timeout=timeout):
                result.append(True)
        except urllib.error.HTTPError as err:
            result.append(err.code < 500)
        except (OSError, ValueError):
            result.append(False)

    thread = threading.Thread(target=probe, name="svfseg-wandb-probe", daemon=True)
    thread.start()
    thread.join(timeout)
    return bool(result and result[0])


def resolve_mode(mode: str, *, offline: bool = False, probe_timeout: float = PROBE_TIMEOUT_S) -> str:
    """The wandb ``mode`` to run with (online / offline / disabled), see the module docstring."""
    mode = str(mode).lower()
    if mode not in MODES:
        raise ValueError(f"logger.wandb.mode={mode!r} is not supported; choose one of {list(MODES)}")
    if offline or mode == "offline":
        return "offline"
    if mode == "disabled":
        return "disabled"
    if mode == "online":
        if not has_wandb_credentials():
            raise ValueError(
                "logger.wandb.mode=online but no W&B credentials were found: export WANDB_API_KEY (or run "
                "`wandb login`), or use logger.wandb.mode=auto to fall back to offline logging"
            )
        return "online"
    env = os.environ.get("WANDB_MODE", "").lower()
    if env in ("offline", "dryrun"):
        return "offline"
    if env == "disabled":
        return "disabled"
    if not has_wandb_credentials():
        log.warning(
            "no W&B credentials (WANDB_API_KEY or netrc): logging offline; upload later with `wandb sync`"
        )
        return "offline"
    if not wandb_reachable(probe_timeout):
        log.warning(
            "W&B host %s is not reachable within %.1f s: logging offline; upload later with `wandb sync`",
            wandb_host(),
            probe_timeout,
        )
        return "offline"
    return "online"


class SafeWandbLogger(WandbLogger):
    """:class:`WandbLogger` that redacts credential-like values from the logged config and, when
    ``offline_fallback`` is set (``auto`` mode chose online), logs offline if the online start fails."""

    def __init__(self, *args: Any, offline_fallback: bool = False, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._offline_fallback = offline_fallback

    @property
    @rank_zero_experiment
    def experiment(self) -> Any:
        import wandb

        try:
            return WandbLogger.experiment.fget(self)  # type: ignore[attr-defined]
        except (wandb.errors.Error, OSError, TimeoutError) as err:
            if not self._offline_fallback or self._experiment is not None:
                raise
            log.warning(
                "could not start an online W&B run (%s): logging offline under %s/wandb; upload it later "
                "with `wandb sync`",
                str(err).splitlines()[0] if str(err) else type(err).__name__,
                self._save_dir,
            )
            if wandb.run is not None:
                wandb.finish(exit_code=1)
            self._offline_fallback = False
            self._offline = True
            self._wandb_init["mode"] = "offline"
            return WandbLogger.experiment.fget(self)  # type: ignore[attr-defined]

    @rank_zero_only
    def log_hyperparams(self, params: dict[str, Any] | Namespace) -> None:
        super().log_hyperparams(redact_secrets(params))


def folder_run_id(save_dir: Path, *, resuming: bool) -> str:
    """The W&B run id of the run folder ``save_dir``: the one its first start wrote when the command resumes
    the folder's run, else a new id, written for later resumes (by the first process only)."""
    path = save_dir / "wandb" / RUN_ID_FILE
    if resuming and path.is_file():
        kept = path.read_text().strip()
        if kept:
            return kept
    # W&B's own form (8 characters of a-z0-9); its generator is not public API
    run_id = "".join(secrets.choice(string.ascii_lowercase + string.digits) for _ in range(8))
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(path, run_id + "\n")
    return run_id


def build_wandb_logger(node: DictConfig | dict[str, Any], *, resuming: bool = False) -> WandbLogger:
    """Instantiate the W&B logger in the mode :func:`resolve_mode` picks; nothing here touches the network
    except the bounded probe of ``auto`` mode (the run itself starts lazily, at the first log call).

    ``resuming``: the command continues the run of ``save_dir`` (its checkpoint lies there), so it logs into
    that run's W&B run (:func:`folder_run_id`) unless ``id`` is set.
    """
    import wandb

    options: dict[str, Any] = (
        OmegaConf.to_container(node, resolve=True) if OmegaConf.is_config(node) else dict(node)
    )  # type: ignore[assignment]
    options.pop("_target_", None)
    dropped = sorted(k for k in options if k not in scrub_secrets(options))
    if dropped:
        log.warning(
            "ignored %s in the wandb logger config: set WANDB_API_KEY in the environment instead", dropped
        )
    options = scrub_secrets(options)
    probe_timeout = float(options.pop("probe_timeout", PROBE_TIMEOUT_S))
    init_timeout = float(options.pop("init_timeout", DEFAULT_INIT_TIMEOUT_S))
    requested = str(options.pop("mode", "auto") or "auto").lower()
    mode = resolve_mode(requested, offline=bool(options.pop("offline", False)), probe_timeout=probe_timeout)
    if mode != "online" and options.get("log_model"):
        log.warning(
            "logger.wandb.log_model needs an online run: checkpoints are not uploaded (%s mode)", mode
        )
        options["log_model"] = False
    if mode == "offline":
        log.info(
            "W&B run logged offline under %s/wandb; upload it with `wandb sync`", options.get("save_dir", ".")
        )
    if "config" in options:
        options["config"] = redact_secrets(options["config"])
    save_dir = Path(str(options.get("save_dir") or "."))
    save_dir.mkdir(parents=True, exist_ok=True)
    options["save_dir"] = str(save_dir)
    if options.get("id") is None and mode != "disabled" and is_global_rank_zero():  # only rank 0 logs
        options["id"] = folder_run_id(save_dir, resuming=resuming)
    # `mode` goes to wandb.init, which prefers it to WANDB_MODE; `offline` keeps Lightning's own flag in step.
    settings = wandb.Settings(init_timeout=init_timeout)
    return SafeWandbLogger(
        offline=mode == "offline",
        mode=mode,
        settings=settings,
        offline_fallback=requested == "auto" and mode == "online",
        **options,
    )
