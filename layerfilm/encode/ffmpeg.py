"""ffmpeg for one output: the lossless settings of each format, and the writers that stream
palette-indexed frames to imageio-ffmpeg's bundled ffmpeg.

Every format here is bit-exact for RGB (``tests/test_encode.py`` decodes each one and
compares it with what was sent; ``docs/rendering.md`` lists where each plays):

* ``.webm``  VP9 ``-lossless 1`` in ``gbrp`` (``yuv444p`` is *not* RGB-exact)
* ``.gif``   the palette itself, frames sent as ``pal8`` indices, no dithering
* ``.webp``  animated lossless WebP
* ``.mp4``   ``libx264rgb -qp 0`` (4:4:4 RGB: most browsers will not play it)
* ``.mkv``   FFV1, for archives

Two writers share one ffmpeg process manager: :class:`FilmWriter` (a film, written under a
hidden temporary name and renamed only when ffmpeg has finished successfully) and
:class:`PngFolderWriter` (numbered PNG frames into a folder).  On any error or Ctrl-C ffmpeg
is killed, waited for, and temporary files removed; on Linux ffmpeg also dies with layerfilm
when layerfilm is killed outright.  :func:`join` joins encoded chunks without re-encoding.
"""

from __future__ import annotations

import ctypes
import dataclasses
import functools
import os
import signal
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from .. import atomic
from .._kernels import palette_rgb_changed_kernel, palette_rgb_kernel
from ..errors import EncodeError
from .pipe import FramePipe


@dataclasses.dataclass(frozen=True)
class Encoder:
    pix_fmt_in: str  # "rgb24" or "pal8"
    args: tuple[str, ...]  # output codec arguments
    muxer: str
    joinable: bool = True  # chunks can be joined by ffmpeg's concat demuxer without re-encoding
    # Muxer arguments.  Matroska/WebM otherwise write random track UIDs, so two renders of the
    # same film would differ in a few bytes; with +bitexact a re-render is byte for byte the same.
    mux_args: tuple[str, ...] = ()


FORMATS: dict[str, Encoder] = {
    "webm": Encoder("rgb24", ("-c:v", "libvpx-vp9", "-lossless", "1", "-pix_fmt", "gbrp",
                              "-deadline", "realtime", "-cpu-used", "8", "-row-mt", "1"), "webm",
                    mux_args=("-fflags", "+bitexact")),
    "gif": Encoder("pal8", ("-c:v", "gif", "-loop", "0"), "gif"),
    "webp": Encoder("rgb24", ("-c:v", "libwebp_anim", "-lossless", "1", "-compression_level", "1",
                              "-pix_fmt", "bgra", "-loop", "0"), "webp", joinable=False),
    "mp4": Encoder("rgb24", ("-c:v", "libx264rgb", "-qp", "0", "-preset", "ultrafast",
                             "-pix_fmt", "rgb24"), "mp4"),
    "mkv": Encoder("rgb24", ("-c:v", "ffv1", "-level", "3", "-pix_fmt", "bgr0", "-slices", "4",
                             "-g", "1"), "matroska", mux_args=("-fflags", "+bitexact")),
}
# PNG frames (--frames DIR): written into a folder, numbered frame_000000.png, ...
PNG_FRAMES = Encoder("rgb24", ("-c:v", "png", "-pix_fmt", "rgb24"), "image2")
FRAME_PATTERN = "frame_%06d.png"


def encoder_command(encoder: Encoder, size: tuple[int, int], fps: int, start_number: int = 0,
                    exe: str | None = None) -> list[str]:
    """The ffmpeg command that encodes raw frames from stdin, with ``OUTPUT`` standing for the
    output file (``exe`` defaults to the bundled ffmpeg)."""
    w, h = size
    return [
        exe or ffmpeg_exe(), "-hide_banner", "-loglevel", "error", "-y",
        "-f", "rawvideo", "-pix_fmt", encoder.pix_fmt_in, "-s", f"{w}x{h}",
        "-r", str(fps), "-i", "-",
        "-an", *encoder.args, *encoder.mux_args, "-f", encoder.muxer,
        *(("-start_number", str(start_number)) if encoder is PNG_FRAMES else ()),
        "OUTPUT",
    ]


def join_command(listing: str | os.PathLike, output: str | os.PathLike, fmt: str | Encoder,
                 exe: str | None = None) -> list[str]:
    """The ffmpeg command that joins the chunks named in ``listing`` into ``output`` by
    copying packets (no re-encoding); ``fmt``: a key of :data:`FORMATS`, or an encoder."""
    enc = fmt if isinstance(fmt, Encoder) else FORMATS[fmt]
    return [exe or ffmpeg_exe(), "-hide_banner", "-loglevel", "error", "-y", "-f", "concat",
            "-safe", "0", "-i", str(listing), "-c", "copy", *enc.mux_args, "-f", enc.muxer,
            str(output)]


def ffmpeg_version() -> str:
    """The bundled ffmpeg's version, e.g. ``n9.0.2``."""
    import imageio_ffmpeg

    return imageio_ffmpeg.get_ffmpeg_version()


def ffmpeg_exe() -> str:
    import imageio_ffmpeg

    return imageio_ffmpeg.get_ffmpeg_exe()


def palette_bytes(palette: np.ndarray) -> bytes:
    """ffmpeg's ``pal8`` palette: 256 little-endian ``0xFFRRGGBB`` words."""
    p = palette.astype(np.uint32)
    return ((0xFF << 24) | (p[:, 0] << 16) | (p[:, 1] << 8) | p[:, 2]).astype("<u4").tobytes()


_PR_SET_PDEATHSIG = 1  # <linux/prctl.h>


@functools.cache
def _prctl():
    """libc's ``prctl``, loaded here rather than in a forked child; None off Linux."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        return ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):
        return None


def dies_with_us() -> Callable[[], None] | None:
    """A ``preexec_fn`` that makes a child process get SIGKILL when this process dies, even by
    SIGKILL (Linux ``PR_SET_PDEATHSIG``): otherwise an ffmpeg outlives a killed render and
    writes on to its end.  None where there is no ``prctl``.

    The signal follows the *thread* that started the child: each ffmpeg is started by the
    thread that then waits for it to finish (a chunk's pool thread lives until every chunk is
    done), so no thread ends while its ffmpeg still runs.
    """
    prctl, parent = _prctl(), os.getpid()
    if prctl is None:
        return None

    def preexec() -> None:
        prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
        if os.getppid() != parent:  # the parent died before prctl took effect
            os.kill(os.getpid(), signal.SIGKILL)

    return preexec


class RGBFrames:
    """(H, W) uint8 palette-index frames -> (H, W, 3) uint8 RGB in a buffer of its own,
    converting only the pixels that changed since the previous frame it converted (the
    buffer holds that frame until the next call)."""

    def __init__(self, size: tuple[int, int], palette: np.ndarray):
        w, h = size
        self.palette = np.ascontiguousarray(palette, dtype=np.uint8)
        self.rgb = np.empty((h, w, 3), dtype=np.uint8)
        self._seen = np.empty(h * w, dtype=np.uint8)
        self._seen_words = self._seen[:(h * w) // 8 * 8].view(np.uint64)
        self._fresh = True

    def __call__(self, frame: np.ndarray) -> np.ndarray:
        if self._fresh:
            palette_rgb_kernel(frame, self.palette, self.rgb)
            self._seen[:] = frame.reshape(-1)
            self._fresh = False
            return self.rgb
        flat = np.ascontiguousarray(frame).reshape(-1)
        palette_rgb_changed_kernel(flat[:self._seen_words.shape[0] * 8].view(np.uint64), self._seen_words,
                                   flat, self._seen, self.palette, self.rgb.reshape(-1))
        return self.rgb


class _Ffmpeg:
    """One ffmpeg process fed ``(H, W)`` uint8 palette-index frames on stdin: RGB encoders
    receive ``palette[frame]``, ``pal8`` encoders the indices with the palette.  Used as a
    context manager; subclasses say where the output goes (:meth:`_target`) and what happens
    when ffmpeg has finished (:meth:`_finish`).  ``_splice``: whether frames may be handed to
    the pipe without a copy (:class:`~.pipe.FramePipe`; a subclass sending a buffer of its own
    that changes every frame says False)."""

    _splice = True

    def __init__(self, path: str | os.PathLike, size: tuple[int, int], fps: int, encoder: Encoder,
                 palette: np.ndarray, start_number: int = 0):
        self.path = Path(path)
        self.size = size
        self.fps = fps
        self.encoder = encoder
        self.start_number = start_number
        self.palette = np.ascontiguousarray(palette, dtype=np.uint8)
        self._pal = np.frombuffer(palette_bytes(self.palette), np.uint8)  # sent after each pal8 frame
        self._rgbs: tuple[RGBFrames, ...] = (RGBFrames(size, self.palette),)  # two when spliced
        self._index: tuple[np.ndarray, ...] = ()
        self._pipe: FramePipe | None = None
        self.frames_written = 0
        self._proc: subprocess.Popen | None = None
        self._log = None
        self.shown = self.path  # the file errors name

    @property
    def command(self) -> list[str]:
        """The ffmpeg command, with ``OUTPUT`` standing for the output file."""
        return encoder_command(self.encoder, self.size, self.fps, self.start_number)

    def _target(self) -> str:
        raise NotImplementedError

    def _finish(self) -> None:
        pass

    def _discard(self) -> None:
        pass

    def __enter__(self):
        cmd = self.command
        cmd[-1] = self._target()
        self._log = tempfile.TemporaryFile()
        try:
            self._proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.DEVNULL,
                                          stderr=self._log, preexec_fn=dies_with_us())
        except OSError as e:
            self._cleanup()
            raise EncodeError(f"cannot start ffmpeg: {e}") from None
        w, h = self.size
        frame_bytes = w * h * (1 if self.encoder.pix_fmt_in == "pal8" else 3)
        self._pipe = FramePipe(self._proc.stdin, frame_bytes, self._splice)
        if self._pipe.spliced:  # frames handed over go from two buffers in turn (see FramePipe)
            self._rgbs += (RGBFrames(self.size, self.palette),)
            self._index = (np.empty((h, w), np.uint8), np.empty((h, w), np.uint8))
        return self

    def write(self, frame: np.ndarray) -> None:
        """Send one ``(H, W)`` uint8 index frame."""
        turn = self.frames_written % 2
        if self.encoder.pix_fmt_in == "pal8":
            if self._pipe.spliced:
                np.copyto(self._index[turn], frame)  # the caller's frame changes next
                frame = self._index[turn]
            self._send(np.ascontiguousarray(frame), self._pal)
        else:
            self._send(self._rgbs[turn % len(self._rgbs)](frame))

    def _send(self, *parts) -> None:
        """Send one frame's parts (arrays, or bytes-like) to ffmpeg's stdin."""
        try:
            self._pipe.send(*parts)
        except (BrokenPipeError, OSError):
            self._proc.wait()
            raise EncodeError(f"ffmpeg stopped after {self.frames_written} frames: {self._stderr()}",
                              self.shown) from None
        self.frames_written += 1

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is not None:
            self._abort()
            return
        try:
            self._proc.stdin.close()
        except OSError:
            pass
        rc = self._proc.wait()
        if rc != 0:
            message = self._stderr()
            self._abort()
            raise EncodeError(f"ffmpeg failed (exit {rc}): {message}", self.shown)
        self._finish()
        self._cleanup()

    def _stderr(self) -> str:
        self._log.seek(0)
        lines = self._log.read().decode(errors="replace").strip().splitlines()
        return lines[-1] if lines else "no message"

    def _abort(self) -> None:
        if self._proc is not None and self._proc.poll() is None:
            self._proc.kill()
        if self._proc is not None:
            try:
                self._proc.stdin.close()
            except OSError:
                pass
            self._proc.wait()
        self._cleanup()

    def _cleanup(self) -> None:
        self._discard()
        if self._log is not None:
            self._log.close()
            self._log = None


class FilmWriter(_Ffmpeg):
    """Writes a film to ``path`` in format ``fmt`` (a key of :data:`FORMATS`), atomically.

    >>> with FilmWriter("out.webm", (640, 360), 25, "webm", palette) as w:
    ...     for frame in frames:
    ...         w.write(frame)
    """

    def __init__(self, path: str | os.PathLike, size: tuple[int, int], fps: int, fmt: str,
                 palette: np.ndarray, shown: str | os.PathLike | None = None):
        super().__init__(path, size, fps, FORMATS[fmt], palette)
        self._tmp: Path | None = None
        if shown is not None:  # a chunk: errors name the film it is part of
            self.shown = Path(shown)

    def _target(self) -> str:
        self._tmp = atomic.temporary_beside(self.path)
        return str(self._tmp)

    def _finish(self) -> None:
        atomic.publish(self._tmp, self.path)
        self._tmp = None

    def _discard(self) -> None:
        if self._tmp is not None:
            self._tmp.unlink(missing_ok=True)
            self._tmp = None


class PngFolderWriter(_Ffmpeg):
    """Writes frames as lossless PNGs ``frame_NNNNNN.png`` (numbered from ``start_number``)
    into the existing folder ``path`` (see :meth:`layerfilm.atomic.Staged.folder`)."""

    def __init__(self, path: str | os.PathLike, size: tuple[int, int], fps: int,
                 palette: np.ndarray, start_number: int = 0):
        super().__init__(path, size, fps, PNG_FRAMES, palette, start_number)

    def _target(self) -> str:
        return str(self.path / FRAME_PATTERN)


def concat_listing(chunks: Sequence[Path]) -> str:
    """The concat demuxer's list of ``chunks``, each path quoted as the demuxer reads it (a
    ``'`` in it written ``'\\''``), so any file name works."""
    return "".join("file '" + str(c.resolve()).replace("'", "'\\''") + "'\n" for c in chunks)


def join(chunks: list[Path], path: Path, fmt: str | Encoder, shown: Path | None = None) -> list[str]:
    """Join encoded chunks into ``path`` with the concat demuxer, copying packets (no
    re-encoding); atomic like :class:`FilmWriter`; errors name ``shown`` (default ``path``).
    Returns the ffmpeg command used."""
    tmp, listing = atomic.temporary_beside(path), atomic.temporary_beside(path)
    try:
        listing.write_text(concat_listing(chunks))
        cmd = join_command(listing, tmp, fmt)
        out = subprocess.run(cmd, stdin=subprocess.DEVNULL, capture_output=True, text=True,
                             preexec_fn=dies_with_us())
        if out.returncode != 0:
            last = (out.stderr.strip().splitlines() or ["no message"])[-1]
            raise EncodeError(f"ffmpeg could not join the chunks (exit {out.returncode}): {last}",
                              shown or path)
        atomic.publish(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
        listing.unlink(missing_ok=True)
    return cmd
