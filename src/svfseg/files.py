"""Writing files so that an interrupted or concurrent writer never leaves half a file behind."""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable
from pathlib import Path


def sha256_file(path: str | Path) -> str:
    """Hex sha256 of a file, read in 1 MiB chunks (weight files are hundreds of MB)."""
    digest = hashlib.sha256()
    with Path(path).open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def atomic_write(path: str | Path, write: Callable[[Path], None]) -> Path:
    """Call ``write(tmp)`` on a per-process temporary file next to ``path``, then rename it to ``path``.

    The temporary file is flushed to disk (fsync) before the rename, and the rename is atomic on one
    file system, so readers (other DDP ranks, test workers, a resumed run) and a machine that loses
    power see the old file or the new one, never a partial one. A failed ``write`` (a full disk, say)
    leaves the previous file untouched and no temporary file, and the error names ``path``.
    """
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        write(tmp)
        _fsync(tmp)
        os.replace(tmp, path)
        _fsync_dir(path.parent)
    except OSError as err:
        reason = err.strerror or str(err)
        raise OSError(
            err.errno, f"could not write {path}: {reason} (the previous file, if any, is kept)"
        ) from err
    finally:
        tmp.unlink(missing_ok=True)
    return path


def atomic_write_text(path: str | Path, text: str) -> Path:
    """:func:`atomic_write` of a UTF-8 text."""
    return atomic_write(path, lambda tmp: tmp.write_text(text, encoding="utf-8"))


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_dir(folder: Path) -> None:
    """Make the rename itself durable (a no-op where directories cannot be opened)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)
