"""The shared message pieces (svfseg.messages)."""

from __future__ import annotations

import pytest

from svfseg.messages import preview


def test_preview_shows_the_first_names_and_counts_the_rest() -> None:
    assert preview([]) == ""
    assert preview(["a"]) == "a"
    assert preview("abc", 3) == "a, b, c"
    assert preview("abcde", 3) == "a, b, c (+2 more)"
    assert preview(range(20)) == "0, 1, 2, 3, 4, 5, 6, 7 (+12 more)"  # any items, 8 by default
    assert preview((f"{k}: 1 -> 2" for k in "xyz"), 2, sep="; ") == "x: 1 -> 2; y: 1 -> 2 (+1 more)"
    with pytest.raises(ValueError, match="limit must be >= 1"):
        preview(["a"], 0)
