"""The digests of what a film read (``read_<name>`` in its manifest), and how the bytes of
several reads are fed to one: every byte once, in file order."""

from __future__ import annotations

import hashlib

import numpy as np


def _xxh3():
    import xxhash

    return xxhash.xxh3_128()


# The digests of what a film read that manifests record (``read_<name>``): XXH3-128 (from the
# xxhash package, fifteen times sha256's speed here), and the sha256 older manifests recorded.
READ_DIGESTS = {"xxh3": _xxh3, "sha256": hashlib.sha256}


def hash_in_file_order(parts: list[tuple[np.ndarray, np.ndarray, bytes]], h) -> int:
    """Feed ``h`` every byte the ranges of ``parts`` cover, once each, in file order, and
    return how many: what hashing the coalesced ranges one after the other does
    (:func:`~layerfilm.checkpoints.drawn_ranges`).  ``parts``: per tensor read, its ranges
    (starts, ends: sorted, disjoint) and their bytes joined, in the order they were asked for."""
    parts = sorted((p for p in parts if len(p[0])), key=lambda p: int(p[0][0]))
    if all(a[1][-1] <= b[0][0] for a, b in zip(parts, parts[1:])):
        for _, _, raw in parts:  # the usual case: tensors apart, each one's rows in order
            h.update(raw)
        return sum(len(raw) for _, _, raw in parts)
    pieces = []  # ranges of two reads overlap (rows and columns of one tensor): range by range
    for starts, ends, raw in parts:
        view, at = memoryview(raw), 0
        for s, e in zip(starts.tolist(), ends.tolist()):
            pieces.append((s, e, view[at:at + e - s]))
            at += e - s
    pieces.sort(key=lambda p: (p[0], p[1]))
    done = total = 0
    for s, e, view in pieces:
        if e > done:
            piece = view[max(0, done - s):]
            h.update(piece)
            total += len(piece)
            done = e
    return total
