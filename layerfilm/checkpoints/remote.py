"""What every remote storage shares: listings, checked ranged reads, retries, caches, counts.

A remote storage (:mod:`.hub`, :mod:`.fsspec_storage`) says how to list a folder (``_list``)
and how to fetch one byte range (``_fetch``); this base class does the rest:

- **reads only what is asked**, merging nearby ranges into blocks of bounded size and fetching
  them in parallel (at most :data:`WORKERS` at a time);
- **never trusts a ranged read**: a subclass hands back what the server said (status,
  ``Content-Range``, body) and :meth:`_checked` accepts only exactly the range asked for.  A
  server that ignores ``Range`` (a 200 with the whole file) is read from its first bytes when
  those were asked for, else the whole body is streamed to a temporary file that serves every
  later read of that file;
- **retries** 5xx answers, timeouts, resets and wrong ranges with backoff, a bounded number of
  times; 404/401/403 are final and named in one line;
- **caches** small reads (safetensors headers, loss logs) on disk under the file's identity (a
  commit sha, an LFS sha256, an ETag), so a re-render makes no data requests;
- **counts** requests and bytes fetched (:class:`Traffic`).

Storages pickle without their connections (a worker process re-opens them), so a
:class:`~layerfilm.checkpoints.discover.CheckpointRef` travels as a small task argument.
"""

from __future__ import annotations

import atexit
import bisect
import concurrent.futures
import hashlib
import logging
import re
import shutil
import tempfile
import threading
from pathlib import Path, PurePath
from typing import Iterable, Sequence

from .. import atomic
from ..untrusted import within
from .storage import cache_root, coalesce
from .transfer import (PREFIX_MAX, TOTAL, Answer, Entry, RemoteError, Traffic, Transient, drain, human_bytes,
                       retrying, status_error)

log = logging.getLogger("layerfilm")

WORKERS = 16  # ranged requests in flight per read
MAX_BLOCK = 16 << 20  # largest merged block fetched in one request
MERGE_GAP = 8 << 10  # ranges closer than this are fetched as one block (a request costs more)
KEEP_FALLBACKS = 2  # whole-file copies kept at once (a server that ignores Range)
_CONTENT_RANGE = re.compile(r"bytes (\d+)-(\d+)/(\d+|\*)")


class RemoteStorage:
    """The shared part of every remote :class:`~layerfilm.checkpoints.storage.Storage`.

    Paths are :class:`PurePosixPath`; subclasses implement ``display``, ``_list(folder)``
    (a list of :class:`Entry`, ``FileNotFoundError`` when there is no such folder),
    ``_fetch(path, start, end, entry)`` (an :class:`Answer`) and may override
    ``_download(path, entry, dest)`` (the whole file).
    """

    first_read = 16 << 10  # a safetensors header's first request (most headers fit)

    def __init__(self, keep_downloads: bool = False):
        self.keep_downloads = keep_downloads
        self._setup()

    def _setup(self) -> None:
        self.traffic = Traffic(TOTAL)
        self._lock = threading.RLock()
        self._listings: dict[PurePath, dict[str, Entry] | OSError] = {}
        self._copies: dict[PurePath, Path] = {}  # whole-file copies, most recent last
        self._honours_range: bool | None = None  # unknown until the first ranged answer

    def __getstate__(self):
        state = dict(self.__dict__)
        for k in ("traffic", "_lock", "_listings", "_copies", "_honours_range"):
            state.pop(k, None)
        return self._portable(state)

    def __setstate__(self, state):
        self.__dict__.update(state)
        self._setup()

    def _portable(self, state: dict) -> dict:
        """The picklable state (subclasses drop their clients)."""
        return state

    # ---- listings -------------------------------------------------------------------------

    def _entries(self, folder: PurePath) -> dict[str, Entry]:
        with self._lock:
            found = self._listings.get(folder)
        if found is None:
            try:
                found = {e.name: e for e in self._list(folder)}
            except OSError as e:
                found = e
            with self._lock:
                self._listings[folder] = found
        if isinstance(found, OSError):
            raise found
        return found

    def entry(self, path: PurePath) -> Entry | None:
        """The listed entry of ``path`` (from its folder's listing), or ``None``."""
        if path.parent == path:
            return None
        try:
            return self._entries(path.parent).get(path.name)
        except OSError:
            return None

    def is_dir(self, path: PurePath) -> bool:
        e = self.entry(path)
        if e is not None:
            return e.is_dir
        try:
            return bool(self._entries(path))
        except OSError:
            return False

    def is_file(self, path: PurePath) -> bool:
        e = self.entry(path)
        return e is not None and not e.is_dir

    def listdir(self, path: PurePath) -> list[PurePath]:
        return [path / name for name in sorted(self._entries(path))]

    def _file(self, path: PurePath) -> Entry:
        e = self.entry(path)
        if e is None or e.is_dir:
            raise RemoteError("no such file")
        return e

    def size(self, path: PurePath) -> int:
        return self._file(path).size

    def identity(self, path: PurePath) -> str:
        e = self._file(path)
        return f"{self.display(path)}|{e.size}|{e.ident}"

    def file_info(self, path: PurePath) -> dict:
        """What a manifest records about a file: size and what identifies its contents."""
        e = self._file(path)
        return {"bytes": e.size, **dict(e.info)}

    # ---- reads ----------------------------------------------------------------------------

    def read(self, path: PurePath, start: int, end: int) -> bytes:
        end = min(end, self.size(path))
        if end <= start:
            return b""
        memo = self._memo(path, start, end) if end - start <= PREFIX_MAX else None
        if memo is not None:
            try:
                return memo.read_bytes()
            except OSError:
                pass
        data = self.read_ranges(path, [(start, end)])[0]
        if memo is not None:
            _write_quietly(memo, data)
        return data

    def read_ranges(self, path: PurePath, ranges: Sequence[tuple[int, int]]) -> list[bytes]:
        entry = self._file(path)
        copy = self._copy(path)
        if copy is not None:
            from .storage import LOCAL

            return LOCAL.read_ranges(copy, ranges)
        for s, e in ranges:
            if not 0 <= s <= e <= entry.size:
                raise RemoteError(f"bytes {s}-{e} are outside the file ({entry.size} bytes)")
        blocks = _blocks([(s, e) for s, e in ranges if e > s])
        got: dict[tuple[int, int], bytes] = {}
        if blocks and not self._honours_range:
            # Until the server has shown it honours Range, one request at a time: a server
            # that answers with the whole file is then read once, not once per block.
            got[blocks[0]] = self._get(path, entry, *blocks[0])
            blocks = blocks[1:]
        if blocks:
            with concurrent.futures.ThreadPoolExecutor(min(WORKERS, len(blocks))) as pool:
                futures = {b: pool.submit(self._get, path, entry, *b) for b in blocks}
                for b, f in futures.items():
                    got[b] = f.result()
        if self._copy(path) is not None:  # a server that ignored Range: the file is here now
            from .storage import LOCAL

            return LOCAL.read_ranges(self._copy(path), ranges)
        ordered = sorted(got.items())
        starts = [b[0][0] for b in ordered]
        return [_assemble(ordered, starts, s, e) for s, e in ranges]

    def _get(self, path: PurePath, entry: Entry, start: int, end: int) -> bytes:
        """Bytes ``[start, end)``, checked, retried; ``b""`` when the server sent the whole
        file instead (it is then a local copy)."""
        if self._copy(path) is not None:
            return b""

        def once() -> bytes:
            self.traffic.add(data_requests=1)
            return self._checked(path, entry, start, end, self._fetch(path, start, end, entry))

        return retrying(once, f"{self.display(path)} bytes {start}-{end - 1}", self.traffic)

    def _checked(self, path: PurePath, entry: Entry, start: int, end: int, answer: Answer) -> bytes:
        """The body of ``answer`` if it is exactly bytes ``[start, end)`` of the file."""
        where = f"asked for bytes {start}-{end - 1} of {entry.size}"
        if answer.status == 206:
            m = _CONTENT_RANGE.fullmatch((answer.content_range or "").strip())
            if not m:
                drain(answer)
                raise Transient(f"HTTP 206 without a valid Content-Range ({where})")
            a, b, total = int(m.group(1)), int(m.group(2)), m.group(3)
            if (a, b + 1) != (start, end) or (total != "*" and int(total) != entry.size):
                drain(answer)
                raise Transient(f"the server sent {answer.content_range!r} ({where})")
            if answer.length is not None and answer.length != end - start:
                drain(answer)
                raise Transient(f"Content-Length {answer.length} ({where})")
            data = self._receive(answer.chunks, end - start + 1)
            if len(data) != end - start:
                raise Transient(f"the body had {len(data)} bytes ({where})")
            self._honours_range = True
            return data
        if answer.status == 200:  # the server ignored Range: this is the whole file
            self._honours_range = False
            if answer.length is not None and answer.length != entry.size:
                drain(answer)
                raise Transient(f"HTTP 200 with Content-Length {answer.length}, the file has "
                                f"{entry.size} bytes")
            if start == 0 and end <= PREFIX_MAX:
                data = self._receive(answer.chunks, end, stop=True)
                if len(data) < end:
                    raise Transient(f"the body ended after {len(data)} bytes ({where})")
                return data[:end]
            self._spill(path, entry, answer.chunks)
            return b""
        drain(answer)
        raise status_error(answer.status, self.display(path))

    def _receive(self, chunks: Iterable[bytes], limit: int, stop: bool = False) -> bytes:
        """The body, at most ``limit`` bytes (``stop``: close once there are that many)."""
        buf = bytearray()
        for chunk in chunks:
            buf += chunk
            self.traffic.add(fetched=len(chunk))
            if len(buf) >= limit and stop:
                break
            if len(buf) > limit:
                break
        close = getattr(chunks, "close", None)
        if close is not None:
            close()
        return bytes(buf)

    # ---- whole files ----------------------------------------------------------------------

    def _spill(self, path: PurePath, entry: Entry, chunks: Iterable[bytes]) -> Path:
        """Stream a whole-file body to a local copy (checked against the listed size)."""
        dest = within(self._copy_path(path), path.name, self.display(path), "file name")
        dest.parent.mkdir(parents=True, exist_ok=True)
        n = 0
        with atomic.writing(dest) as tmp:
            with open(tmp, "wb") as f:
                for chunk in chunks:
                    f.write(chunk)
                    n += len(chunk)
                    self.traffic.add(fetched=len(chunk))
                    if n > entry.size:
                        break
            if n != entry.size:
                raise Transient(f"the whole-file answer had {n} bytes, the file has {entry.size}")
        self._remember(path, dest)
        return dest

    def _download(self, path: PurePath, entry: Entry, dest: Path) -> None:
        """Write the whole file to ``dest`` (subclasses may use their library's own way)."""
        answer = self._fetch(path, 0, None, entry)
        if answer.status not in (200, 206):
            drain(answer)
            raise status_error(answer.status, self.display(path))
        n = 0
        with open(dest, "wb") as f:
            for chunk in answer.chunks:
                f.write(chunk)
                n += len(chunk)
                self.traffic.add(fetched=len(chunk))
        if n != entry.size:
            raise Transient(f"the download had {n} bytes, the file has {entry.size}")

    def local_path(self, path: PurePath) -> Path:
        """A local copy of a whole file (torch pickles) or folder (Distributed Checkpoints),
        downloaded once, its size said first.  Every listed name is checked (:func:`within`)
        before anything is downloaded: a key such as ``run/step-100/../../x`` is refused, never
        followed out of the folder."""
        if self.is_dir(path):
            files = self._walk(path)
            total = sum(self.size(f) for f in files)
            log.info("%s: downloading the whole folder (%s)", self.display(path), human_bytes(total))
            dest = self._copy_path(path)
            for f in files:
                self._whole(f, within(dest, f.relative_to(path).as_posix(), self.display(path),
                                      "object name"), quiet=True)
            return dest
        return self._copy(path) or self._whole(
            path, within(self._copy_path(path), path.name, self.display(path), "file name"))

    def _whole(self, path: PurePath, dest: Path, quiet: bool = False) -> Path:
        entry = self._file(path)
        if dest.is_file() and dest.stat().st_size == entry.size and self.keep_downloads:
            return dest
        if not quiet:
            log.info("%s: downloading the whole file (%s)%s", self.display(path),
                     human_bytes(entry.size), "" if self.keep_downloads else
                     "; it is removed after use (--keep-downloads keeps it)")
        dest.parent.mkdir(parents=True, exist_ok=True)
        with atomic.writing(dest) as tmp:

            def once():
                self.traffic.add(data_requests=1)
                self._download(path, entry, tmp)

            retrying(once, f"download of {self.display(path)}", self.traffic)
        if not quiet:
            self._remember(path, dest)
        return dest

    def _walk(self, folder: PurePath, top: PurePath | None = None) -> list[PurePath]:
        """Every file under ``folder``; a listed name that would lead out of it (``..``) is
        refused before it is listed or read (object stores list such keys as folders)."""
        out = []
        for p in self.listdir(folder):
            within(folder, p.name, self.display(top or folder), "object name")
            out += self._walk(p, top or folder) if self.is_dir(p) else [p]
        return out

    def _copy_path(self, path: PurePath) -> Path:
        """The folder for the local copy of ``path``: under the cache with ``--keep-downloads``
        (found again by the next run, keyed by the file's identity), else in a temporary folder
        removed at exit."""
        ident = self.identity(path) if self.is_file(path) else self.display(path)
        key = hashlib.sha256(ident.encode()).hexdigest()[:24]
        return _downloads_root(self.keep_downloads) / key

    def _copy(self, path: PurePath) -> Path | None:
        with self._lock:
            copy = self._copies.get(path)
        if copy is not None and copy.exists():
            return copy
        if self.keep_downloads:  # kept by an earlier run?
            try:
                dest = within(self._copy_path(path), path.name, self.display(path), "file name")
                if dest.is_file() and dest.stat().st_size == self._file(path).size:
                    self._remember(path, dest)
                    return dest
            except OSError:
                pass
        return None

    def _remember(self, path: PurePath, dest: Path) -> None:
        with self._lock:
            self._copies.pop(path, None)
            self._copies[path] = dest
            if self.keep_downloads:
                return
            while len(self._copies) > KEEP_FALLBACKS:
                _remove(self._copies.pop(next(iter(self._copies))))

    def _memo(self, path: PurePath, start: int, end: int) -> Path | None:
        e = self.entry(path)
        if e is None or not e.ident:
            return None  # nothing says whether it changed: never cached
        key = hashlib.sha256(f"{self.identity(path)}|{start}|{end}".encode()).hexdigest()[:32]
        return cache_root() / "remote" / key[:2] / key


def _blocks(ranges: list[tuple[int, int]]) -> list[tuple[int, int]]:
    """Ranges merged across gaps up to :data:`MERGE_GAP`, then cut into blocks of at most
    :data:`MAX_BLOCK` bytes (fetched in parallel; memory stays bounded by what was asked)."""
    out: list[tuple[int, int]] = []
    for s, e in coalesce(ranges, MERGE_GAP):
        while e - s > MAX_BLOCK:
            out.append((s, s + MAX_BLOCK))
            s += MAX_BLOCK
        out.append((s, e))
    return out


def _assemble(blocks: list[tuple[tuple[int, int], bytes]], starts: list[int], start: int,
              end: int) -> bytes:
    """Bytes ``[start, end)`` from the fetched blocks (sorted by start) that cover them."""
    if end <= start:
        return b""
    i = max(0, bisect.bisect_right(starts, start) - 1)
    parts = []
    while i < len(blocks) and blocks[i][0][0] < end:
        (bs, be), data = blocks[i]
        if be > start:
            parts.append(data[max(start, bs) - bs:min(end, be) - bs])
        i += 1
    return b"".join(parts)


_TEMP: list[Path] = []
_CLEANUPS: list = []


def on_exit(fn):
    """Run ``fn`` (removing this run's downloads) at exit, and from :func:`clean_up_now`."""
    _CLEANUPS.append(fn)
    atexit.register(fn)
    return fn


def clean_up_now() -> None:
    """Remove what this run downloaded only for itself, now: an interrupted run leaves through
    ``os._exit`` (see ``cli.main_entry``), which runs no exit handlers, and left its
    ``layerfilm-downloads-*`` folder behind."""
    for fn in list(_CLEANUPS):
        try:
            fn()
        except Exception:  # noqa: BLE001 - the others are still removed
            pass


def _downloads_root(keep: bool) -> Path:
    if keep:
        return cache_root() / "downloads"
    if not _TEMP:
        _TEMP.append(Path(tempfile.mkdtemp(prefix="layerfilm-downloads-")))
        on_exit(lambda folder=_TEMP[0]: shutil.rmtree(folder, True))
    return _TEMP[0]


def _remove(path: Path) -> None:
    try:
        path.unlink()
    except OSError:
        pass


def _write_quietly(path: Path, data: bytes) -> None:
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic.write_bytes(path, data)
    except OSError:
        pass  # the cache only saves requests


