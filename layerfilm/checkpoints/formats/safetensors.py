"""Safetensors, read without torch.

The header is validated (size, JSON, dtypes, shapes, offsets) before any tensor data is
touched.  Data then comes as byte ranges from the storage: the rows that are drawn, coalesced
(local files by ``pread``, remote ones by ranged requests, fetched per file in one go).
"""

from __future__ import annotations

import hashlib
import math
import struct
import threading
import weakref
from pathlib import Path, PurePath

import numpy as np

from ...errors import CheckpointError
from ...untrusted import JSONTooDeep, load_json
from ..storage import LOCAL, Storage, coalesced
from .digests import READ_DIGESTS, hash_in_file_order

_MAX_HEADER = 100 * 1024 * 1024
_FIRST_READ = 64 * 1024  # header length + (usually) the whole header in one read
DTYPES = {
    "F64": np.dtype("<f8"),
    "F32": np.dtype("<f4"),
    "F16": np.dtype("<f2"),
    "BF16": np.dtype("<u2"),  # widened to float32 by hand: numpy has no bfloat16
    "I64": np.dtype("<i8"),
    "I32": np.dtype("<i4"),
    "I16": np.dtype("<i2"),
    "I8": np.dtype("i1"),
    "U8": np.dtype("u1"),
    "BOOL": np.dtype("?"),
}
FLOAT_DTYPES = ("F64", "F32", "F16", "BF16")


Entries = dict[str, tuple[str, tuple[int, ...], int]]  # name -> (dtype, shape, data offset or -1)
Shapes = dict[str, tuple[int, ...]]
# The tensor entries of the last few distinct headers (with their data sections' length),
# checked: a run's checkpoints mostly list the same tensors at the same offsets, their
# metadata aside (a loss), and checking 513 entries held the GIL 1.4 ms a file.
_CHECKED: list[tuple[int, dict, Entries, Shapes]] = []
_CHECKED_MAX = 4
_CHECKED_LOCK = threading.Lock()


class _Number(str):
    """A JSON number with a fraction or exponent, kept as its text: never equal to an int (as
    ``1.0`` is to ``1``), so a header that matches a checked one has the same types too."""


def _parse(raw: bytes, data_len: int, where: str) -> tuple[dict[str, str], Entries, Shapes]:
    """A header's metadata, entries and float tensors' shapes, every entry checked against the
    ``data_len``-byte data section (or found equal, as parsed, to the tensors of a header
    checked before, with a data section as long); :class:`CheckpointError` naming ``where``
    for the first entry that is wrong."""
    try:
        header = load_json(raw, parse_float=_Number)
    except JSONTooDeep as e:
        raise CheckpointError(f"corrupt safetensors header ({e})", where) from None
    except ValueError:  # not UTF-8, not JSON
        raise CheckpointError("corrupt safetensors header (not valid JSON)", where) from None
    if not isinstance(header, dict):
        raise CheckpointError("corrupt safetensors header (not a JSON object)", where)
    meta = header.pop("__metadata__", None) or {}
    metadata = {str(k): str(float(v) if isinstance(v, _Number) else v)
                for k, v in meta.items()} if isinstance(meta, dict) else {}
    for length, tensors, entries, shapes in tuple(_CHECKED):
        if length == data_len and tensors == header:
            return metadata, entries, shapes
    entries = {}
    for name, e in header.items():
        try:
            dtype, shape, (begin, end) = e["dtype"], tuple(e["shape"]), e["data_offsets"]
        except (TypeError, KeyError, ValueError):
            raise CheckpointError(f"corrupt safetensors header entry for {name!r}", where) from None
        if dtype not in DTYPES:
            # Unknown dtypes (F8, complex ...) are fine as long as nobody draws them.
            entries[name] = (dtype, shape, -1)
            continue
        if not all(isinstance(d, int) and d >= 0 for d in shape):
            raise CheckpointError(f"tensor {name!r} has an invalid shape {list(shape)}", where)
        nbytes = math.prod(shape) * DTYPES[dtype].itemsize
        if not (isinstance(begin, int) and isinstance(end, int) and 0 <= begin <= end):
            raise CheckpointError(f"tensor {name!r} has invalid data offsets", where)
        if end - begin != nbytes:
            raise CheckpointError(
                f"tensor {name!r} declares {end - begin} bytes but its shape needs {nbytes}", where)
        if end > data_len:
            raise CheckpointError(
                f"truncated: tensor {name!r} ends at byte {end} of a {data_len}-byte data section", where)
        entries[name] = (dtype, shape, begin)
    shapes = {k: shape for k, (dtype, shape, _) in entries.items() if dtype in FLOAT_DTYPES}
    with _CHECKED_LOCK:
        _CHECKED.insert(0, (data_len, header, entries, shapes))
        del _CHECKED[_CHECKED_MAX:]
    return metadata, entries, shapes


class SafetensorsFile:
    """A validated safetensors file.

    ``read(name, index, axis)`` returns a float32 copy of the rows (``axis=0``)
    or columns (``axis=1``) in ``index`` of a 2-D tensor, or of the whole tensor.
    ``read_digest``: what :meth:`prefetch` told to hash made of the bytes it fetched
    (``header_sha256``, ``read_<digest>``, ``read_bytes``), else ``None``.
    """

    def __init__(self, path: PurePath | str, storage: Storage = LOCAL):
        self.path = path if isinstance(path, PurePath) else Path(path)
        self.storage = storage
        self.where = storage.display(self.path)
        try:
            size = storage.size(self.path)
            first = storage.read(self.path, 0, min(size, getattr(storage, "first_read", _FIRST_READ)))
            if len(first) < 8:
                raise CheckpointError(
                    "not a safetensors file: " + ("empty file" if size == 0 else "truncated header"),
                    self.where)
            (n,) = struct.unpack("<Q", first[:8])
            if n > _MAX_HEADER or 8 + n > size:
                raise CheckpointError(
                    f"corrupt safetensors header (declares {n} header bytes, file has {size})", self.where)
            raw = first[8:8 + n]
            if len(raw) < n:
                raw += storage.read(self.path, 8 + len(raw), 8 + n)
        except OSError as e:
            raise CheckpointError(f"cannot read: {e.strerror or e}", self.where) from None
        self.size = size
        self.header_bytes = 8 + n
        self._data_start = 8 + n
        self._fetched: dict[tuple, np.ndarray | bytes] = {}  # raw bytes of drawn rows, fetched ahead
        self._head = first  # the first bytes, read with the header: never fetched again
        self.header_sha256 = hashlib.sha256(first[:8] + raw).hexdigest()
        self.read_digest: dict[str, str | int] | None = None
        self.metadata, self._entries, self._shapes = _parse(raw, size - self._data_start, self.where)

    def shapes(self) -> dict[str, tuple[int, ...]]:
        return dict(self._shapes)

    def itemsize(self, name: str) -> int:
        """Bytes per stored element of tensor ``name`` (for the memory a read will take)."""
        return DTYPES[self._entries[name][0]].itemsize

    def read(self, name: str, index: np.ndarray | None = None, axis: int = 0) -> np.ndarray:
        dtype, shape, _ = self._entries[name]
        if math.prod(shape) == 0:
            arr = np.zeros(shape, dtype=np.float32)
            if index is not None:
                arr = arr[index] if axis == 0 else arr[:, index]
            return np.ascontiguousarray(arr.T) if axis == 1 else arr
        return self._read_ranges(name, index, axis)

    def read_into(self, name: str, index: np.ndarray, axis: int, out: np.ndarray) -> None:
        """:meth:`read` of the rows (or columns) ``index`` of a 2-D tensor, written into
        ``out`` (``(len(index), width)`` float32, C order: a slice of a layer's cloud, so the
        cloud is assembled without a copy)."""
        if out.size:
            self._read_ranges(name, index, axis, out)

    def byte_ranges(self, name: str, index: np.ndarray | None = None, axis: int = 0
                    ) -> list[tuple[int, int]]:
        """The file's ``[start, end)`` byte ranges that :meth:`read` needs: the drawn rows of a
        2-D tensor (coalesced), else the whole tensor (columns are strided through it)."""
        starts, ends = self._ranges(name, index, axis)
        return list(zip(starts.tolist(), ends.tolist()))

    def _ranges(self, name: str, index: np.ndarray | None, axis: int) -> tuple[np.ndarray, np.ndarray]:
        """:meth:`byte_ranges` as two int64 arrays (starts, ends)."""
        return _tensor_ranges(self._entries[name], index, axis, self._data_start)

    def prefetch(self, wanted, digest: str | None = None) -> None:
        """Fetch the byte ranges of every ``(name, index, axis)`` in ``wanted`` held here in
        one go (in parallel or queued together, see the storage) and keep them until read, so
        that :meth:`read` then makes no requests: the film reads the next checkpoint this way
        while it projects the current one.

        ``digest`` (a name in :data:`READ_DIGESTS`): hash the bytes as they come in, so that
        what was read is identified without reading it again (:attr:`read_digest`)."""
        plan = None if self._fetched else _read_plan(self._entries, wanted)
        if plan is None:  # some rows fetched already: what is left, planned here
            plan = _ReadPlan(self._entries, wanted, self._fetched)
        bufs, addresses = self._fetch_laid(plan.layout, self._data_start)
        self._fetched.update(zip(plan.keys, bufs))
        self.read_digest = None
        if digest is not None and not plan.again:
            fast = _kernels_now().xxh3() if digest == "xxh3" and addresses is not None \
                and plan.order is not None else None
            if fast is not None:  # the hash below, in one call free of the GIL
                hexdigest = fast.hexdigest(addresses, plan.layout.sizes, plan.order)
                n = int(plan.layout.sizes.sum())
            else:
                h = READ_DIGESTS[digest]()
                n = hash_in_file_order([(st, en, raw) for (st, en), raw in zip(plan.spans, bufs)], h)
                hexdigest = h.hexdigest()
            self.read_digest = {"header_sha256": self.header_sha256, f"read_{digest}": hexdigest,
                                "read_bytes": n}

    def read_hashed(self, name: str, h) -> np.ndarray:
        """:meth:`read` of tensor ``name`` whole, its bytes fed to the hash ``h`` on the way
        (fetched once for both).  Feeding every tensor of a file in file order hashes what
        hashing its :func:`~layerfilm.checkpoints.drawn_ranges` does."""
        raw = self._fetch_spans([self._ranges(name, None, 0)])[0]
        h.update(raw)
        if len(raw):
            self._fetched[_key(name, None, 0)] = raw  # read takes it from here, not the file
        return self.read(name)

    def _fetch_spans(self, spans: list[tuple[np.ndarray, np.ndarray]]) -> list:
        """Each span's ranges (``(starts, ends)``) fetched and joined, as one buffer each (a
        uint8 array, or ``bytes``), every range of every span requested in one go."""
        return self._fetch_laid(_Layout(spans), 0)[0]

    def _fetch_laid(self, laid: "_Layout", base: int) -> tuple[list, np.ndarray | None]:
        """The buffers of :meth:`_fetch_spans` for spans laid out as ``laid`` (their ranges
        ``base`` bytes on), and where each buffer is (``None`` for ``bytes``).  Local files are
        read straight into the buffers (:meth:`LocalStorage.read_into`)."""
        if not len(laid.sizes):
            return [], None
        read_into = getattr(self.storage, "read_into", None)
        if read_into is None:
            ranges = list(zip((laid.starts + base).tolist(), (laid.ends + base).tolist()))
            chunks, first = self._fetch(ranges), laid.first.tolist()
            return [b"".join(chunks[a:b]) for a, b in zip(first, first[1:])], None
        bufs = [np.empty(n, np.uint8) for n in laid.sizes.tolist()]
        addresses = np.array([b.ctypes.data for b in bufs], np.int64)
        dests = addresses[laid.span_of] + laid.at
        starts, ends = laid.starts + base, laid.ends + base
        head = np.frombuffer(self._head, np.uint8)
        near = np.flatnonzero(starts < len(head))
        if len(near):  # bytes read with the header: copied
            for i in near.tolist():
                n = min(int(ends[i]), len(head)) - int(starts[i])
                at = laid.at[i]
                bufs[laid.span_of[i]][at:at + n] = head[starts[i]:starts[i] + n]
                starts[i] += n
                dests[i] += n
            rest = starts < ends
            starts, ends, dests = starts[rest], ends[rest], dests[rest]
        try:
            short = read_into(self.path, starts, ends, dests)
        except OSError as e:
            raise CheckpointError(f"cannot read: {e.strerror or e}", self.where) from None
        if short is not None:
            i, n = short
            raise CheckpointError(f"short read: bytes {starts[i]}-{ends[i]} came back as {n} bytes", self.where)
        return bufs, addresses

    def _fetch(self, ranges: list[tuple[int, int]]) -> list[bytes]:
        """Each range's bytes, through the storage's ``read_ranges`` (all asked for at once)."""
        head = len(self._head)
        rest = [(max(s, head), e) for s, e in ranges if e > head]
        try:
            fetched = iter(self.storage.read_ranges(self.path, rest) if rest else [])
            chunks = [self._head[s:min(e, head)] + (next(fetched) if e > head else b"")
                      for s, e in ranges]
        except OSError as e:
            raise CheckpointError(f"cannot read: {e.strerror or e}", self.where) from None
        for (s, e), chunk in zip(ranges, chunks):
            if len(chunk) != e - s:
                raise CheckpointError(f"short read: bytes {s}-{e} came back as {len(chunk)} bytes",
                                      self.where)
        return chunks

    def read_layer_into(self, parts: list[tuple[str, np.ndarray, int]], out: np.ndarray) -> None:
        """:meth:`read_into` of each ``(name, index, axis)`` in ``parts`` into the next rows of
        ``out``: a layer's tensors, when all are 2-D 16-bit floats of one kind, widened by one
        kernel call (one hand-over of the GIL a layer, not one a tensor), else one by one."""
        kinds = {self._entries[name][0] for name, _, _ in parts}
        shapes = [self._entries[name][1] for name, _, _ in parts]
        picks = [np.ascontiguousarray(index, dtype=np.int64) for _, index, _ in parts]
        one_kind = len(kinds) == 1 and kinds <= {"F16", "BF16"}
        if not (one_kind and all(len(s) == 2 and min(s) > 0 for s in shapes) and all(len(p) for p in picks)
                and len({p.flags.writeable for p in picks}) == 1):  # else the tuples differ in type
            at = 0
            for name, index, axis in parts:
                self.read_into(name, index, axis, out[at:at + len(index)])
                at += len(index)
            return
        srcs, axes = [], np.empty(len(parts), np.int64)
        for i, ((name, index, axis), shape) in enumerate(zip(parts, shapes)):
            arr = np.frombuffer(self._raw(name, index, axis), np.uint16)
            rows_only = _rows_only(index, axis, shape)
            srcs.append(arr.reshape((len(index), shape[1]) if rows_only else shape))
            axes[i] = 2 if rows_only else axis
        if len({a.flags.writeable for a in srcs}) > 1:  # bytes and arrays: not one type
            srcs = [np.array(a) for a in srcs]
        _kernels_now().widen_layer_kernel(tuple(srcs), tuple(picks), axes, kinds == {"F16"}, out)

    def _raw(self, name: str, index: np.ndarray | None, axis: int):
        """The bytes of a read (``(name, index, axis)``), from what :meth:`prefetch` fetched
        when it was told of them, else fetched now; kept for this file's lifetime when reads
        are not cheap (remote: a reader may ask twice), let go once read when they are."""
        key = _key(name, index, axis)
        cheap = getattr(self.storage, "cheap_reads", False)  # local files: read again if asked
        raw = self._fetched.pop(key, None) if cheap else self._fetched.get(key)
        if raw is None:
            raw = self._fetch_spans([self._ranges(name, index, axis)])[0]
            if not cheap:
                self._fetched[key] = raw
        return raw

    def _read_ranges(self, name: str, index: np.ndarray | None, axis: int,
                     out: np.ndarray | None = None) -> np.ndarray:
        """:meth:`read` through ranged reads (:meth:`_raw`)."""
        dtype, shape, _ = self._entries[name]
        rows_only = _rows_only(index, axis, shape)
        arr = np.frombuffer(self._raw(name, index, axis), dtype=DTYPES[dtype])
        if rows_only:
            return _widen(arr.reshape(len(index), shape[1]), None, 0, dtype, out)
        arr = arr.reshape(shape)
        if index is not None and _is_everything(index, arr.shape[axis]):
            index = None
        if arr.ndim == 2:
            return _widen(arr, index, axis, dtype, out)
        whole = _widen(arr.reshape(1, -1), None, 0, dtype).reshape(shape)  # any other rank
        if index is not None:
            whole = whole[index] if axis == 0 else whole[:, index].T
        return np.ascontiguousarray(whole)


_NO_RANGES = (np.zeros(0, np.int64), np.zeros(0, np.int64))


def _tensor_ranges(entry: tuple[str, tuple[int, ...], int], index: np.ndarray | None, axis: int,
                   base: int) -> tuple[np.ndarray, np.ndarray]:
    """The byte ranges (starts, ends) that reading ``index`` on ``axis`` of the tensor
    ``entry`` needs, ``base`` being where the data section starts: the drawn rows of a 2-D
    tensor (coalesced), else the whole tensor (columns are strided through it)."""
    dtype, shape, begin = entry
    start = base + begin
    nbytes = math.prod(shape) * DTYPES[dtype].itemsize
    if not nbytes:
        return _NO_RANGES
    if not _rows_only(index, axis, shape):
        return np.array([start], np.int64), np.array([start + nbytes], np.int64)
    return _row_ranges(start, shape[1] * DTYPES[dtype].itemsize, index)


class _Layout:
    """Spans of ranges (``(starts, ends)`` each) laid out for one read into one buffer per
    span: every range at once (``starts``, ``ends``), ``first[s]``: span ``s``'s first range,
    ``sizes``: each buffer's bytes, ``span_of``/``at``: each range's buffer and place in it."""

    def __init__(self, spans: list[tuple[np.ndarray, np.ndarray]]):
        counts = np.array([len(st) for st, _ in spans], np.int64)
        self.starts = np.concatenate([st for st, _ in spans] or [_NO_RANGES[0]], dtype=np.int64)
        self.ends = np.concatenate([en for _, en in spans] or [_NO_RANGES[1]], dtype=np.int64)
        self.first = np.zeros(len(spans) + 1, np.int64)
        np.cumsum(counts, out=self.first[1:])
        before = np.zeros(len(self.starts) + 1, np.int64)  # bytes of the ranges before each
        np.cumsum(self.ends - self.starts, out=before[1:])
        self.sizes = before[self.first[1:]] - before[self.first[:-1]]
        self.span_of = np.repeat(np.arange(len(spans)), counts)
        self.at = before[:-1] - before[self.first[:-1]][self.span_of]


class _ReadPlan:
    """What :meth:`SafetensorsFile.prefetch` fetches of ``wanted`` from a file with these
    ``entries``: each tensor's key once, in the order asked (``again``: one was in
    ``fetched`` already), its ranges from the data section's start, laid out; and ``order``,
    the spans in file order where no two overlap (then hashing them one after the other is
    hashing every byte once in file order), else ``None``."""

    def __init__(self, entries: Entries, wanted, fetched: dict | None = None):
        self.entries, self.wanted = entries, wanted  # held: _read_plan's key has their ids
        keys, spans, self.again = {}, [], False  # keys: a dict for its order and its lookups
        for name, index, axis in wanted:
            entry = entries.get(name)
            if entry is not None and entry[2] >= 0 and entry[0] in FLOAT_DTYPES:
                key = _key(name, index, axis)
                if fetched and key in fetched:
                    self.again = True  # fetched before this call: its bytes are not hashed here
                elif key not in keys:
                    keys[key] = None
                    spans.append(_tensor_ranges(entry, index, axis, 0))
        self.keys, self.spans, self.layout = list(keys), spans, _Layout(spans)
        held = [i for i, (st, _) in enumerate(spans) if len(st)]
        firsts = np.array([spans[i][0][0] for i in held], np.int64)
        lasts = np.array([spans[i][1][-1] for i in held], np.int64)
        order = np.argsort(firsts, kind="stable")
        self.order = None if np.any(lasts[order[:-1]] > firsts[order[1:]]) \
            else np.array(held, np.int64)[order]


# A film asks every checkpoint for the same rows, and a run's checkpoints share their checked
# entries (_parse): each plan is made once (its Python took ~5 ms of held GIL a bench file).
_PLANS: dict[tuple, _ReadPlan] = {}


def _read_plan(entries: Entries, wanted) -> _ReadPlan:
    """The :class:`_ReadPlan` of ``wanted`` for ``entries``, kept by their identity (the
    plan holds both, so no other object takes their ids while it is kept)."""
    wanted = list(wanted)
    key = (id(entries), tuple([(name, id(index), axis) for name, index, axis in wanted]))
    plan = _PLANS.get(key)
    if plan is None:
        plan = _ReadPlan(entries, wanted)
        if len(_PLANS) >= 8:
            _PLANS.clear()
        _PLANS[key] = plan
    return plan
# A plan's drawn rows are the same at every checkpoint, and so are their byte ranges within
# each tensor: coalesced once, by numpy, and moved to where the tensor sits in each file (a
# run's headers differ in length with their metadata, and so do its tensors' places).
_ROW_RANGES: dict[tuple, tuple[np.ndarray, np.ndarray]] = {}


def _row_ranges(start: int, row: int, index: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The byte ranges of rows ``index`` (``row`` bytes each) of a tensor at ``start``,
    coalesced where rows follow each other (starts, ends: sorted int64 arrays)."""
    key = (row, _digest(index))
    hit = _ROW_RANGES.get(key)
    if hit is None:
        rows = np.asarray(index, dtype=np.int64)
        hit = coalesced(rows * row, (rows + 1) * row)
        if len(_ROW_RANGES) > 4096:
            _ROW_RANGES.clear()
        _ROW_RANGES[key] = hit
    return hit[0] + start, hit[1] + start


def _key(name: str, index: np.ndarray | None, axis: int) -> tuple:
    if index is None:
        return name, axis, None
    return name, axis, _digest(index)


# A plan's row indexes are the same arrays at every checkpoint: hash each once (by identity,
# while it lives; its entry goes with it).
_DIGESTS: dict[int, tuple[weakref.ref, bytes]] = {}


def _digest(index: np.ndarray) -> bytes:
    hit = _DIGESTS.get(id(index))
    if hit is not None and hit[0]() is index:
        return hit[1]
    digest = hashlib.sha1(np.ascontiguousarray(index, dtype=np.int64).tobytes()).digest()
    try:
        _DIGESTS[id(index)] = (weakref.ref(index, lambda _, k=id(index): _DIGESTS.pop(k, None)), digest)
    except TypeError:  # not weakly referable (a view of a non-array): not remembered
        pass
    return digest


def _rows_only(index: np.ndarray | None, axis: int, shape: tuple[int, ...]) -> bool:
    """Whether reading ``index`` on ``axis`` of a tensor of ``shape`` fetches only the drawn
    rows (some rows of a 2-D tensor), not the whole tensor."""
    return index is not None and axis == 0 and len(shape) == 2 and not _is_everything(index, shape[0])


def _is_everything(index: np.ndarray, n: int) -> bool:
    """Whether a sorted, duplicate-free ``index`` picks all ``n`` entries (no gather needed)."""
    return len(index) == n and (n == 0 or (index[0] == 0 and index[-1] == n - 1))


_ARANGES: dict[int, np.ndarray] = {}  # 0..n-1 for a whole tensor's rows, made once per n


def _all_of(n: int) -> np.ndarray:
    picked = _ARANGES.get(n)
    if picked is None:
        if len(_ARANGES) > 256:
            _ARANGES.clear()
        picked = _ARANGES[n] = np.arange(n)
        picked.flags.writeable = False
    return picked


def _widen(arr: np.ndarray, index: np.ndarray | None, axis: int, dtype: str,
           out: np.ndarray | None = None) -> np.ndarray:
    """Float32 rows, one per point: ``arr``'s rows ``index`` (axis 0; all when ``None``), or
    its columns ``index`` (axis 1), from a 2-D view of the stored dtype -- gathered, widened
    and (for columns) transposed in one pass by a kernel, into ``out`` when given."""
    kernels = _kernels_now()
    picked = _all_of(arr.shape[axis]) if index is None else np.asarray(index, dtype=np.int64)
    if out is None:
        out = np.empty((len(picked), arr.shape[1 - axis]), dtype=np.float32)
    if dtype in ("F16", "BF16"):
        kernels.widen_bits_kernel(arr.view(np.uint16), picked, axis, dtype == "F16", out)
    else:
        kernels.widen_float_kernel(arr, picked, axis, out)
    return out


_kernels = None  # layerfilm._read_kernels, imported at the first read


def _kernels_now():
    global _kernels
    if _kernels is None:
        from ... import _read_kernels as _kernels  # numba only once a tensor is read
    return _kernels
