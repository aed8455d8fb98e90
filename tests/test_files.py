"""atomic_write: the new content appears whole, or the old file stays as it was."""

from __future__ import annotations

from pathlib import Path

import pytest

from svfseg.files import atomic_write


def test_atomic_write_replaces_whole_and_a_failed_write_keeps_the_old_file(tmp_path: Path) -> None:
    path = tmp_path / "record.json"
    assert atomic_write(path, lambda tmp: tmp.write_text("old")) == path

    def broken(tmp: Path) -> None:
        tmp.write_text("half")
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        atomic_write(path, broken)
    assert path.read_text() == "old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["record.json"]  # no temporary file left
    atomic_write(path, lambda tmp: tmp.write_text("new"))
    assert path.read_text() == "new"
