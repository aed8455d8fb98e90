"""A weight file's provenance record: ``<file>.json`` next to the file, written by whatever made it.

One rule for every tool: ``initmodel/resnet50_v2.pth`` -> ``initmodel/resnet50_v2.pth.json``
(:func:`record_path`), so two files that differ only in their suffix never share a record.
``python -m svfseg.weights fetch`` writes one (origin, sha256); svfseg's proxy pretraining writes one
(recipe, sha256, rebuild command). The proxy pretraining once wrote ``<stem>.json``
(``resnet50_w0.125_proxy_seed0.json`` beside the ``.pth``); such a record is still read
(:func:`find_record`), never written. The strict loader reads a record only to say how to fix a file
that fails to load, e.g. "rebuild it with ..." or "it was built for width 0.125".
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

PROXY_RECORD_KIND = "svfseg-proxy-backbone"


def record_path(weights: str | Path) -> Path:
    """Where the record of ``weights`` is written: the file's whole name plus ``.json``."""
    path = Path(weights)
    return path.with_name(path.name + ".json")


def legacy_record_path(weights: str | Path) -> Path:
    """``<stem>.json``: where the proxy pretraining wrote its record before the one rule (read only)."""
    return Path(weights).with_suffix(".json")


def find_record(weights: str | Path) -> Path | None:
    """The record file of ``weights``: ``<file>.json``, else an older ``<stem>.json``; None without one."""
    for path in (record_path(weights), legacy_record_path(weights)):
        if path.is_file():
            return path
    return None


def read_record(weights: str | Path) -> dict[str, Any] | None:
    """The proxy record next to a weight file, or None (no record, unreadable, or another kind of JSON)."""
    path = find_record(weights)
    if path is None:
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
    parts = [f" This is a proxy-pretrained file (record {find_record(weights)})."]
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
