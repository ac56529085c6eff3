"""``--stills DIR``: the film's first and last frames and a contact sheet, as lossless PNGs.

The frames are the very index frames sent to the encoder (kept as they pass by), so every
PNG pixel equals the film's pixel at that keyframe.
"""

from __future__ import annotations

import math
import threading
from pathlib import Path

import numpy as np

from . import shade

FIRST, LAST, SHEET = "first.png", "last.png", "contact_sheet.png"
GAP = 4  # pixels between contact-sheet tiles
GAP_COLOUR = shade.TEXT_BASE + 3  # a dark grey, so black tile edges stay visible


def tile_keyframes(n_keyframes: int, every: int | None) -> list[int]:
    """Keyframes on the contact sheet: every ``every``-th from the first, and the last.
    ``None`` picks ``every`` so the sheet has about a dozen tiles."""
    if every is None:
        every = max(1, math.ceil((n_keyframes - 1) / 11))
    tiles = list(range(0, n_keyframes, every))
    if tiles[-1] != n_keyframes - 1:
        tiles.append(n_keyframes - 1)
    return tiles


class Stills:
    """Keeps copies of the frames at ``wanted`` frame numbers as they are rendered (thread-safe:
    render jobs call :meth:`offer` in parallel), then writes the PNGs."""

    def __init__(self, keyframe_frames: list[int], tiles: list[int], n_frames: int):
        self.tile_frames = [keyframe_frames[k] for k in tiles]
        self.wanted = set(self.tile_frames) | {0, n_frames - 1}
        self.first, self.last = 0, n_frames - 1
        self.kept: dict[int, np.ndarray] = {}
        self._lock = threading.Lock()

    def offer(self, f: int, frame: np.ndarray) -> None:
        if f in self.wanted:
            with self._lock:
                self.kept[f] = frame.copy()

    def sheet(self) -> np.ndarray:
        """The contact sheet as one index frame: tiles in rows of ``ceil(sqrt(n))``."""
        tiles = [self.kept[f] for f in self.tile_frames]
        h, w = tiles[0].shape
        cols = math.ceil(math.sqrt(len(tiles)))
        rows = math.ceil(len(tiles) / cols)
        out = np.full((rows * h + (rows - 1) * GAP, cols * w + (cols - 1) * GAP), GAP_COLOUR,
                      dtype=np.uint8)
        for i, tile in enumerate(tiles):
            r, c = divmod(i, cols)
            out[r * (h + GAP):r * (h + GAP) + h, c * (w + GAP):c * (w + GAP) + w] = tile
        for i in range(len(tiles), rows * cols):  # empty cells of the last row
            r, c = divmod(i, cols)
            out[r * (h + GAP):r * (h + GAP) + h, c * (w + GAP) - (GAP if c else 0):] = shade.BACKGROUND
        return out

    def write(self, folder: Path, palette: np.ndarray) -> None:
        """Write first.png, last.png and contact_sheet.png into ``folder`` (which exists)."""
        for name, frame in ((FIRST, self.kept[self.first]), (LAST, self.kept[self.last]),
                            (SHEET, self.sheet())):
            write_png(folder / name, frame, palette)


def write_png(path: Path, frame: np.ndarray, palette: np.ndarray) -> None:
    """A palette-indexed frame as a lossless RGB PNG."""
    from PIL import Image

    Image.fromarray(np.ascontiguousarray(palette[frame]), "RGB").save(path, optimize=True)


def tile_origin(i: int, n_tiles: int, size: tuple[int, int]) -> tuple[int, int]:
    """Top-left ``(x, y)`` of tile ``i`` on a sheet of ``n_tiles`` frames of ``size``."""
    w, h = size
    cols = math.ceil(math.sqrt(n_tiles))
    r, c = divmod(i, cols)
    return c * (w + GAP), r * (h + GAP)

