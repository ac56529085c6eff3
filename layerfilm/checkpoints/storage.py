"""Where a checkpoint's bytes come from.

Discovery and the format readers never touch files themselves: they ask a :class:`Storage`
for listings, sizes and byte ranges.  :class:`LocalStorage` (a folder on this machine) is the
first implementation; remote ones (object stores, Hub revisions) implement the same protocol.

Paths are ``pathlib`` objects (``Path`` here, pure paths for remote storage), so discovery
can use ``name``/``suffix``/``parents`` whatever the storage.  Errors are ``OSError``\\ s,
which the readers turn into one-line :class:`~layerfilm.errors.CheckpointError`\\ s.
"""

from __future__ import annotations

import os
from pathlib import Path, PurePath
from typing import Protocol, Sequence



class Storage(Protocol):
    """What discovery and the readers need from the place the checkpoints are."""

    def display(self, path: PurePath) -> str:
        """How ``path`` is named in messages (a local path, a URL)."""

    def is_dir(self, path: PurePath) -> bool: ...

    def is_file(self, path: PurePath) -> bool: ...

    def listdir(self, path: PurePath) -> list[PurePath]:
        """The entries of a folder, sorted by name; ``OSError`` when it cannot be listed."""

    def size(self, path: PurePath) -> int: ...

    def read(self, path: PurePath, start: int, end: int) -> bytes:
        """Bytes ``[start, end)`` of a file; fewer only at the end of the file."""

    def read_ranges(self, path: PurePath, ranges: Sequence[tuple[int, int]]) -> list[bytes]:
        """Several ``[start, end)`` ranges of one file, in order."""

    def local_path(self, path: PurePath) -> Path:
        """A path on this machine holding the file's (or folder's) bytes, for readers that
        need one (``torch.load``)."""

    def identity(self, path: PurePath) -> str:
        """A string that changes whenever the file's contents may have changed (cache keys)."""


class LocalStorage:
    """Files on this machine.  Data is read as byte ranges -- the drawn rows, coalesced -- with
    ``pread`` and the kernel's read-ahead off for them: a memory map would fault in (and keep
    resident) whole neighbourhoods of pages around each drawn row, which on a 1B-parameter
    bf16 series read 65 % of the file for 27 % drawn, and held two checkpoints in memory."""

    cheap_reads = True  # readers need not keep what they read: reading it again costs little

    def display(self, path: PurePath) -> str:
        return str(path)

    def is_dir(self, path: PurePath) -> bool:
        return Path(path).is_dir()

    def is_file(self, path: PurePath) -> bool:
        return Path(path).is_file()

    def listdir(self, path: PurePath) -> list[PurePath]:
        return sorted(Path(path).iterdir())

    def size(self, path: PurePath) -> int:
        return Path(path).stat().st_size

    def read(self, path: PurePath, start: int, end: int) -> bytes:
        with open(path, "rb") as f:
            f.seek(start)
            return f.read(max(0, end - start))

    def read_ranges(self, path: PurePath, ranges: Sequence[tuple[int, int]]) -> list[bytes]:
        fd = os.open(path, os.O_RDONLY)
        try:
            if hasattr(os, "posix_fadvise") and len(ranges) > 1:
                # Scattered rows: no read-ahead around them, but every one of them asked for at
                # once, so the disk sees them all queued instead of one after the other (measured
                # on a 1B bf16 checkpoint's 766 MB of drawn rows, cold: 1.8-2.2 s against 3.2-4.3 s).
                os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_RANDOM)
                for start, end in coalesce(ranges, gap=1 << 12):
                    os.posix_fadvise(fd, start, end - start, os.POSIX_FADV_WILLNEED)
            out = []
            for start, end in ranges:
                chunk = os.pread(fd, max(0, end - start), start)
                while len(chunk) < end - start:  # pread may return less; the end of file stops it
                    more = os.pread(fd, end - start - len(chunk), start + len(chunk))
                    if not more:
                        break
                    chunk += more
                out.append(chunk)
            return out
        finally:
            os.close(fd)

    def local_path(self, path: PurePath) -> Path:
        return Path(path)

    def identity(self, path: PurePath) -> str:
        st = Path(path).stat()
        return f"{Path(path).resolve()}|{st.st_size}|{st.st_mtime_ns}"

    @staticmethod
    def size_and_time(identity: str) -> tuple[int, int]:
        """The size and modification time (ns) an :meth:`identity` recorded."""
        _, size, mtime_ns = identity.rsplit("|", 2)
        return int(size), int(mtime_ns)


LOCAL = LocalStorage()


def cache_root() -> Path:
    """layerfilm's cache folder: ``$LAYERFILM_CACHE_DIR``, else ``$XDG_CACHE_HOME/layerfilm``,
    else ``~/.cache/layerfilm``."""
    if os.environ.get("LAYERFILM_CACHE_DIR"):
        return Path(os.environ["LAYERFILM_CACHE_DIR"])
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "layerfilm"


def coalesce(ranges: Sequence[tuple[int, int]], gap: int = 0) -> list[tuple[int, int]]:
    """Sorted ``[start, end)`` ranges merged where they touch or are at most ``gap`` bytes
    apart: fewer, larger reads."""
    merged: list[list[int]] = []
    for start, end in sorted(ranges):
        if merged and start - merged[-1][1] <= gap:
            merged[-1][1] = max(merged[-1][1], end)
        else:
            merged.append([start, end])
    return [(s, e) for s, e in merged]


def fspath(path: PurePath | str | os.PathLike) -> str:
    """A path as text for messages and manifests."""
    return os.fspath(path)
