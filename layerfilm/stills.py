"""``--stills DIR``: the film's first and last frames and a contact sheet, as lossless PNGs.

``first.png`` and ``last.png`` are the very index frames sent to the encoder (kept as they
pass by), so every pixel equals the film's.  The contact sheet is at most :data:`SHEET_MAX`
pixels wide: when the film's frames fit, its tiles are the film's own frames at the chosen
checkpoints; when they do not, the tiles are those checkpoints' frames drawn anew at the tile
size -- with the layout, text sizes and dot sizes of that size, so their text still reads --
rather than the film's frames scaled down.
"""

from __future__ import annotations

import math
import threading
from pathlib import Path
from typing import Callable

import numpy as np

from . import shade

FIRST, LAST, SHEET = "first.png", "last.png", "contact_sheet.png"
GAP = 4  # pixels between contact-sheet tiles
GAP_COLOUR = shade.TEXT_BASE + 3  # a dark grey, so black tile edges stay visible
SHEET_MAX = 4096  # the widest contact sheet, in pixels
TILE_MIN = 480  # tiles are made no narrower than this (or the film), adding rows instead


def tile_keyframes(n_keyframes: int, every: int | None) -> list[int]:
    """Keyframes on the contact sheet: every ``every``-th from the first, and the last.
    ``None`` picks ``every`` so the sheet has about a dozen tiles."""
    if every is None:
        every = max(1, math.ceil((n_keyframes - 1) / 11))
    tiles = list(range(0, n_keyframes, every))
    if tiles[-1] != n_keyframes - 1:
        tiles.append(n_keyframes - 1)
    return tiles


def sheet_grid(n_tiles: int, size: tuple[int, int]) -> tuple[int, tuple[int, int]]:
    """``(columns, tile size)`` of the contact sheet for ``n_tiles`` frames of ``size``: about
    square in tiles, at most :data:`SHEET_MAX` wide, tiles no narrower than :data:`TILE_MIN`
    (unless the film is), each the film's own size when that fits."""
    w, h = size
    widest = (SHEET_MAX + GAP) // (min(w, TILE_MIN) + GAP)
    cols = max(1, min(math.ceil(math.sqrt(n_tiles)), widest, n_tiles))
    tw = min(w, (SHEET_MAX - (cols - 1) * GAP) // cols)
    return cols, (tw, h if tw == w else max(1, round(h * tw / w)))


def tile_origin(i: int, n_tiles: int, size: tuple[int, int]) -> tuple[int, int]:
    """Top-left ``(x, y)`` of tile ``i`` on a sheet of ``n_tiles`` frames of ``size``."""
    cols, (w, h) = sheet_grid(n_tiles, size)
    r, c = divmod(i, cols)
    return c * (w + GAP), r * (h + GAP)


class Stills:
    """Keeps copies of the frames it needs as they are rendered (thread-safe: render jobs call
    :meth:`offer` in parallel), then writes the PNGs.

    keyframe_frames: the film's frame of each keyframe; tiles: the keyframes on the sheet;
    size: the film's frame size; tile_frames: ``(size) -> (keyframe -> index frame)`` draws a
    keyframe's frame at another size, for sheets whose tiles cannot be the film's frames.
    """

    def __init__(self, keyframe_frames: list[int], tiles: list[int], n_frames: int,
                 size: tuple[int, int], tile_frames: Callable[[tuple[int, int]], Callable[[int], np.ndarray]]):
        self.tiles = tiles
        self.cols, self.tile_size = sheet_grid(len(tiles), size)
        self.own = self.tile_size == tuple(size)  # tiles are the film's own frames
        self.tile_frames = [keyframe_frames[k] for k in tiles]
        self.make_tiles = tile_frames
        self.first, self.last = 0, n_frames - 1
        self.wanted = {0, n_frames - 1} | (set(self.tile_frames) if self.own else set())
        self.kept: dict[int, np.ndarray] = {}
        self._lock = threading.Lock()

    def offer(self, f: int, frame: np.ndarray) -> None:
        if f in self.wanted:
            with self._lock:
                self.kept[f] = frame.copy()

    def sheet(self) -> np.ndarray:
        """The contact sheet as one index frame: tiles in rows of :attr:`cols`."""
        if self.own:
            tiles = [self.kept[f] for f in self.tile_frames]
        else:
            draw = self.make_tiles(self.tile_size)
            tiles = [draw(k).copy() for k in self.tiles]
        w, h = self.tile_size
        cols = self.cols
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
