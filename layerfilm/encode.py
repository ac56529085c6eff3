"""Stream palette-indexed frames to imageio-ffmpeg's bundled ffmpeg, losslessly.

Every format here is bit-exact for RGB (``shared/ENCODERS.md`` has the
measurements; the tests decode each output and compare it with what was sent):

* ``.webm``  VP9 ``-lossless 1`` in ``gbrp`` (``yuv444p`` is *not* RGB-exact)
* ``.gif``   the palette itself, frames sent as ``pal8`` indices, no dithering
* ``.webp``  animated lossless WebP
* ``.mp4``   ``libx264rgb -qp 0`` (4:4:4 RGB: most browsers will not play it)
* ``.mkv``   FFV1, for archives

The film is written to a hidden temporary file beside the output and renamed
only when ffmpeg has finished successfully; on any error or Ctrl-C ffmpeg is
killed, waited for, and the temporary file removed.
"""

from __future__ import annotations

import dataclasses
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

import numpy as np

from ._kernels import palette_rgb_kernel
from .errors import EncodeError


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


def join_command(listing: str | os.PathLike, output: str | os.PathLike, fmt: str,
                 exe: str | None = None) -> list[str]:
    """The ffmpeg command that joins the chunks named in ``listing`` into ``output`` by
    copying packets (no re-encoding)."""
    enc = FORMATS[fmt]
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


class FilmWriter:
    """Context manager that writes ``(H, W)`` uint8 palette-index frames to ``path``.

    >>> with FilmWriter("out.webm", (640, 360), 25, "webm", palette) as w:
    ...     for frame in frames:
    ...         w.write(frame)

    ``palette`` is ``(256, 3)`` uint8.  RGB formats receive ``palette[frame]``;
    GIF receives the indices with the palette.
    """

    def __init__(self, path: str | os.PathLike, size: tuple[int, int], fps: int, fmt: str,
                 palette: np.ndarray, start_number: int = 0):
        self.path = Path(path)
        self.size = size
        self.fps = fps
        self.encoder = PNG_FRAMES if fmt == "png" else FORMATS[fmt]
        self.start_number = start_number
        self.palette = np.ascontiguousarray(palette, dtype=np.uint8)
        self._pal_bytes = palette_bytes(self.palette)
        w, h = size
        self._rgb = np.empty((h, w, 3), dtype=np.uint8)
        self.frames_written = 0
        self._proc: subprocess.Popen | None = None
        self._tmp: Path | None = None
        self._log = None

    @property
    def command(self) -> list[str]:
        """The ffmpeg command, with ``OUTPUT`` standing for the output file."""
        return encoder_command(self.encoder, self.size, self.fps, self.start_number)

    def __enter__(self) -> "FilmWriter":
        cmd = self.command
        if self.encoder is PNG_FRAMES:
            # ``path`` is a folder that already exists (see FramesFolder); nothing to rename.
            cmd[-1] = str(self.path / FRAME_PATTERN)
        else:
            self._tmp = _temporary_beside(self.path)
            cmd[-1] = str(self._tmp)
        self._log = tempfile.TemporaryFile()
        try:
            self._proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.DEVNULL,
                                          stderr=self._log)
        except OSError as e:
            self._cleanup()
            raise EncodeError(f"cannot start ffmpeg: {e}") from None
        return self

    def write(self, frame: np.ndarray) -> None:
        """Send one ``(H, W)`` uint8 index frame."""
        try:
            if self.encoder.pix_fmt_in == "pal8":
                self._proc.stdin.write(memoryview(np.ascontiguousarray(frame)).cast("B"))
                self._proc.stdin.write(self._pal_bytes)
            else:
                palette_rgb_kernel(frame, self.palette, self._rgb)
                self._proc.stdin.write(memoryview(self._rgb).cast("B"))
        except (BrokenPipeError, OSError):
            self._proc.wait()
            raise EncodeError(f"ffmpeg stopped after {self.frames_written} frames: {self._stderr()}",
                              self.path) from None
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
            raise EncodeError(f"ffmpeg failed (exit {rc}): {message}", self.path)
        if self._tmp is not None:
            _publish(self._tmp, self.path)
            self._tmp = None
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
        if self._tmp is not None:
            self._tmp.unlink(missing_ok=True)
            self._tmp = None
        if self._log is not None:
            self._log.close()
            self._log = None


def _temporary_beside(path: Path) -> Path:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".part")
    os.close(fd)
    return Path(tmp)


def _publish(tmp: Path, path: Path) -> None:
    """Atomically move a finished file into place, with the usual umask-based mode
    (mkstemp makes files private)."""
    os.chmod(tmp, 0o666 & ~_umask())
    os.replace(tmp, path)


def join(chunks: list[Path], path: Path, fmt: str) -> list[str]:
    """Join encoded chunks into ``path`` with the concat demuxer, copying packets (no
    re-encoding); atomic like :class:`FilmWriter`.  Returns the ffmpeg command used."""
    tmp = _temporary_beside(path)
    listing = tmp.with_suffix(".txt")
    listing.write_text("".join(f"file '{c.resolve()}'\n" for c in chunks))
    cmd = join_command(listing, tmp, fmt)
    try:
        out = subprocess.run(cmd, stdin=subprocess.DEVNULL, capture_output=True, text=True)
        if out.returncode != 0:
            last = (out.stderr.strip().splitlines() or ["no message"])[-1]
            raise EncodeError(f"ffmpeg could not join the chunks (exit {out.returncode}): {last}", path)
        _publish(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
        listing.unlink(missing_ok=True)
    return cmd


class FramesFolder:
    """A hidden temporary folder beside ``path`` that becomes ``path`` only on success.

    ``path`` must not exist or be an empty folder, so no earlier frames are mixed in or lost.
    """

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        self.tmp: Path | None = None

    def __enter__(self) -> Path:
        self.tmp = Path(tempfile.mkdtemp(dir=self.path.parent, prefix=f".{self.path.name}.", suffix=".part"))
        return self.tmp

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            if self.path.exists():
                self.path.rmdir()  # empty, checked by the config
            os.chmod(self.tmp, 0o777 & ~_umask())
            os.replace(self.tmp, self.path)
        else:
            shutil.rmtree(self.tmp, ignore_errors=True)


def _umask() -> int:
    umask = os.umask(0)
    os.umask(umask)
    return umask
