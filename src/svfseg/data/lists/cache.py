"""The JSON files list building caches: where they live, their format version, their keys.

A file that is unreadable, of another version or of another key counts as absent and is rebuilt, so a
stale cache can cost time but never change a list.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from pathlib import Path
from typing import Any

from svfseg.files import atomic_write

log = logging.getLogger(__name__)

CACHE_VERSION = 1
CACHE_DIRNAME = ".svfseg_cache"


def json_sha256(obj: Any) -> str:
    """sha256 of ``obj`` as canonical JSON (sorted keys): equal content, equal key."""
    return hashlib.sha256(json.dumps(obj, sort_keys=True).encode()).hexdigest()


def load_cache(path: Path) -> dict[str, Any] | None:
    """The cache file's content if it is readable and of this ``CACHE_VERSION``, else None."""
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        log.warning("ignoring unreadable cache file %s (%s); it will be rebuilt", path, exc)
        return None
    return data if isinstance(data, dict) and data.get("version") == CACHE_VERSION else None


def write_cache(path: Path, data: dict[str, Any]) -> None:
    """Atomic write (tmp + rename), so concurrent builders (e.g. DDP ranks) never read half a file."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write(path, lambda tmp: tmp.write_text(json.dumps(data, separators=(",", ":"))))
    except OSError as exc:
        log.warning("could not write cache file %s (%s); lists will be rebuilt next time", path, exc)


def resolve_cache_dir(root: Path, cache_dir: str | Path | None) -> Path:
    """``cache_dir``, else ``ROOT/.svfseg_cache``, else (read-only root) the user cache ``svfseg`` folder."""
    if cache_dir is not None:
        return Path(cache_dir)
    default = root / CACHE_DIRNAME
    if os.access(root, os.W_OK) or default.is_dir():
        return default
    fallback = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "svfseg"
    log.info("dataset root %s is read-only; caching lists in %s", root, fallback)
    return fallback
