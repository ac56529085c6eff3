"""The on-disk cache: keyframe layouts (the expensive part of a render) and file digests.

Everything here only ever saves time: an entry that cannot be read or written is ignored.
Where: ``$LAYERFILM_CACHE_DIR``, else ``$XDG_CACHE_HOME/layerfilm``, else ``~/.cache/layerfilm``.
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


def layout_key(plan: Plan, projection: str, seed: int) -> str:
    """Checkpoint identities (path, size, mtime, step of every file) + everything that shapes
    a layout (projection, seed, version, each panel's points)."""
    h = hashlib.sha256()
    for ref in plan.refs:
        h.update(f"{ref.identity()}\n".encode())
    h.update(f"{__version__}|{projection}|{seed}\n".encode())
    for layer in plan.layers:
        for src in layer.sources:
            h.update(f"{layer.label}|{layer.dim}|{src.tensor}|{src.axis}|".encode())
            h.update(np.ascontiguousarray(src.index, dtype=np.int64).tobytes())
    return h.hexdigest()[:32]


def _layout_path(plan: Plan, projection: str, seed: int) -> Path:
    return cache_dir() / f"layouts-{layout_key(plan, projection, seed)}.npz"


def load_layouts(plan: Plan, projection: str, seed: int) -> tuple[np.ndarray, int] | None:
    """``(P, nonfinite)`` cached for these options, or ``None``: P is (K, N, 2) float32."""
    try:
        with np.load(_layout_path(plan, projection, seed)) as z:
            P, nonfinite = z["P"], int(z["nonfinite"])
    except (OSError, ValueError, KeyError):
        return None
    return (P, nonfinite) if P.shape == (len(plan.refs), plan.starts[-1], 2) else None


def store_layouts(plan: Plan, projection: str, seed: int, P: np.ndarray, nonfinite: int) -> None:
    """Cache keyframe layouts (atomically; silently not when the cache cannot be written)."""
    path = _layout_path(plan, projection, seed)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.part")
        with open(tmp, "wb") as f:
            np.savez(f, P=P, nonfinite=nonfinite)
        os.replace(tmp, path)
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
