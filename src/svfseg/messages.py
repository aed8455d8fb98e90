"""Pieces of error and log messages that every part of svfseg writes the same way.

A leaf module (standard library only), so the SVF core and the application can both use it.
"""

from __future__ import annotations

from collections.abc import Iterable


def preview(items: Iterable[object], limit: int = 8, *, sep: str = ", ") -> str:
    """The first ``limit`` items, then how many more: ``"a, b, c (+5 more)"``; ``""`` for no items.

    For messages that name keys, layers or files without printing a list of thousands; sort the
    items first where their order means nothing.
    """
    if limit < 1:
        raise ValueError(f"limit must be >= 1, got {limit}")
    names = [str(item) for item in items]
    shown = sep.join(names[:limit])
    return shown + (f" (+{len(names) - limit} more)" if len(names) > limit else "")
