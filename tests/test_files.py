"""Writing and reading files: atomic writes appear whole or not at all; an unreadable torch file names itself."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from svfseg.files import atomic_write, read_tensor_file


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


@pytest.mark.parametrize("mmap", [False, True])
def test_read_tensor_file_reads_and_names_a_file_that_does_not_read(tmp_path: Path, mmap: bool) -> None:
    good = tmp_path / "good.pt"
    torch.save({"w": torch.arange(5.0)}, good)
    assert torch.equal(read_tensor_file(good, error=ValueError, fix="x", mmap=mmap)["w"], torch.arange(5.0))
    for name, content in (("cut.pt", good.read_bytes()[:-30]), ("text.pt", b"not a torch file\n")):
        bad = tmp_path / name
        bad.write_bytes(content)
        with pytest.raises(KeyError) as err:  # any exception type the caller names
            read_tensor_file(bad, error=KeyError, what="a weight file", fix="fetch it again", mmap=mmap)
        text = err.value.args[0]
        assert text.startswith(f"{bad} does not read as a weight file (truncated or corrupt: ")
        assert text.endswith("); fetch it again")
        assert bad.read_bytes() == content  # nothing is written


def test_read_tensor_file_reads_safetensors_by_content_and_names_a_truncated_one(tmp_path: Path) -> None:
    good = tmp_path / "weights.bin"  # no suffix to go by
    save_file({"w": torch.arange(4.0)}, str(good))
    assert torch.equal(read_tensor_file(good, error=ValueError, fix="x")["w"], torch.arange(4.0))
    cut = tmp_path / "cut.bin"
    cut.write_bytes(good.read_bytes()[:-3])
    with pytest.raises(
        ValueError, match=r"cut\.bin does not read as a weight file \(truncated or corrupt: .*\); fetch it"
    ):
        read_tensor_file(cut, error=ValueError, what="a weight file", fix="fetch it")
