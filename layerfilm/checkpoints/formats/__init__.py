"""How bytes become tensors: safetensors, torch pickles, sharded indexes, Distributed
Checkpoint folders.  Every reader takes its path and the :class:`Storage` that holds it, and
offers the same small interface (:class:`TensorSource`)."""

from __future__ import annotations

from pathlib import Path, PurePath
from typing import Protocol

import numpy as np

from ...errors import CheckpointError
from ..storage import LOCAL, Storage, coalesce
from .dcp import DcpCheckpoint
from .digests import READ_DIGESTS
from .files import CHECKPOINT_SUFFIXES, HF_WEIGHTS, SAFETENSORS_SUFFIXES, TORCH_SUFFIXES, open_file
from .pickles import TorchFile
from .safetensors import SafetensorsFile
from .sharded import ShardedCheckpoint


class TensorSource(Protocol):
    """What the extract stage needs from one checkpoint.

    ``where`` names it in messages; ``shapes()`` maps floating-point tensor names to shapes;
    ``read(name, index, axis)`` returns the rows (``axis=0``) or columns (``axis=1``, as rows)
    at ``index`` (or the whole tensor) as C-contiguous float32.
    """

    path: PurePath
    where: str
    metadata: dict[str, str]

    def shapes(self) -> dict[str, tuple[int, ...]]: ...

    def read(self, name: str, index: np.ndarray | None = None, axis: int = 0) -> np.ndarray: ...


def open_checkpoint(path: PurePath | str, storage: Storage = LOCAL) -> TensorSource:
    """Open one checkpoint for lazy reading, validating what it can up front.

    ``path`` is a weights file, a sharded checkpoint's ``*.index.json``, a
    Distributed Checkpoint folder or a Hugging Face checkpoint folder.
    """
    path = path if isinstance(path, PurePath) else Path(path)
    if storage.is_dir(path):
        if storage.is_file(path / ".metadata"):
            return DcpCheckpoint(path, storage)
        hf = next((path / n for n in HF_WEIGHTS if storage.is_file(path / n)), None)
        if hf is None:
            raise CheckpointError("not a checkpoint folder (no .metadata, model.safetensors, "
                                  "pytorch_model.bin or *.index.json)", storage.display(path))
        path = hf
    if path.name.endswith(".index.json"):
        return ShardedCheckpoint(path, storage)
    return open_file(path, storage)


def drawn_ranges(ckpt: TensorSource, wanted) -> dict[PurePath, list[tuple[int, int]]] | None:
    """The byte ranges of each file of ``ckpt`` that reading every ``(name, index, axis)`` in
    ``wanted`` touches (safetensors: the header first, then the drawn rows, coalesced), or ``None``
    when the format reads its files whole (torch pickles, Distributed Checkpoints)."""
    if isinstance(ckpt, ShardedCheckpoint):
        out: dict[PurePath, list[tuple[int, int]]] = {}
        for shard in ckpt.shards.values():
            found = drawn_ranges(shard, wanted)
            if found is None:
                return None
            out.update(found)
        return out
    if not isinstance(ckpt, SafetensorsFile):
        return None
    names = ckpt.shapes()
    ranges = []
    for name, index, axis in wanted:
        if name in names:
            ranges += ckpt.byte_ranges(name, index, axis)
    return {ckpt.path: [(0, ckpt.header_bytes)] + coalesce(ranges)}


def read_digests(ckpt: TensorSource) -> dict[PurePath, dict] | None:
    """Each file's digests of what ``ckpt``'s reader fetched when it was told to hash
    (``prefetch(wanted, digest)``: :attr:`SafetensorsFile.read_digest`), keyed as
    :func:`drawn_ranges` keys the same files; ``None`` unless every file has them (a format
    read whole, a shard not hashed)."""
    if isinstance(ckpt, ShardedCheckpoint):
        out: dict[PurePath, dict] = {}
        for shard in ckpt.shards.values():
            found = read_digests(shard)
            if found is None:
                return None
            out.update(found)
        return out
    found = getattr(ckpt, "read_digest", None) if isinstance(ckpt, SafetensorsFile) else None
    return {ckpt.path: found} if found is not None else None


def read_whole_hashed(ckpt: TensorSource, names, digest: str, keep) -> dict[PurePath, dict] | None:
    """Read every tensor of ``names`` that ``ckpt`` holds whole, file by file in file order,
    handing each to ``keep(name, array)``, and hash the bytes on the way:
    each file's digests (keyed and made as :func:`read_digests` makes them for a
    ``prefetch(wanted, digest)`` of the same tensors: ``header_sha256``, ``read_<digest>``,
    ``read_bytes``) -- a run of the model identifies what it read without reading it again.
    Formats read whole (torch pickles, Distributed Checkpoints), and a shard holding a tensor
    the index places in another (its drawn ranges would count it): each tensor handed over,
    ``None`` returned."""
    held = ckpt.shapes()
    names = [n for n in names if n in held]
    files = ([(s, [n for n in names if ckpt.shard_of(n) is s]) for s in ckpt.shards.values()]
             if isinstance(ckpt, ShardedCheckpoint) else [(ckpt, names)])
    stray = isinstance(ckpt, ShardedCheckpoint) and any(
        n in f.shapes() and ckpt.shard_of(n) is not f for f, _ in files for n in names)
    if stray or not all(isinstance(f, SafetensorsFile) for f, _ in files):
        for name in names:
            keep(name, ckpt.read(name))
        return None
    out: dict[PurePath, dict] = {}
    for f, part in files:
        h, n = READ_DIGESTS[digest](), 0
        spans = {name: f.byte_ranges(name) for name in part}
        for name in sorted(part, key=lambda t: (spans[t] or [(-1, -1)])[0]):
            keep(name, f.read_hashed(name, h))
            n += sum(e - s for s, e in spans[name])
        out[f.path] = {"header_sha256": f.header_sha256, f"read_{digest}": h.hexdigest(), "read_bytes": n}
    return out


__all__ = ["CHECKPOINT_SUFFIXES", "HF_WEIGHTS", "READ_DIGESTS", "SAFETENSORS_SUFFIXES", "TORCH_SUFFIXES",
           "TensorSource", "open_file", "open_checkpoint", "DcpCheckpoint", "TorchFile",
           "SafetensorsFile", "ShardedCheckpoint", "drawn_ranges", "read_digests", "read_whole_hashed"]
