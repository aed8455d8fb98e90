"""Writing files so that an interrupted or concurrent writer never leaves half a file behind, and reading
tensor files (torch.save or safetensors) so that one that does not read names itself."""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any


def sha256_file(path: str | Path) -> str:
    """Hex sha256 of a file, read in 1 MiB chunks (weight files are hundreds of MB)."""
    digest = hashlib.sha256()
    with Path(path).open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def is_safetensors(path: str | Path) -> bool:
    """A safetensors file starts with its header's 8-byte length and then the JSON header's ``{``; neither a
    ``torch.save`` zip (``PK``...) nor a legacy pickle has ``{`` at byte 8, so the content decides, not the
    suffix."""
    with Path(path).open("rb") as fh:
        head = fh.read(9)
    return len(head) == 9 and head[8:9] == b"{"


def read_tensor_file(
    path: str | Path,
    *,
    error: Callable[[str], Exception],
    fix: str,
    what: str = "a PyTorch file",
    map_location: Any = "cpu",
    mmap: bool = False,
) -> Any:
    """A ``torch.save`` file (``weights_only=True``) or a safetensors file (a dict of tensors); a file that
    does not read raises ``error`` with one message.

    Truncated downloads, foreign pickles and files of another kind fail inside the loaders with messages
    about zip records, unpickling or headers; every reader of a weight or checkpoint file reports them the
    same way: the file, what it should have been, the reason and ``fix``. ``mmap`` (torch files) reads no
    tensor data until it is used (callers that only check metadata).
    """
    try:
        if is_safetensors(path):
            from safetensors.torch import load_file

            return load_file(str(path), device=str(map_location))
        import torch

        return torch.load(path, map_location=map_location, weights_only=True, mmap=mmap)
    except Exception as err:  # zip/pickle errors of every kind: the message names the cause
        raise error(
            f"{path} does not read as {what} (truncated or corrupt: {type(err).__name__}: {err}); {fix}"
        ) from err


def atomic_write(path: str | Path, write: Callable[[Path], None]) -> Path:
    """Call ``write(tmp)`` on a per-process temporary file next to ``path``, then rename it to ``path``.

    The temporary file is flushed to disk (fsync) before the rename, and the rename is atomic on one
    file system, so readers (other DDP ranks, test workers, a resumed run) and a machine that loses
    power see the old file or the new one, never a partial one. A failed ``write`` (a full disk, say)
    leaves the previous file untouched and no temporary file, and the error names ``path``.
    """
    path = Path(path)
    tmp = temp_path(path)
    try:
        write(tmp)
        _fsync(tmp)
        os.replace(tmp, path)
        _fsync_dir(path.parent)
    except OSError as err:
        raise _write_error(err, path, "the previous file, if any, is kept") from err
    finally:
        tmp.unlink(missing_ok=True)
    return path


def temp_path(path: str | Path) -> Path:
    """The per-process temporary file :func:`atomic_write` writes before renaming it to ``path``."""
    path = Path(path)
    return path.with_name(f".{path.name}.{os.getpid()}.tmp")


def is_temp_of(name: str, target: str) -> bool:
    """Whether the file name ``name`` is a temporary file of :func:`atomic_write` for ``target``
    (left behind by a writer that was killed before it could remove it)."""
    prefix, suffix = f".{target}.", ".tmp"
    middle = name[len(prefix) : -len(suffix)] if name.startswith(prefix) and name.endswith(suffix) else ""
    return middle.isdigit()


def atomic_write_all(writes: Mapping[Path, Callable[[Path], None]]) -> list[Path]:
    """:func:`atomic_write` of several files that belong together (an export, say).

    Every file is first written in full to its temporary name and flushed; only when all of them are
    written are they renamed into place, one after the other (renames need no disk space). A failed
    write (a full disk) therefore leaves every previous file untouched and no temporary file, and the
    error names the file that could not be written.
    """
    pending: list[tuple[Path, Path]] = []
    try:
        for path, write in writes.items():
            path = Path(path)
            tmp = temp_path(path)
            pending.append((tmp, path))
            try:
                write(tmp)
                _fsync(tmp)
            except OSError as err:
                raise _write_error(err, path, "the previous files, if any, are kept") from err
        for tmp, path in pending:
            os.replace(tmp, path)
        for folder in {path.parent for _, path in pending}:
            _fsync_dir(folder)
    finally:
        for tmp, _ in pending:
            tmp.unlink(missing_ok=True)
    return [path for _, path in pending]


def torch_save(obj: Any, path: str | Path) -> None:
    """``torch.save(obj, path)`` whose failed write raises the ``OSError`` (errno ENOSPC for a full disk).

    ``torch.save`` reports a failed write as a ``RuntimeError`` ("unexpected pos ...") without the
    cause; writing through a Python file object keeps the ``OSError`` as its context, which is re-raised
    here, so :func:`atomic_write` can name the file and the reason.
    """
    import torch

    with open(path, "wb") as handle:
        try:
            torch.save(obj, handle)
        except RuntimeError as err:
            cause = err.__context__
            if isinstance(cause, OSError):
                raise OSError(cause.errno, cause.strerror or str(cause)) from err
            raise


def _write_error(err: OSError, path: Path, kept: str) -> OSError:
    reason = err.strerror or str(err)
    return OSError(err.errno, f"could not write {path}: {reason} ({kept})")


def atomic_write_text(path: str | Path, text: str) -> Path:
    """:func:`atomic_write` of a UTF-8 text."""
    return atomic_write(path, lambda tmp: tmp.write_text(text, encoding="utf-8"))


def atomic_write_bytes(path: str | Path, data: bytes) -> Path:
    """:func:`atomic_write` of bytes (an encoded image, say)."""
    return atomic_write(path, lambda tmp: tmp.write_bytes(data))


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
