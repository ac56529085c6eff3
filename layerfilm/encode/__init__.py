"""Frames to lossless films: ``ffmpeg.py`` holds each format's settings and the writers of one
ffmpeg stream (:class:`FilmWriter`, :class:`PngFolderWriter`); ``chunks.py`` writes a whole
film as an :class:`Output` says (:func:`encode_film`), in parallel chunks joined without
re-encoding, here or on a Dask cluster; ``preview.py`` the lossy H.264 ``--preview`` written
from the same frames."""

from ..errors import EncodeError
from . import preview
from .chunks import (Encoded, Output, Segment, Stopped, chunk_files, chunk_ranges, encode_film,
                     render_segment, write_chunk, write_frames)
from .ffmpeg import (FORMATS, FRAME_PATTERN, PNG_FRAMES, Encoder, FilmWriter, PngFolderWriter,
                     concat_listing, dies_with_us, encoder_command, ffmpeg_exe, ffmpeg_version, join,
                     join_command, palette_bytes)

__all__ = [
    "EncodeError", "preview", "Encoded", "Output", "Segment", "Stopped", "chunk_files", "chunk_ranges",
    "encode_film", "render_segment", "write_chunk", "write_frames", "FORMATS", "FRAME_PATTERN",
    "PNG_FRAMES", "Encoder", "FilmWriter", "PngFolderWriter", "concat_listing", "dies_with_us",
    "encoder_command", "ffmpeg_exe", "ffmpeg_version", "join", "join_command", "palette_bytes",
]
