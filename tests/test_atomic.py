"""atomic.writing: a file appears complete, with the usual mode, or not at all."""

import os
import stat

import pytest

from layerfilm import atomic


def _mode(path):
    return stat.S_IMODE(path.stat().st_mode)


def test_writing_puts_the_file_in_place_with_the_umask_mode(tmp_path):
    target = tmp_path / "f.bin"
    with atomic.writing(target) as tmp:
        assert tmp.parent == tmp_path and tmp.name.startswith(f".f.bin.{os.getpid()}.")
        assert _mode(tmp) == 0o600  # private while it is being written
        tmp.write_bytes(b"first try")
        tmp.write_bytes(b"whole")  # a retry writes it again
        assert not target.exists()
    assert target.read_bytes() == b"whole"
    assert _mode(target) == 0o666 & ~atomic.umask()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["f.bin"]


def test_a_failed_write_leaves_the_older_file_and_no_temporary(tmp_path):
    target = tmp_path / "f.bin"
    target.write_bytes(b"old")
    with pytest.raises(RuntimeError), atomic.writing(target) as tmp:
        tmp.write_bytes(b"half")
        raise RuntimeError("cut short")
    assert target.read_bytes() == b"old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["f.bin"]


def test_an_interrupted_write_leaves_no_temporary(tmp_path):
    target = tmp_path / "f.bin"
    with pytest.raises(KeyboardInterrupt), atomic.writing(target) as tmp:
        tmp.write_bytes(b"half")
        raise KeyboardInterrupt
    assert list(tmp_path.iterdir()) == []


def test_write_bytes(tmp_path):
    atomic.write_bytes(tmp_path / "f.bin", b"data")
    assert (tmp_path / "f.bin").read_bytes() == b"data"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["f.bin"]
