"""Value checks of the DataModules' arguments: each error names the key, the bad value and what is allowed."""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from svfseg.data.layouts import get_layout

MAX_IMAGE_SIZE = 4096  # largest train_size / eval_size the DataModules accept


def check_int(key: str, value: Any, *, low: int = 1, high: int | None = None, allowed: str = "") -> int:
    """``value`` as an int in ``[low, high]``; the error names the key, the value and what is allowed."""
    ok = isinstance(value, int) and not isinstance(value, bool) and value >= low
    if ok and high is not None:
        ok = value <= high
    if not ok:
        span = allowed or (f"an integer in [{low}, {high}]" if high is not None else f"an integer >= {low}")
        raise ValueError(f"{key}={value!r} is invalid: expected {span}")
    return int(value)


def check_scale(key: str, value: Any) -> tuple[float, float]:
    try:
        lo, hi = (float(v) for v in value)
    except (TypeError, ValueError):
        raise ValueError(f"{key}={value!r} is invalid: expected [min, max], e.g. [0.9, 1.1]") from None
    if not 0 < lo <= hi:
        raise ValueError(f"{key}={value!r} is invalid: need 0 < min <= max, e.g. [0.9, 1.1]")
    return lo, hi


def check_source_lists(value: Mapping[str, Any] | None) -> dict[str, str]:
    if value is None:
        return {}
    if not isinstance(value, Mapping) or not set(value) <= {"train", "val"}:
        raise ValueError(
            f"source_lists={value!r} is invalid: expected null or a mapping with keys 'train' and/or 'val' "
            "giving list files of 'IMAGE LABEL' lines"
        )
    return {k: str(v) for k, v in value.items() if v is not None}


def missing_root_message(subject: str, path: Path, hint: str) -> str:
    """Why dataset root ``path`` is not a folder, with a fix that can work.

    When a file sits where a folder of the path should be (``SVFSEG_DATA`` set to a file, say), no command
    can create the root there: the message names that file, and ``SVFSEG_DATA`` when it points to it.
    """
    blocker = next((p for p in (path, *path.parents) if p.exists() and not p.is_dir()), None)
    if blocker is None:
        return f"{subject} does not exist; create it with: {hint}"
    env = os.environ.get("SVFSEG_DATA")
    if env and Path(env).expanduser().absolute() == blocker.absolute():
        return (
            f"{subject} cannot exist: SVFSEG_DATA={env} points to a file, but it must name a folder (the "
            "folder that holds the datasets, e.g. export SVFSEG_DATA=/datasets); set it to a folder or unset "
            "it (default: ./data)"
        )
    return (
        f"{subject} cannot exist: {blocker} is a file, not a folder; set dataset.root (or paths.data_dir "
        "/ SVFSEG_DATA) to a folder"
    )


def check_root(dataset: str, root: str | Path) -> Path:
    path = Path(root).expanduser()
    if not path.is_dir():
        subject = f"dataset root {path} (dataset={dataset})"
        raise FileNotFoundError(missing_root_message(subject, path, get_layout(dataset).hint(path)))
    return path
