"""A whole film in chunks: :func:`encode_film` writes every frame of a film as an
:class:`Output` says, in contiguous chunks made and encoded in parallel -- in threads here, or
as tasks on a Dask cluster that return encoded bytes -- and joined without re-encoding.  The chunk boundaries are the same either way, so both give the same film, byte
for byte.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import dataclasses
import shutil
import tempfile
import threading
import time
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from .. import atomic
from ..cluster import Dask
from ..film import Film, FrameMaker
from ..progress import QUIET, Progress
from . import preview as previews
from .ffmpeg import FORMATS, FilmWriter, PngFolderWriter, _Ffmpeg, join


@dataclasses.dataclass(frozen=True, eq=False)
class Output:
    """Where and how :func:`encode_film` writes a film: ``path`` (written atomically),
    ``format`` (a key of :data:`FORMATS`), ``fps``, the film's ``palette`` ((256, 3) uint8),
    ``jobs`` (chunks made and encoded in parallel, then joined), ``frames_dir`` (every frame
    also as a PNG into this existing folder, on this machine only; ``None``: no PNGs) and
    ``shown`` (the name errors give the film while ``path`` is a staged temporary; ``None``:
    ``path``); ``preview`` (the lossy H.264 preview, written from the same frames, see
    :mod:`~layerfilm.encode.preview`; ``None``: none) and ``preview_shown`` (its name in
    errors).  The frame size is not here: it is the film's own, :attr:`Film.size`."""

    path: Path
    format: str
    fps: int
    palette: np.ndarray
    jobs: int = 1
    frames_dir: Path | None = None
    shown: Path | None = None
    preview: Path | None = None
    preview_shown: Path | None = None

    def chunks(self, n_frames: int) -> list[range]:
        """The runs of frames encoded apart and joined: :attr:`jobs` of them (at most one a
        frame), or one for a format that cannot be joined without re-encoding (animated WebP)."""
        joinable = FORMATS[self.format].joinable
        return chunk_ranges(n_frames, min(self.jobs, n_frames) if joinable else 1)


class Stopped(Exception):
    """Another chunk failed or the user pressed Ctrl-C: this chunk stops at its next frame."""


@dataclasses.dataclass(frozen=True)
class Encoded:
    """What :func:`encode_film` did: seconds making frames and encoding them (summed over
    chunks), the ffmpeg command (the join's when there were chunks) and the chunks used."""

    render_s: float
    encode_s: float
    command: list[str]
    jobs: int


def chunk_ranges(n_frames: int, jobs: int) -> list[range]:
    """``jobs`` contiguous, nearly equal runs of frame numbers covering ``0 .. n_frames-1``."""
    bounds = np.linspace(0, n_frames, jobs + 1).round().astype(int)
    return [range(bounds[j], bounds[j + 1]) for j in range(jobs)]


@contextlib.contextmanager
def chunk_files(output: Path, n: int):
    """``n`` chunk paths for ``output``, in a hidden folder of this process's own beside it
    (removed afterwards): two renders of one output at once never write each other's chunks.
    One chunk is ``output`` itself."""
    if n == 1:
        yield [output]
        return
    folder = atomic.temporary_folder_beside(output)
    try:
        yield [folder / f"chunk{j}{output.suffix}" for j in range(n)]
    finally:
        shutil.rmtree(folder, ignore_errors=True)



def write_frames(make: Callable[[int], np.ndarray], frames: range, writers: Sequence[_Ffmpeg],
                 taps: Sequence[Callable[[int, np.ndarray], None]] = (),
                 advance: Callable[[int], None] = lambda n=1: None,
                 stop: threading.Event | None = None) -> tuple[float, float]:
    """Make each frame of ``frames`` with ``make(f)`` and send it to every writer (already
    entered) and tap; returns (seconds making frames, seconds writing them)."""
    render_s = encode_s = 0.0
    for f in frames:
        if stop is not None and stop.is_set():
            raise Stopped()
        t0 = time.perf_counter()
        frame = make(f)
        t1 = time.perf_counter()
        for writer in writers:
            writer.write(frame)
        for tap in taps:
            tap(f, frame)
        render_s += t1 - t0
        encode_s += time.perf_counter() - t1
        advance(1)
    return render_s, encode_s


Chunk = tuple[float, float, list[str]]  # seconds making frames, seconds encoding, ffmpeg command


def write_chunk(film: Film, out: Output, frames: range, path: Path,
                taps: Sequence[Callable[[int, np.ndarray], None]] = (),
                advance: Callable[[int], None] = lambda n=1: None,
                stop: threading.Event | None = None, preview: Path | None = None) -> Chunk:
    """Frames ``frames`` of ``film``, made by a :class:`FrameMaker` of their own, encoded into
    ``path`` (and PNGs into ``out.frames_dir``, the lossy preview into ``preview``) and handed
    to each tap."""
    size = film.size
    writer = FilmWriter(path, size, out.fps, out.format, out.palette, out.shown or out.path)
    pngs = (PngFolderWriter(out.frames_dir, size, out.fps, out.palette, frames.start)
            if out.frames_dir is not None else None)
    lossy = (previews.PreviewWriter(preview, size, out.fps, out.palette,
                                    out.preview_shown or out.preview, previews.spot(film))
             if preview is not None else None)
    writers = [w for w in (writer, pngs, lossy) if w is not None]
    with contextlib.ExitStack() as stack:
        for w in writers:
            stack.enter_context(w)
        render_s, encode_s = write_frames(FrameMaker(film), frames, writers, taps, advance, stop)
        t = time.perf_counter()
    return render_s, encode_s + time.perf_counter() - t, writer.command  # ffmpeg finishing the file


@dataclasses.dataclass
class Segment:
    """A chunk encoded by a cluster task: its bytes, what it took, and copies of the frames
    asked for (stills)."""

    data: bytes
    chunk: Chunk
    kept: dict[int, np.ndarray]
    preview: bytes | None = None  # the chunk's lossy preview, when the output has one


def render_segment(film: Film, out: Output, wanted: frozenset[int], frames: range,
                   advance=None) -> Segment:
    """A cluster task: frames ``frames`` of ``film`` encoded as one ``out.format`` stream (in a
    temporary file where the task runs, returned as bytes), with copies of the ``wanted``
    frames."""
    kept: dict[int, np.ndarray] = {}

    def keep(f: int, frame: np.ndarray) -> None:
        if f in wanted:
            kept[f] = frame.copy()

    with tempfile.TemporaryDirectory(prefix="layerfilm-segment-") as tmp:
        path = Path(tmp) / f"segment.{out.format}"
        lossy = Path(tmp) / "preview.mp4" if out.preview is not None else None
        chunk = write_chunk(film, out, frames, path, [keep], advance or (lambda n=1: None),
                            preview=lossy)
        return Segment(path.read_bytes(), chunk, kept, lossy.read_bytes() if lossy else None)


def _here(film: Film, out: Output, chunks: list[range], paths: list[Path], keep,
          advance: Callable[[int], None], lossy: list[Path | None]) -> list[Chunk]:
    """The chunks made and encoded in threads of this process (the numba kernels release the
    GIL); a failing chunk stops the others at their next frame."""
    taps = (keep.offer,) if keep is not None else ()
    if len(chunks) == 1:
        return [write_chunk(film, out, chunks[0], paths[0], taps, advance, preview=lossy[0])]
    stop = threading.Event()
    with concurrent.futures.ThreadPoolExecutor(len(chunks)) as pool:
        futures = [pool.submit(write_chunk, film, out, c, p, taps, advance, stop, q)
                   for c, p, q in zip(chunks, paths, lossy)]
        try:
            return [f.result() for f in futures]
        except BaseException:
            stop.set()  # the other chunks stop at their next frame and clean up
            raise


def _on_cluster(run: Dask, film: Film, out: Output, chunks: list[range], paths: list[Path], keep,
                progress: Progress, lossy: list[Path | None]) -> list[Chunk]:
    """The chunks made and encoded as tasks on the cluster, their bytes written to ``paths``
    (their previews' to ``lossy``)."""
    wanted = frozenset(keep.wanted) if keep is not None else frozenset()
    segments = run.map(render_segment, chunks, film, out, wanted, stage=f"Rendering {out.path.name}",
                       progress=progress, weights=[len(c) for c in chunks])
    for path, preview, segment in zip(paths, lossy, segments):
        atomic.write_bytes(path, segment.data)
        if preview is not None:
            atomic.write_bytes(preview, segment.preview)
        for f, frame in segment.kept.items():
            keep.offer(f, frame)
    return [segment.chunk for segment in segments]


def encode_film(film: Film, out: Output, run=None, keep=None, progress: Progress = QUIET) -> Encoded:
    """Every frame of ``film`` into the film ``out.path`` (atomically; errors name
    ``out.shown``), and PNGs into ``out.frames_dir``; ``keep`` (the stills) is offered the
    frames it wants as they pass (``keep.wanted``, ``keep.offer(f, frame)``).

    The frames are split into :meth:`Output.chunks`, each made and encoded apart: as tasks on
    the cluster when ``run`` is a :class:`~layerfilm.cluster.Dask` (``--frames`` is refused
    there), else in threads here; then joined without re-encoding.  No chunk file is left.
    """
    chunks = out.chunks(film.n_frames)
    with chunk_files(out.path, len(chunks)) as paths, \
            (chunk_files(out.preview, len(chunks)) if out.preview is not None
             else contextlib.nullcontext([None] * len(chunks))) as lossy:
        if isinstance(run, Dask):
            done = _on_cluster(run, film, out, chunks, paths, keep, progress, lossy)
        else:
            with progress.stage(f"Rendering {out.path.name}", film.n_frames) as advance:
                done = _here(film, out, chunks, paths, keep, advance, lossy)
        command = done[0][2] if len(paths) == 1 else join(paths, out.path, out.format, out.shown)
        if out.preview is not None and len(lossy) > 1:
            join(lossy, out.preview, previews.encoder(film.size), out.preview_shown or out.preview)
    return Encoded(sum(d[0] for d in done), sum(d[1] for d in done), command, len(chunks))
