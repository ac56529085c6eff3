"""Film segments as tasks: contiguous runs of frames rendered and encoded where a task runs
(a Dask worker), returned as encoded bytes, and joined here without re-encoding.

The chunk boundaries are :func:`layerfilm.encode.chunk_ranges` of ``--jobs`` -- the same as a
``--jobs`` render on one machine, so both give the same film, byte for byte.
"""

from __future__ import annotations

import dataclasses
import tempfile
from pathlib import Path

import numpy as np

from . import atomic, encode, frames
from .cluster import Dask


@dataclasses.dataclass
class Segment:
    """An encoded run of frames, what it took, and copies of the frames asked for (stills)."""

    data: bytes
    render_s: float
    encode_s: float
    command: list[str]
    kept: dict[int, np.ndarray]


def render_segment(film: frames.Film, fmt: str, size: tuple[int, int], fps: int, palette: np.ndarray,
                   wanted: frozenset[int], chunk: range, advance=None) -> Segment:
    """A task: frames ``chunk`` of ``film`` encoded as one ``fmt`` stream (in a temporary file
    where the task runs, returned as bytes), with copies of the ``wanted`` frames."""
    kept: dict[int, np.ndarray] = {}

    def keep(f: int, frame: np.ndarray) -> None:
        if f in wanted:
            kept[f] = frame.copy()

    with tempfile.TemporaryDirectory(prefix="layerfilm-segment-") as tmp:
        writer = encode.FilmWriter(Path(tmp) / f"segment.{fmt}", size, fps, fmt, palette)
        with writer:
            render_s, encode_s = encode.write_frames(frames.FrameMaker(film), chunk, [writer], [keep],
                                                     advance or (lambda n=1: None))
        data = writer.path.read_bytes()
    return Segment(data, render_s, encode_s, writer.command, kept)


def encode_on_cluster(run: Dask, film: frames.Film, output: Path, fmt: str, size: tuple[int, int],
                      fps: int, palette: np.ndarray, jobs: int, wanted: set[int], progress,
                      shown: Path | None = None) -> tuple[encode.Encoded, dict[int, np.ndarray]]:
    """The film's ``jobs`` segments rendered and encoded on the cluster, joined into
    ``output`` (atomically; no segment file is left; errors name ``shown``); returns what it
    took and the kept frames."""
    chunks = encode.chunk_ranges(film.n_frames, min(jobs, film.n_frames) if encode.FORMATS[fmt].joinable else 1)
    parts = run.map(render_segment, chunks, film, fmt, size, fps, palette, frozenset(wanted),
                    stage=f"Rendering {output.name}", progress=progress, weights=[len(c) for c in chunks])
    kept = {f: frame for part in parts for f, frame in part.kept.items()}
    render_s, encode_s = sum(p.render_s for p in parts), sum(p.encode_s for p in parts)
    if len(parts) == 1:
        atomic.write_bytes(output, parts[0].data)
        return encode.Encoded(render_s, encode_s, parts[0].command, 1), kept
    with encode.chunk_files(output, len(parts)) as files:
        for path, part in zip(files, parts):
            path.write_bytes(part.data)
        command = encode.join(files, output, fmt, shown)
    return encode.Encoded(render_s, encode_s, command, len(parts)), kept


def encode_film(run, film: frames.Film, output: Path, fmt: str, size: tuple[int, int], fps: int,
                palette: np.ndarray, jobs: int, png_dir: Path | None, keep, progress,
                shown: Path | None = None) -> encode.Encoded:
    """Frames to the film ``output``: on the cluster when ``run`` is one (segments as tasks),
    else here in ``jobs`` parallel chunks (with the PNG frames and stills kept as they pass);
    errors name ``shown``, the film ``output`` is to become."""
    if isinstance(run, Dask):
        done, kept = encode_on_cluster(run, film, output, fmt, size, fps, palette, jobs,
                                       keep.wanted if keep is not None else set(), progress, shown)
        if keep is not None:
            keep.kept.update(kept)
        return done
    with progress.stage(f"Rendering {output.name}", film.n_frames) as advance:
        return encode.encode_chunks(output, fmt, size, fps, palette, film.n_frames, jobs,
                                    lambda: frames.FrameMaker(film), png_dir,
                                    (keep.offer,) if keep is not None else (), advance, shown)
