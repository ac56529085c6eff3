"""How frames reach ffmpeg's stdin: copied into the pipe by ``write``, or, on Linux, handed
over by ``vmsplice(2)`` -- the pipe then refers to the frame's own memory and ffmpeg's read
is the only copy (a 1080p RGB frame: 0.34 ms of CPU against 1.36 ms, into ``cat``).

The pipe reads the frame's memory *after* the call returns, so a frame handed over must not
change until ffmpeg has read it.  When every frame is at least as long as the pipe holds, the
pipe holds only the latest frame once its call has returned (it holds no more than its
capacity, and the pipe is first in, first out): a frame's buffer may change again as soon as
the *next* frame's call has returned.  :class:`FramePipe` splices only then, and its users
send from two buffers in turn.
"""

from __future__ import annotations

import ctypes
import errno
import functools
import os
import sys

import numpy as np


def pipe_size(frame_bytes: int, most: int = 1 << 20) -> int:
    """The pipe buffer to ask for: ``most`` (1 MiB; see :func:`widen_pipe`), or for
    frames shorter than that the largest power of two they fill (so they can be spliced),
    never below Linux's default 64 KiB."""
    return max(1 << 16, min(most, 1 << max(frame_bytes.bit_length() - 1, 0)))


def widen_pipe(stream, size: int = 1 << 20) -> None:
    """Give the pipe ``stream`` writes to a ``size``-byte buffer where the system allows
    (Linux: up to /proc/sys/fs/pipe-max-size, 1 MiB by default), else leave it: a 1080p RGB
    frame is 6 MB, and the default 64 KiB pipe makes both ends wake ~95 times a frame (the
    write costs 1.3 ms of CPU with 1 MiB, 2.0 ms with 64 KiB, measured here)."""
    try:
        import fcntl

        fcntl.fcntl(stream.fileno(), fcntl.F_SETPIPE_SZ, size)
    except (ImportError, AttributeError, OSError, ValueError):  # not Linux
        pass


class _Iovec(ctypes.Structure):
    _fields_ = [("base", ctypes.c_void_p), ("len", ctypes.c_size_t)]


@functools.cache
def _vmsplice():
    """libc's ``vmsplice``, or None (not Linux, or a libc without it)."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        fn = ctypes.CDLL(None, use_errno=True).vmsplice
    except (OSError, AttributeError):
        return None
    fn.argtypes = [ctypes.c_int, ctypes.POINTER(_Iovec), ctypes.c_size_t, ctypes.c_uint]
    fn.restype = ctypes.c_ssize_t
    return fn


def capacity(fd: int) -> int | None:
    """The pipe ``fd``'s buffer in bytes, or None where it cannot be asked."""
    try:
        import fcntl

        return fcntl.fcntl(fd, fcntl.F_GETPIPE_SZ)
    except (ImportError, AttributeError, OSError, ValueError):
        return None


class FramePipe:
    """Sends frames (and what goes with them) down ``stream``, a pipe to ffmpeg, whose buffer
    it sizes for frames of ``frame_bytes`` (:func:`pipe_size`).

    ``spliced``: frames of ``frame_bytes`` are handed over by ``vmsplice`` (Linux, and a pipe
    no longer than a frame); every array part sent must then stay unchanged until the next
    frame's :meth:`send` has returned (send from two buffers in turn), and parts that are not
    arrays are written (copied).  Otherwise everything is written through ``stream``."""

    def __init__(self, stream, frame_bytes: int, splice: bool = True):
        self.stream = stream
        self.fd = stream.fileno()
        widen_pipe(stream, pipe_size(frame_bytes))
        room = capacity(self.fd)
        self.spliced = bool(splice and _vmsplice() is not None and room and frame_bytes >= room)

    def send(self, *parts) -> None:
        """Send ``parts`` (C-contiguous uint8 arrays, or bytes-like) in order; OSError
        (``EPIPE``: ffmpeg has gone) when the pipe fails."""
        for part in parts:
            if not self.spliced:
                self.stream.write(memoryview(part).cast("B") if isinstance(part, np.ndarray) else part)
            elif isinstance(part, np.ndarray):
                _splice_all(self.fd, part)
            else:
                view = memoryview(part).cast("B")
                while view:
                    view = view[os.write(self.fd, view):]


def _splice_all(fd: int, part: np.ndarray) -> None:
    if not part.flags.c_contiguous:
        raise ValueError("a spliced frame must be C-contiguous")
    splice, iov = _vmsplice(), _Iovec()
    at, n, done = part.ctypes.data, part.nbytes, 0
    while done < n:
        iov.base, iov.len = at + done, n - done
        sent = splice(fd, ctypes.byref(iov), 1, 0)
        if sent < 0:
            err = ctypes.get_errno()
            if err == errno.EINTR:
                continue
            raise OSError(err, os.strerror(err))
        done += sent
