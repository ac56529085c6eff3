"""The on-disk cache: keyframe layouts (the expensive part of a render) and file digests.

Everything here only ever saves time: an entry that cannot be read or written is ignored.
Where: ``$LAYERFILM_CACHE_DIR``, else ``$XDG_CACHE_HOME/layerfilm``, else ``~/.cache/layerfilm``.
Its size is capped (``$LAYERFILM_CACHE_SIZE``, default 2 GB): when an entry is stored, the
least recently used ones go until the rest fits.  ``layerfilm cache`` shows and clears it.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import numpy as np

from . import __version__, atomic
from .checkpoints.storage import cache_root
from .plan import Plan


def cache_dir() -> Path:
    """Where the cache lives (see the module docstring)."""
    return cache_root()


DEFAULT_SIZE = 2 * 10**9
_UNITS = {"": 1, "K": 10**3, "M": 10**6, "G": 10**9, "T": 10**12}


def size_cap() -> int:
    """The cache's size cap in bytes: ``$LAYERFILM_CACHE_SIZE`` (``500M``, ``2G``, ``10GB``, a
    number of bytes; ``0`` keeps nothing), else 2 GB; an unreadable value means the default."""
    import re

    text = os.environ.get("LAYERFILM_CACHE_SIZE", "").strip().upper().removesuffix("B")
    m = re.fullmatch(r"(\d+(?:\.\d+)?)\s*([KMGT]?)", text)
    return int(float(m.group(1)) * _UNITS[m.group(2)]) if m else DEFAULT_SIZE


def entries() -> list[tuple[Path, int, float]]:
    """Every cached file as ``(path, bytes, last used)``, least recently used first."""
    out = []
    for path in cache_dir().rglob("*"):
        try:
            if path.is_file() and not path.name.endswith(".part"):
                st = path.stat()
                out.append((path, st.st_size, st.st_mtime))
        except OSError:
            continue
    return sorted(out, key=lambda e: e[2])


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
    """Empty the cache; returns (files, bytes) removed."""
    found = entries()
    for path, _, _ in found:
        path.unlink(missing_ok=True)
    return len(found), sum(size for _, size, _ in found)


def _used(path: Path) -> None:
    """Mark an entry as just used (least-recently-used order is by modification time, set
    from the precise clock: the file system's own stamps may tie within a few milliseconds)."""
    import time

    try:
        now = time.time_ns()
        os.utime(path, ns=(now, now))
    except OSError:
        pass


def layout_key(plan: Plan, options: str) -> str:
    """Checkpoint identities (path, size, mtime, step of every file) + everything that shapes
    a layout (``options``: projection, seed, ...; the version; each panel's points)."""
    h = hashlib.sha256()
    for ref in plan.refs:
        h.update(f"{ref.identity()}\n".encode())
    h.update(f"{__version__}|{options}\n".encode())
    for layer in plan.layers:
        for src in layer.sources:
            h.update(f"{layer.label}|{layer.dim}|{src.tensor}|{src.axis}|".encode())
            h.update(np.ascontiguousarray(src.index, dtype=np.int64).tobytes())
    return h.hexdigest()[:32]


def _layout_path(plan: Plan, options: str) -> Path:
    return cache_dir() / f"layouts-{layout_key(plan, options)}.npz"


def load_layouts(plan: Plan, options: str) -> tuple[np.ndarray, int, str] | None:
    """``(P, nonfinite, info)`` cached for these options, or ``None``: P is (K, N, 2) float32,
    ``info`` the text stored with it."""
    path = _layout_path(plan, options)
    try:
        with np.load(path) as z:
            P, nonfinite, info = z["P"], int(z["nonfinite"]), str(z["info"])
    except (OSError, ValueError, KeyError):
        return None
    if P.shape != (len(plan.refs), plan.starts[-1], 2):
        return None
    _used(path)
    return P, nonfinite, info


def store_layouts(plan: Plan, options: str, P: np.ndarray, nonfinite: int, info: str = "") -> None:
    """Cache keyframe layouts (atomically; silently not when the cache cannot be written)."""
    path = _layout_path(plan, options)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.part")
        with open(tmp, "wb") as f:
            np.savez(f, P=P, nonfinite=nonfinite, info=np.array(info))
        os.replace(tmp, path)
        _used(path)
        evict(keep=path)
    except OSError:
        pass


def load_arrays(kind: str, plan: Plan) -> dict[str, np.ndarray] | None:
    """Arrays cached by :func:`store_arrays` under ``kind`` for this plan's checkpoints and
    panels, or ``None``."""
    try:
        path = cache_dir() / f"{kind}-{layout_key(plan, kind)}.npz"
        with np.load(path) as z:
            found = {name: z[name] for name in z.files}
    except (OSError, ValueError, KeyError):
        return None
    _used(path)
    return found


def store_arrays(kind: str, plan: Plan, **arrays: np.ndarray) -> None:
    """Cache measurements of a plan's checkpoints and panels (e.g. each layer's drift) beside
    the layouts, atomically; silently not when the cache cannot be written."""
    path = cache_dir() / f"{kind}-{layout_key(plan, kind)}.npz"
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.part")
        with open(tmp, "wb") as f:
            np.savez(f, **arrays)
        os.replace(tmp, path)
        _used(path)
        evict(keep=path)
    except OSError:
        pass


def _digest_memo(key: str) -> Path:
    return cache_dir() / "sha256" / key


def sha256_file(path: Path, use_cache: bool = True) -> str:
    """The file's sha256 (hex).  Remembered in the cache folder by resolved path, size and
    mtime, so a batch that renders one run to several formats reads it once."""
    st = path.stat()
    key = hashlib.sha256(f"{path.resolve()}|{st.st_size}|{st.st_mtime_ns}".encode()).hexdigest()[:32]
    memo = _digest_memo(key)
    if use_cache:
        try:
            digest = memo.read_text().strip()
            if len(digest) == 64:
                _used(memo)
                return digest
        except OSError:
            pass
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    digest = h.hexdigest()
    if use_cache:
        try:
            memo.parent.mkdir(parents=True, exist_ok=True)
            atomic.write_bytes(memo, digest.encode())
        except OSError:
            pass  # the memo only saves time
    return digest
