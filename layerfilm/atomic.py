"""Atomic outputs: everything layerfilm writes appears complete or not at all.

A file is written under a hidden temporary name beside its target and renamed over it only
when it is complete (``os.replace`` is atomic within a folder), so an interrupted render never
leaves a partial file and never clobbers an older one.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path


def umask() -> int:
    """The process's file-creation mask."""
    mask = os.umask(0)
    os.umask(mask)
    return mask


def temporary_beside(path: Path) -> Path:
    """A new, empty, hidden file in ``path``'s folder (``.NAME.XXXX.part``)."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".part")
    os.close(fd)
    return Path(tmp)


def publish(tmp: Path, path: Path) -> None:
    """Move the finished ``tmp`` over ``path``, with the usual umask-based mode (mkstemp makes
    files private)."""
    os.chmod(tmp, 0o666 & ~umask())
    os.replace(tmp, path)


def write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically."""
    path = Path(path)
    tmp = temporary_beside(path)
    try:
        tmp.write_bytes(data)
        publish(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


class Folder:
    """A hidden temporary folder beside ``path`` that becomes ``path`` only on success.

    ``path`` must not exist or be an empty folder (the config checks), so no earlier files
    are mixed in or lost.  ``with Folder(p) as tmp:`` yields the temporary folder.
    """

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        self.tmp: Path | None = None

    def __enter__(self) -> Path:
        self.tmp = Path(tempfile.mkdtemp(dir=self.path.parent, prefix=f".{self.path.name}.",
                                         suffix=".part"))
        return self.tmp

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            if self.path.exists():
                self.path.rmdir()  # empty, checked by the config
            os.chmod(self.tmp, 0o777 & ~umask())
            os.replace(self.tmp, self.path)
        else:
            shutil.rmtree(self.tmp, ignore_errors=True)
