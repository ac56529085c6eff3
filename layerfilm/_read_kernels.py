"""The numba kernels that turn a checkpoint's stored bytes into float32 point clouds: fp16
and bf16 bit patterns widened, drawn rows gathered and drawn columns transposed, in one pass
each; every kernel beside its numpy twin, which tests compare it to.  (Split from
:mod:`layerfilm._kernels`, whose conventions they follow.)"""

from __future__ import annotations

import numpy as np
from numba import types
from numba.extending import intrinsic

from ._kernels import ngjit


# --- fp16 -> fp32 ------------------------------------------------------------------------------
# numpy converts half floats one value at a time in software (~3.4 ns each here); most training
# checkpoints are fp16.  This is the exact bit-level conversion, in three loops the compiler
# vectorises: shift sign-less bits into place, rescale by 2**112 (which also turns fp16
# subnormals into the right float32 normals), then restore Inf/NaN exponents and the sign.  The
# widen kernels below do the same arithmetic value by value (a 256 KB table of every pattern,
# looked up instead, fell out of cache between checkpoints).

_TWO_POW_112 = np.float32(2.0 ** 112)


@ngjit
def half_to_float_kernel(src, out):
    """src: (a, b) uint16 bit patterns of IEEE binary16, any strides; out: (a, b) float32, C order."""
    a, b = src.shape
    flat = out.reshape(a * b)
    bits = flat.view(np.uint32)
    for i in range(a):
        for j in range(b):
            bits[i * b + j] = (np.uint32(src[i, j]) & np.uint32(0x7FFF)) << np.uint32(13)
    for i in range(a * b):
        flat[i] *= _TWO_POW_112
    for i in range(a):
        for j in range(b):
            h = np.uint32(src[i, j])
            v = bits[i * b + j] | ((h & np.uint32(0x8000)) << np.uint32(16))
            if (h & np.uint32(0x7C00)) == np.uint32(0x7C00):
                v |= np.uint32(0x7F800000)
            bits[i * b + j] = v


def half_to_float_numpy(src):
    """The numpy twin of :func:`half_to_float_kernel`."""
    return np.asarray(src).view(np.float16).astype(np.float32)


# --- drawn rows or columns -> float32 rows ----------------------------------------------------
# A drawn tensor arrives as the bytes of its stored dtype; the film wants one float32 row per
# point.  One pass gathers (the drawn rows, or the drawn columns of a tensor read whole), widens
# and, for columns, transposes in blocks of rows that stay in cache.  Measured against numpy's
# fancy index + conversion + transpose: 3.0-3.7x on column-drawn tensors, 3.1x on bf16 rows.
# Blocks of 8 rows, not 16: a block of a wide tensor then stays in the nearer caches (2,000
# columns drawn of 768 x 3,072: fp16 6.0 -> 3.4 ms, fp32 5.0 -> 3.6 ms; 2,048 x 5,632 fp16
# 16.5 -> 14.7 ms; 128 x 512 fp16 within noise).

_ROWS = 8  # rows of the source per block of a column gather


@intrinsic
def _as_f32(typingctx, x):
    """The float32 whose bits are the uint32 ``x``."""
    return types.float32(types.uint32), lambda ctx, builder, sig, args: builder.bitcast(
        args[0], ctx.get_value_type(types.float32))


@intrinsic
def _as_u32(typingctx, x):
    """The bits of the float32 ``x``, as a uint32."""
    return types.uint32(types.float32), lambda ctx, builder, sig, args: builder.bitcast(
        args[0], ctx.get_value_type(types.uint32))


@ngjit
def _half_bits(h):
    """The float32 bits of the binary16 bits ``h`` (uint32): :func:`half_to_float_kernel`'s
    arithmetic on one value (the same bits, shown for every pattern), without a branch, so
    the loops calling it vectorise: an exponent of all ones (Inf/NaN) is the one for which
    adding 0x0400 carries into bit 15 (0.26 ns a value in a plain loop; 0.73 with that
    branch written as an ``if``, which the compiler left scalar)."""
    v = _as_u32(_as_f32((h & np.uint32(0x7FFF)) << np.uint32(13)) * _TWO_POW_112)
    top = ((h & np.uint32(0x7C00)) + np.uint32(0x0400)) >> np.uint32(15)
    return v | ((h & np.uint32(0x8000)) << np.uint32(16)) | (top * np.uint32(0x7F800000))


@ngjit
def widen_bits_kernel(src, index, axis, half, out):
    """``out[r]`` = row ``index[r]`` (axis 0) or column ``index[r]`` (axis 1) of ``src`` as
    float32.  src: (n, d) uint16 bit patterns -- IEEE binary16 (``half``) or bfloat16 (the top
    half of a float32).  Columns: blocks of source rows are widened whole, then transposed."""
    n, d = src.shape
    m = index.shape[0]
    bits = out.view(np.uint32)
    if axis == 0:  # a loop per kind, unsigned indices: they vectorise
        for r in range(m):
            row, to = src[index[r]], bits[r]
            if half:
                for j in range(np.uint64(d)):
                    to[j] = _half_bits(np.uint32(row[j]))
            else:
                for j in range(np.uint64(d)):
                    to[j] = np.uint32(row[j]) << np.uint32(16)
        return
    block = np.empty((_ROWS, d), np.uint32)
    for i0 in range(0, n, _ROWS):
        i1 = min(i0 + _ROWS, n)
        for i in range(i0, i1):
            for j in range(d):
                h = np.uint32(src[i, j])
                block[i - i0, j] = _half_bits(h) if half else h << np.uint32(16)
        for r in range(m):
            j = index[r]
            for i in range(i0, i1):
                bits[r, i] = block[i - i0, j]


@ngjit
def widen_layer_kernel(srcs, picks, axes, half, out):
    """:func:`widen_bits_kernel` of each source in turn (``srcs``, ``picks``, ``axes``:
    tuples alike in type, and an int64 array) into the next ``len(picks[s])`` rows of ``out``:
    a layer's tensors in one call.  Axis 2: the source's rows are the drawn ones already, all
    taken in order."""
    at = 0
    for s in range(len(srcs)):
        src, index = srcs[s], picks[s]
        m = index.shape[0]
        if axes[s] == 2:
            widen_bits_kernel(src, np.arange(m), 0, half, out[at:at + m])
        else:
            widen_bits_kernel(src, index, axes[s], half, out[at:at + m])
        at += m


@ngjit
def widen_float_kernel(src, index, axis, out):
    """:func:`widen_bits_kernel` for a float ``src`` (float32 or float64)."""
    n, d = src.shape
    m = index.shape[0]
    if axis == 0:
        for r in range(m):
            i = index[r]
            for j in range(d):
                out[r, j] = src[i, j]
        return
    for i0 in range(0, n, _ROWS):
        i1 = min(i0 + _ROWS, n)
        for r in range(m):
            j = index[r]
            for i in range(i0, i1):
                out[r, i] = src[i, j]


def widen_numpy(src, index, axis, kind):
    """The numpy twin of the widen kernels (``kind``: "F16", "BF16" or a float dtype's name)."""
    src = np.asarray(src)
    if kind == "F16":
        src = src.view(np.float16)
    elif kind == "BF16":
        src = (src.astype(np.uint32) << 16).view(np.float32)
    picked = src[index] if axis == 0 else src[:, index].T
    return np.ascontiguousarray(picked, dtype=np.float32)


# --- ranged reads ------------------------------------------------------------------------------
# A film's drawn rows are thousands of byte ranges a checkpoint (GPT-2-124M: ~10,000).  Read by
# ``os.pread`` one Python call and one ``bytes`` object each, then joined, they cost 0.43 s of
# CPU a checkpoint (310 MB in the page cache), most of it Python and the join's second copy,
# all of it holding the GIL the projection threads need; these loops make the same calls
# straight into the caller's buffers (libc's ``pread`` and ``posix_fadvise``, by name:
# resolved when the kernel is loaded, so it caches like the others).  Their twin is
# ``os.pread`` range by range (tests/test_checkpoints.py).

_pread = types.ExternalFunction("pread", types.intp(types.int32, types.intp, types.uintp, types.int64))
_fadvise = types.ExternalFunction("posix_fadvise", types.int32(types.int32, types.int64, types.int64, types.int32))


@ngjit
def pread_kernel(fd, starts, ends, dests):
    """Bytes ``[starts[i], ends[i])`` of the open file ``fd`` to the addresses ``dests[i]``
    (int64 arrays; the caller keeps the memory alive), each range until it is complete.
    Returns ``-1``, or the first range that failed or met the end of the file (the caller
    reads that one again to say why)."""
    for i in range(starts.shape[0]):
        at, dest = starts[i], dests[i]
        while at < ends[i]:
            got = _pread(np.int32(fd), dest, np.uintp(ends[i] - at), at)
            if got <= 0:
                return i
            at += got
            dest += got
    return -1


@ngjit
def advise_kernel(fd, starts, ends, advice):
    """``posix_fadvise(fd, start, length, advice)`` for every range (its result ignored: advice)."""
    for i in range(starts.shape[0]):
        _fadvise(np.int32(fd), starts[i], ends[i] - starts[i], np.int32(advice))


# --- the digest of what was read ---------------------------------------------------------------
# A film's read digest (XXH3-128 of the drawn bytes, in file order) was the xxhash object's
# ``update`` per tensor: ~5 ms a bench checkpoint with the GIL held (python-xxhash never lets it
# go), while the projection threads waited for it.  The same C functions, which the
# python-xxhash extension exports, are called here from one kernel free of the GIL.

_xxh3_update = types.ExternalFunction(
    "XXH3_128bits_update", types.int32(types.uintp, types.uintp, types.uintp))


@ngjit
def xxh3_update_kernel(state, addresses, sizes, order):
    """``XXH3_128bits_update(state, addresses[j], sizes[j])`` for each ``j`` in ``order``;
    returns ``-1``, or the first ``j`` whose update failed."""
    for i in range(order.shape[0]):
        j = order[i]
        if _xxh3_update(np.uintp(state), np.uintp(addresses[j]), np.uintp(sizes[j])) != 0:
            return j
    return -1


class Xxh3:
    """XXH3-128 through python-xxhash's exported C functions (``lib``: its extension, loaded
    by ctypes); :func:`xxh3` makes the one this process uses."""

    def __init__(self, lib):
        import ctypes

        class Hash128(ctypes.Structure):
            _fields_ = [("low64", ctypes.c_uint64), ("high64", ctypes.c_uint64)]

        lib.XXH3_createState.restype = ctypes.c_void_p
        for name in ("XXH3_128bits_reset", "XXH3_128bits_digest", "XXH3_freeState"):
            getattr(lib, name).argtypes = [ctypes.c_void_p]
        lib.XXH3_128bits_digest.restype = Hash128
        self.lib = lib

    def hexdigest(self, addresses: np.ndarray, sizes: np.ndarray, order: np.ndarray) -> str:
        """The ``hexdigest()`` of an ``xxhash.xxh3_128`` fed buffer ``j`` (``sizes[j]`` bytes
        at ``addresses[j]``: int64 arrays; the caller keeps them alive) for each ``j`` in
        ``order``, in turn."""
        state = self.lib.XXH3_createState()
        if not state:
            raise MemoryError("XXH3_createState")
        try:
            self.lib.XXH3_128bits_reset(state)
            if xxh3_update_kernel(state, addresses, sizes, order) >= 0:
                raise MemoryError("XXH3_128bits_update")
            h = self.lib.XXH3_128bits_digest(state)
        finally:
            self.lib.XXH3_freeState(state)
        return f"{h.high64:016x}{h.low64:016x}"  # xxhash's canonical (big-endian) form


_XXH3: list = []  # [the Xxh3, or None], once looked for


def xxh3() -> Xxh3 | None:
    """The :class:`Xxh3` of this process, its functions made known to the kernels (the
    extension loaded again, its symbols global); ``None`` where python-xxhash's build does
    not export them (callers then use the ``xxhash`` object)."""
    if not _XXH3:
        try:
            import ctypes

            import llvmlite.binding
            from xxhash import _xxhash

            found = Xxh3(ctypes.CDLL(_xxhash.__file__))
            llvmlite.binding.load_library_permanently(_xxhash.__file__)
        except (ImportError, OSError, AttributeError, RuntimeError):
            found = None
        _XXH3.append(found)
    return _XXH3[0]
