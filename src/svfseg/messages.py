"""Pieces of error and log messages that every part of svfseg writes the same way.

A leaf module (standard library only), so the SVF core and the application can both use it.
"""

from __future__ import annotations

import re
import warnings
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


def ignore_warning_once(pattern: str, category: type[Warning]) -> None:
    """Ignore warnings of ``category`` whose message matches ``pattern``, adding the filter only once.

    Every change of ``warnings.filters`` resets Python's "shown once" record of all warnings, so a filter
    added again on each fit would show every once-only warning again.
    """
    if not any(
        f[0] == "ignore" and f[1] is not None and f[1].pattern == pattern and f[2] is category
        for f in warnings.filters
    ):
        warnings.filterwarnings("ignore", message=pattern, category=category)


def ignore_sync_advice(prefix: str) -> None:
    """Silence Lightning's advice to log ``<prefix>/...`` with ``sync_dist=True`` under DDP.

    For values that are equal on every rank when logged (metrics whose torchmetrics ``compute()`` already
    summed the counts over ranks, weights DDP keeps equal): the advice does not apply, and an all-reduce
    mean of equal floats could change their last bit. Lightning's PossibleUserWarning is a UserWarning.
    """
    ignore_warning_once(rf"It is recommended to use `self\.log\('{re.escape(prefix)}/", UserWarning)
