"""Atomic outputs: everything layerfilm writes appears complete or not at all.

A file is written under a hidden temporary name beside its target and renamed over it only
when it is complete (``os.replace`` is atomic within a folder), so an interrupted render never
leaves a partial file and never clobbers an older one.  A render's outputs (film, manifest,
``--frames`` and ``--stills`` folders) are :class:`Staged` together and put in place together.

Temporary names carry the writing process's id (``.NAME.PID.XXXXXXXX.part``): two processes
writing the same output never share a file, and one killed outright (``kill -9``) leaves
temporaries that the next render of that output recognises as dead and removes (:func:`sweep`).
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import re
import shutil
import tempfile
from pathlib import Path
from typing import Iterator

from .errors import LayerfilmError


def umask() -> int:
    """The process's file-creation mask."""
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _prefix(path: Path) -> str:
    return f".{path.name}.{os.getpid()}."


def temporary_beside(path: Path) -> Path:
    """A new, empty, hidden file in ``path``'s folder (``.NAME.PID.XXXXXXXX.part``)."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=_prefix(path), suffix=".part")
    os.close(fd)
    return Path(tmp)


def temporary_folder_beside(path: Path) -> Path:
    """A new, empty, hidden folder in ``path``'s folder, named as :func:`temporary_beside`."""
    return Path(tempfile.mkdtemp(dir=path.parent, prefix=_prefix(path), suffix=".part"))


# mkstemp/mkdtemp's eight random characters; the pid before them says who wrote the file.
_TEMPORARY = re.compile(r"(\d+)\.[a-z0-9_]{8}\.part")


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # someone else's process
    return True


def sweep(path: Path) -> list[Path]:
    """Remove the temporaries of ``path`` left by processes that no longer run (a render killed
    with SIGKILL cannot clean up after itself); returns what was removed.  Temporaries of live
    processes -- another render of the same output running now -- are left alone."""
    removed = []
    prefix = f".{path.name}."
    try:
        entries = list(path.parent.iterdir())
    except OSError:
        return removed  # no folder yet: nothing to sweep
    for entry in entries:
        match = _TEMPORARY.fullmatch(entry.name[len(prefix):]) if entry.name.startswith(prefix) else None
        if match is None or _alive(int(match.group(1))):
            continue
        if entry.is_dir() and not entry.is_symlink():
            shutil.rmtree(entry, ignore_errors=True)
        else:
            with contextlib.suppress(OSError):
                entry.unlink()
        removed.append(entry)
    return removed


def publish(tmp: Path, path: Path) -> None:
    """Move the finished ``tmp`` over ``path``, with the usual umask-based mode (mkstemp makes
    files private)."""
    os.chmod(tmp, 0o666 & ~umask())
    os.replace(tmp, path)


@contextlib.contextmanager
def writing(path: str | os.PathLike) -> Iterator[Path]:
    """A temporary file beside ``path`` (:func:`temporary_beside`) for the block to write, in
    one go or in pieces, as often as it needs (a retried download); put over ``path``
    (:func:`publish`) when the block ends without an error, removed when it does not."""
    path = Path(path)
    tmp = temporary_beside(path)
    try:
        yield tmp
        publish(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically."""
    with writing(path) as tmp:
        tmp.write_bytes(data)


class Staged:
    """A render's outputs, written under hidden temporary names and put in place together.

    Each output is staged -- :meth:`file` (in one work folder per destination folder) or
    :meth:`folder` -- which sweeps its dead temporaries, and is written at the path returned.
    :meth:`commit` renames them all into place in the order staged, after checking that every
    rename can succeed, so a failure anywhere before it leaves every older output as it was
    (a film never sits beside another film's manifest).  Leaving the ``with`` block removes
    every temporary that was not committed.
    """

    def __init__(self):
        self._moves: list[tuple[Path, Path]] = []  # (temporary, target), in commit order
        self._work: dict[Path, Path] = {}  # destination folder -> this render's work folder

    def file(self, path: str | os.PathLike) -> Path:
        """Where to write the file ``path`` until :meth:`commit`."""
        path = Path(path)
        sweep(path)
        if path.parent not in self._work:
            self._work[path.parent] = temporary_folder_beside(path)
        tmp = self._work[path.parent] / path.name
        self._moves.append((tmp, path))
        return tmp

    def folder(self, path: str | os.PathLike) -> Path:
        """Where to write the folder ``path`` until :meth:`commit`; ``path`` must then not
        exist or be an empty folder (the config checks), so no earlier files are mixed in or
        lost."""
        path = Path(path)
        sweep(path)
        tmp = temporary_folder_beside(path)
        self._moves.append((tmp, path))
        return tmp

    def where(self, path: str | os.PathLike) -> Path:
        """Where the staged output ``path`` is until :meth:`commit`."""
        return next(tmp for tmp, target in self._moves if target == Path(path))

    def commit(self) -> None:
        """Put every staged output in place, in the order staged; another process committing
        the same outputs waits, so the last pair in place is one render's film and manifest."""
        with _locked(sorted({target.parent for _, target in self._moves})):
            for tmp, target in self._moves:
                _check_replaceable(tmp, target)
            for tmp, target in self._moves:
                if tmp.is_dir():
                    if target.exists():
                        target.rmdir()  # empty, checked above
                    os.chmod(tmp, 0o777 & ~umask())
                os.replace(tmp, target)
        self._moves.clear()

    def __enter__(self) -> "Staged":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if isinstance(exc, LayerfilmError):  # name the outputs asked for, not their temporaries
            for tmp, target in self._moves:
                if tmp.parent not in self._work.values():
                    exc.renamed(str(tmp), str(target))
            for folder, work in self._work.items():
                exc.renamed(str(work), str(folder))
        for tmp, _ in self._moves:
            if tmp.is_dir():
                shutil.rmtree(tmp, ignore_errors=True)
            else:
                tmp.unlink(missing_ok=True)
        for work in self._work.values():
            shutil.rmtree(work, ignore_errors=True)
        self._moves.clear()


def _check_replaceable(tmp: Path, target: Path) -> None:
    """Refuse before anything is renamed, rather than after the film is already replaced."""
    if tmp.is_dir():
        if target.exists() and (not target.is_dir() or any(target.iterdir())):
            raise LayerfilmError("exists and is not an empty folder; nothing was replaced", target)
    elif target.is_dir():
        raise LayerfilmError("is a folder, so the file cannot be written there; nothing was "
                             "replaced", target)


@contextlib.contextmanager
def _locked(folders: list[Path]):
    """An exclusive ``flock`` on each folder (in sorted order, so two processes cannot
    deadlock), held while outputs are renamed into it."""
    with contextlib.ExitStack() as stack:
        for folder in folders:
            fd = os.open(folder, os.O_RDONLY)
            stack.callback(os.close, fd)
            with contextlib.suppress(OSError):  # a file system without locks: rename unlocked
                fcntl.flock(fd, fcntl.LOCK_EX)
        yield
