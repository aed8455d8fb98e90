"""A weight file's provenance record: ``<name>.json`` next to ``<name>.pth``, written by whatever made it.

svfseg's proxy pretraining writes one (recipe, sha256, rebuild command). The strict loader reads it only
to say how to fix a file that fails to load, e.g. "rebuild it with ..." or "it was built for width 0.125".
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

PROXY_RECORD_KIND = "svfseg-proxy-backbone"


def record_path(weights: str | Path) -> Path:
    return Path(weights).with_suffix(".json")


def read_record(weights: str | Path) -> dict[str, Any] | None:
    """The proxy record next to a weight file, or None (no record, unreadable, or another kind of JSON)."""
    path = record_path(weights)
    if not path.is_file():
        return None
    try:
        record = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return None
    return record if isinstance(record, dict) and record.get("kind") == PROXY_RECORD_KIND else None


def provenance_hint(weights: str | Path, width_mult: float | None = None) -> str:
    """A sentence that tells how to fix ``weights`` from its record ("" for a file without one)."""
    record = read_record(weights)
    if record is None:
        return ""
    spec = record.get("spec") or {}
    built_width = spec.get("width_mult")
    parts = [f" This is a proxy-pretrained file (record {record_path(weights)})."]
    if width_mult is not None and built_width is not None and float(built_width) != float(width_mult):
        parts.append(
            f" It was built for backbone.width_mult={built_width:g}, this backbone has {width_mult:g}: set "
            f"backbone.width_mult={built_width:g}, or build weights for {width_mult:g} with "
            f"`python -m svfseg.pretrain --width-mult {width_mult:g}`."
        )
    else:
        parts.append(
            f" Delete it and its record, then rebuild it with `{record.get('rebuild', 'python -m svfseg.pretrain')}`."
        )
    return "".join(parts)
