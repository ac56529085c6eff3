"""The on-disk cache: keyframe layouts (the expensive part of a render) and file digests.

Everything here only ever saves time: an entry that cannot be read or written is ignored.
Where: ``$LAYERFILM_CACHE_DIR``, else ``$XDG_CACHE_HOME/layerfilm``, else ``~/.cache/layerfilm``.
Its size is capped (``$LAYERFILM_CACHE_SIZE``, default 2 GB): when an entry is stored, the
least recently used ones go until the rest fits.  ``layerfilm cache`` shows and clears it.

Every entry carries a checksum of its own bytes (:func:`write_entry`): a truncated, emptied or
altered entry is a miss, removed where it is found, never a failed render or a stale picture.
Entries are written with :mod:`layerfilm.atomic`; a write cut short by a full disk removes its
temporary file, and those a killed process left behind are swept once they are an hour old.
"""

from __future__ import annotations

import hashlib
import hmac
import io
import os
import time
import zipfile
from pathlib import Path
from typing import Callable

import numpy as np

from . import __version__, atomic
from .checkpoints.storage import cache_root
from .plan import Plan

Warn = Callable[[str], None]


def cache_dir() -> Path:
    """Where the cache lives (see the module docstring)."""
    return cache_root()


DEFAULT_SIZE = 2 * 10**9
_UNITS = {"": 1, "K": 10**3, "M": 10**6, "G": 10**9, "T": 10**12}
STALE_PART_S = 3600  # a temporary file untouched this long belongs to no live writer


def size_cap() -> int:
    """The cache's size cap in bytes: ``$LAYERFILM_CACHE_SIZE`` (``500M``, ``2G``, ``10GB``, a
    number of bytes; ``0`` keeps nothing), else 2 GB; an unreadable value means the default."""
    import re

    text = os.environ.get("LAYERFILM_CACHE_SIZE", "").strip().upper().removesuffix("B")
    m = re.fullmatch(r"(\d+(?:\.\d+)?)\s*([KMGT]?)", text)
    return int(float(m.group(1)) * _UNITS[m.group(2)]) if m else DEFAULT_SIZE


def _files(parts: bool) -> list[tuple[Path, int, float]]:
    """``(path, bytes, last used)`` of every finished entry, or (``parts``) of every unfinished
    write (``*.part``), least recently used first."""
    out = []
    for path in cache_dir().rglob("*"):
        try:
            if path.is_file() and path.name.endswith(".part") == parts:
                st = path.stat()
                out.append((path, st.st_size, st.st_mtime))
        except OSError:
            continue
    return sorted(out, key=lambda e: e[2])


def entries() -> list[tuple[Path, int, float]]:
    """Every cached file as ``(path, bytes, last used)``, least recently used first."""
    return _files(parts=False)


def leftovers() -> list[tuple[Path, int, float]]:
    """Temporary files of writes that never finished (a killed process, a full disk on another
    machine sharing the folder), as :func:`entries` lists them."""
    return _files(parts=True)


def sweep(older_than: float = STALE_PART_S) -> list[Path]:
    """Remove leftover temporary files not written to for ``older_than`` seconds (a live
    writer touches its file all the time; ``0``: every one); returns what was removed."""
    removed = []
    for path, _, mtime in leftovers():
        if time.time() - mtime >= older_than:
            try:
                path.unlink()
            except OSError:
                continue
            removed.append(path)
    return removed


def evict(cap: int | None = None, keep: Path | None = None) -> list[Path]:
    """Remove the least recently used entries until the cache holds at most ``cap`` bytes
    (default :func:`size_cap`), never ``keep``; returns what was removed."""
    cap = size_cap() if cap is None else cap
    found = entries()
    total = sum(size for _, size, _ in found)
    removed = []
    for path, size, _ in found:
        if total <= cap:
            break
        if path == keep:
            continue
        try:
            path.unlink()
        except OSError:
            continue
        total -= size
        removed.append(path)
    return removed


def clear() -> tuple[int, int]:
    """Empty the cache, unfinished writes included; returns (files, bytes) removed."""
    found = entries() + leftovers()
    for path, _, _ in found:
        path.unlink(missing_ok=True)
    return len(found), sum(size for _, size, _ in found)


def _used(path: Path) -> None:
    """Mark an entry as just used (least-recently-used order is by modification time, set
    from the precise clock: the file system's own stamps may tie within a few milliseconds)."""
    try:
        now = time.time_ns()
        os.utime(path, ns=(now, now))
    except OSError:
        pass


# An entry is MAGIC + blake2b(payload) + payload: the checksum travels with the bytes it
# covers, so any damage to the file (cut short, emptied, one byte flipped) is seen on reading.
_MAGIC = b"layerfilm cache 1\n"
_DIGEST = 32


def _checksum(payload) -> bytes:
    return hashlib.blake2b(payload, digest_size=_DIGEST).digest()


def write_entry(path: Path, payload: bytes) -> None:
    """Store ``payload`` at ``path`` with its checksum, atomically (``OSError`` when it cannot
    be written: nothing is left behind then, not even a temporary file)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic.write_bytes(path, _MAGIC + _checksum(payload) + payload)


def read_entry(path: Path, warn: Warn | None = None) -> memoryview | None:
    """The payload stored at ``path`` by :func:`write_entry`, or ``None``: none there, or a
    damaged one, which is removed (it would fail the same way on every run) and reported to
    ``warn``."""
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        return None
    except OSError as e:
        discard(path, f"cannot be read ({e.strerror or e})", warn)
        return None
    head = len(_MAGIC) + _DIGEST
    body = memoryview(raw)[head:]
    if len(raw) < head or not raw.startswith(_MAGIC):
        discard(path, "truncated or not a cache entry", warn)
        return None
    if not hmac.compare_digest(raw[len(_MAGIC):head], _checksum(body)):
        discard(path, "checksum mismatch", warn)
        return None
    return body


def discard(path: Path, why: str, warn: Warn | None = None) -> None:
    """Remove a damaged entry, saying so (one line) to ``warn``."""
    try:
        path.unlink(missing_ok=True)
    except OSError:
        pass
    if warn is not None:
        warn(f"{path}: damaged cache entry ({why}), removed; computing it again")


def _arrays_payload(**arrays) -> bytes:
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    return buf.getvalue()


def _load_arrays(path: Path, warn: Warn | None) -> dict[str, np.ndarray] | None:
    """The arrays of an entry written by :func:`_store`, or ``None`` (a miss); never unpickles."""
    payload = read_entry(path, warn)
    if payload is None:
        return None
    try:
        with np.load(io.BytesIO(payload), allow_pickle=False) as z:
            return {name: z[name] for name in z.files}
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile) as e:
        discard(path, f"unreadable arrays: {type(e).__name__}", warn)
        return None


def _store(path: Path, **arrays) -> str | None:
    """Store arrays as an entry, then sweep and evict; ``None`` when stored, else why not (one
    line: the cache only saves time, so a full disk is never a failed render)."""
    try:
        write_entry(path, _arrays_payload(**arrays))
    except OSError as e:
        return f"{path.parent}: {e.strerror or e}"
    _used(path)
    sweep()
    evict(keep=path)
    return None


# What the layout and drift code computes, in the keys of their entries: raised whenever a
# change makes other layouts or numbers from the same checkpoints, so that no render reuses
# what older code computed (2: every tracked keyframe's plane checked, issue 24; 3: a first
# keyframe's axes turned by a fixed rule, ``project.orient``).
LAYOUTS = 3


def layout_key(plan: Plan, options: str) -> str:
    """Checkpoint identities (path, size, mtime, step of every file, as taken when the plan was
    made: before any of their data was read) + everything that shapes a layout (``options``:
    projection, seed, ...; the version and :data:`LAYOUTS`; each panel's points)."""
    h = hashlib.sha256()
    for k in range(len(plan.refs)):
        h.update(f"{plan.identity(k)}\n".encode())
    h.update(f"{__version__}|{LAYOUTS}|{options}\n".encode())
    _panels_key(h, plan)
    return h.hexdigest()[:32]


def _panels_key(h, plan: Plan) -> None:
    if plan.probe is not None:  # hidden states: the probe, model config and tokenizer decide them
        h.update(f"{plan.probe.key}\n".encode())
    for layer in plan.layers:
        for src in layer.sources:
            h.update(f"{layer.label}|{layer.dim}|{src.tensor}|{src.axis}|".encode())
            h.update(np.ascontiguousarray(src.index, dtype=np.int64).tobytes())


def chunk_key(plan: Plan, options: str, chunk: range) -> str:
    """:func:`layout_key` of one run of keyframes (``chunk``, laid out on its own; see
    ``layouts.chunks``): the identities of its checkpoints and of the one before it (whose
    clouds the change into the chunk is measured from), where it sits in the film, the
    options and the panels' points.  A film that grows by a checkpoint finds every whole
    chunk before its last one here."""
    h = hashlib.sha256()
    for k in range(max(chunk.start - 1, 0), chunk.stop):
        h.update(f"{k}|{plan.identity(k)}\n".encode())
    h.update(f"{__version__}|{LAYOUTS}|{options}|{chunk.start}:{chunk.stop}\n".encode())
    _panels_key(h, plan)
    return h.hexdigest()[:32]


def load_chunk(plan: Plan, options: str, chunk: range, warn: Warn | None = None
               ) -> dict[str, np.ndarray] | None:
    """The arrays :func:`store_chunk` kept for this chunk, or ``None``."""
    path = cache_dir() / f"chunk-{chunk_key(plan, options, chunk)}.lfc"
    found = _load_arrays(path, warn)
    if found is not None:
        _used(path)
    return found


def drop_chunk(plan: Plan, options: str, chunk: range) -> None:
    """Remove a chunk's entry (one that a longer run of its keyframes supersedes)."""
    try:
        (cache_dir() / f"chunk-{chunk_key(plan, options, chunk)}.lfc").unlink(missing_ok=True)
    except OSError:
        pass


def store_chunk(plan: Plan, options: str, chunk: range, **arrays: np.ndarray) -> str | None:
    """Cache one chunk's layouts (and what its projection did, its drift); ``None`` when
    stored, else why not (see :func:`_store`)."""
    return _store(cache_dir() / f"chunk-{chunk_key(plan, options, chunk)}.lfc", **arrays)


def _entry_path(kind: str, plan: Plan, options: str) -> Path:
    return cache_dir() / f"{kind}-{layout_key(plan, options)}.lfc"


def load_layouts(plan: Plan, options: str, warn: Warn | None = None
                 ) -> tuple[np.ndarray, int, str] | None:
    """``(P, nonfinite, info)`` cached for these options, or ``None``: P is (K, N, 2) float32,
    ``info`` the text stored with it.  A damaged entry is removed and reported to ``warn``."""
    path = _entry_path("layouts", plan, options)
    found = _load_arrays(path, warn)
    if found is None:
        return None
    try:
        P, nonfinite, info = found["P"], int(found["nonfinite"]), str(found["info"])
    except (KeyError, TypeError, ValueError):
        discard(path, "not a layout entry", warn)
        return None
    if P.shape != (len(plan.refs), plan.starts[-1], 2):
        discard(path, f"layouts of shape {P.shape}", warn)
        return None
    _used(path)
    return P, nonfinite, info


def store_layouts(plan: Plan, options: str, P: np.ndarray, nonfinite: int, info: str = ""
                  ) -> str | None:
    """Cache keyframe layouts; ``None`` when stored, else why not (see :func:`_store`)."""
    return _store(_entry_path("layouts", plan, options), P=P, nonfinite=nonfinite,
                  info=np.array(info))


def load_arrays(kind: str, plan: Plan, warn: Warn | None = None) -> dict[str, np.ndarray] | None:
    """Arrays cached by :func:`store_arrays` under ``kind`` for this plan's checkpoints and
    panels, or ``None``."""
    path = _entry_path(kind, plan, kind)
    found = _load_arrays(path, warn)
    if found is not None:
        _used(path)
    return found


def store_arrays(kind: str, plan: Plan, **arrays: np.ndarray) -> str | None:
    """Cache measurements of a plan's checkpoints and panels (e.g. each layer's drift) beside
    the layouts; ``None`` when stored, else why not (see :func:`_store`)."""
    return _store(_entry_path(kind, plan, kind), **arrays)


def keep(plan: Plan, store: Callable[[], str | None]) -> str | None:
    """Store (``store()``) what was computed from the plan's checkpoints, unless one of their
    files changed since the plan took its identity: what was read of it may be old bytes, new
    bytes or a mix, and the entry's key names the old ones.  ``None`` when stored, else why
    not (one line naming the file or the cache folder)."""
    changed = plan.changed()
    if changed:
        more = f" (and {len(changed) - 1} more)" if len(changed) > 1 else ""
        return f"{changed[0]}{more} changed while it was read"
    return store()


def _digest_memo(key: str) -> Path:
    return cache_dir() / "sha256" / key


def sha256_file(path: Path, use_cache: bool = True) -> str:
    """The file's sha256 (hex).  Remembered in the cache folder by resolved path, size and
    mtime, so a batch that renders one run to several formats reads it once; remembered only
    when the file kept that size and time while it was read (else it would be the digest of
    other bytes than the key says)."""
    with open(path, "rb") as f:
        before = os.fstat(f.fileno())
        key = hashlib.sha256(f"{path.resolve()}|{before.st_size}|{before.st_mtime_ns}".encode()
                             ).hexdigest()[:32]
        memo = _digest_memo(key)
        if use_cache:
            found = read_entry(memo)
            if found is not None and len(found) == 64:
                _used(memo)
                return bytes(found).decode()
        h = hashlib.sha256()
        while chunk := f.read(1 << 20):
            h.update(chunk)
        after = os.fstat(f.fileno())
    digest = h.hexdigest()
    if use_cache and (after.st_size, after.st_mtime_ns) == (before.st_size, before.st_mtime_ns):
        try:
            write_entry(memo, digest.encode())
        except OSError:
            pass  # the memo only saves time
    return digest

