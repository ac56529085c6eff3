"""Hugging Face sharded checkpoints: ``*.index.json`` whose ``weight_map`` names the shard
(safetensors or torch pickle) holding each tensor."""

from __future__ import annotations

from pathlib import Path, PurePath

import numpy as np

from ...errors import CheckpointError
from ...untrusted import JSONTooDeep, load_json, within
from ..storage import LOCAL, Storage
from .files import open_file


class ShardedCheckpoint:
    """Every shard is opened (and so validated) up front; tensors are read from their shard
    on demand."""

    def __init__(self, index: PurePath | str, storage: Storage = LOCAL):
        self.path = index if isinstance(index, PurePath) else Path(index)
        self.where = storage.display(self.path)
        try:
            raw = storage.read(self.path, 0, storage.size(self.path))
        except OSError as e:
            raise CheckpointError(f"cannot read: {e.strerror or e}", self.where) from None
        try:
            weight_map = load_json(raw)["weight_map"]
        except JSONTooDeep as e:
            raise CheckpointError(f"not a sharded-checkpoint index ({e})", self.where) from None
        except (ValueError, KeyError, TypeError):
            raise CheckpointError("not a sharded-checkpoint index (no valid JSON 'weight_map')",
                                  self.where) from None
        if not isinstance(weight_map, dict) or not weight_map:
            raise CheckpointError("its 'weight_map' is empty or not a JSON object", self.where)
        self.metadata: dict[str, str] = {}
        shards = {}
        for shard in sorted(set(map(str, weight_map.values()))):
            p = within(self.path.parent, shard, self.where, "shard")
            if PurePath(shard).name != shard or shard.startswith("."):
                raise CheckpointError(f"the index names a shard outside its folder: {shard!r}", self.where)
            if not storage.is_file(p):
                raise CheckpointError(f"shard {shard} listed in the index is missing", self.where)
            shards[shard] = open_file(p, storage)
        self.shards = shards
        self._where = {}
        self._shapes: dict[str, tuple[int, ...]] = {}
        for shard, source in shards.items():
            for name, shape in source.shapes().items():
                if weight_map.get(name) == shard:
                    self._where[name] = source
                    self._shapes[name] = shape

    def shapes(self) -> dict[str, tuple[int, ...]]:
        return dict(self._shapes)

    def shard_of(self, name: str):
        """The opened shard the index places tensor ``name`` in."""
        return self._where[name]

    def read(self, name: str, index: np.ndarray | None = None, axis: int = 0) -> np.ndarray:
        return self._where[name].read(name, index, axis)

    def itemsize(self, name: str) -> int:
        """Bytes per stored element of ``name``, as its shard says (4 when it does not)."""
        return getattr(self._where[name], "itemsize", lambda _: 4)(name)

    def read_into(self, name: str, index: np.ndarray, axis: int, out: np.ndarray) -> None:
        source = self._where[name]
        if hasattr(source, "read_into"):
            source.read_into(name, index, axis, out)
        else:
            out[...] = source.read(name, index, axis)

    def prefetch(self, wanted, digest: str | None = None) -> None:
        """Each shard that can fetches its part of ``wanted`` in one go (see
        :meth:`SafetensorsFile.prefetch`), hashing it with ``digest``."""
        for source in self.shards.values():
            hint = getattr(source, "prefetch", None)
            if hint is not None:
                part = [w for w in wanted if self._where.get(w[0]) is source]
                # A shard holding a tensor that the index places in another shard: what the
                # film reads of it is not all that a manifest counts (drawn_ranges), no digest.
                held = source.shapes()
                whole = digest is not None and len(part) == sum(w[0] in held for w in wanted)
                hint(part, digest if whole else None)
