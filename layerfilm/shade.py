"""Counts -> colour: a fixed 256-entry palette and one density span per film.

Frames are palette-indexed (``H x W`` uint8).  The palette is laid out as::

    0          background (black)
    1 .. 15    grey ramp from the background to white, for anti-aliased text
    16 .. 252  the colormap, low density to high (237 levels, every one a distinct colour)
    253        accent: "settled" (cyan, as the ticks of the stats heatmap)
    254        accent: "rebel" (green, as the dots of the stats heatmap)
    255        never used: GIF encoders spend a free index on "unchanged pixel",
               which makes GIF frames several times smaller

so RGB outputs are ``palette[frame]`` and GIF gets the indices as they are.
"""

from __future__ import annotations

import dataclasses
import functools

import numpy as np

from ._draw_kernels import CUTOFF
from ._shade_kernels import shade_kernel, shade_levels, shade_table

BACKGROUND = 0
TEXT_BASE, TEXT_LEVELS = 1, 15
DENSITY_BASE, DENSITY_LEVELS = 16, 237
SETTLED, REBEL = 253, 254
UNUSED = 255
ACCENTS = {SETTLED: (63, 208, 255), REBEL: (92, 255, 122)}
# Where on the colormap the faintest density (a footprint's edge) starts: dark, so that a dot's
# edge fades into the background; a lone dot's centre sits far higher (see FLOOR).
CMAP_LOW = 0.12
# The faintest density drawn on the log scale: a lone dot's weight at the edge of its footprint.
FLOOR = float(np.exp(-CUTOFF ** 2 / 2))


def colormap_colours(cmap: str, n: int = DENSITY_LEVELS, low: float = CMAP_LOW) -> np.ndarray:
    """``(n, 3)`` uint8: the colormap from ``low`` to 1, sampled by linear interpolation between
    its own table's entries (not the nearest entry, which repeats colours), each colour made
    distinct from those before it by the smallest change of one channel."""
    import matplotlib

    cm = matplotlib.colormaps[cmap]
    table = cm(np.linspace(0.0, 1.0, max(int(getattr(cm, "N", 256)), 2)))[:, :3]
    pos = np.linspace(low, 1.0, n) * (len(table) - 1)
    i = np.minimum(np.floor(pos).astype(np.int64), len(table) - 2)
    f = (pos - i)[:, None]
    rgb = np.round((table[i] * (1 - f) + table[i + 1] * f) * 255).astype(np.int64)
    seen: set[tuple[int, int, int]] = set()
    out = np.empty((n, 3), dtype=np.uint8)
    nudges = [(c, d) for d in (1, -1, 2, -2, 3, -3) for c in range(3)]
    for j, colour in enumerate(rgb):
        c = tuple(int(v) for v in colour)
        for ch, d in [(0, 0)] + nudges:
            trial = list(colour)
            trial[ch] = min(max(trial[ch] + d, 0), 255)
            if tuple(trial) not in seen:
                c = tuple(trial)
                break
        seen.add(c)
        out[j] = c
    return out


def palette(cmap: str) -> np.ndarray:
    """The film's palette: ``(256, 3)`` uint8 laid out as in the module docstring."""
    pal = np.zeros((256, 3), dtype=np.uint8)
    grey = np.round(np.arange(1, TEXT_LEVELS + 1) * 255 / TEXT_LEVELS).astype(np.uint8)
    pal[TEXT_BASE:TEXT_BASE + TEXT_LEVELS] = grey[:, None]
    pal[DENSITY_BASE:DENSITY_BASE + DENSITY_LEVELS] = colormap_colours(cmap)
    for index, colour in ACCENTS.items():
        pal[index] = colour
    pal[UNUSED] = pal[BACKGROUND]
    return pal


def text_index(alpha: np.ndarray) -> np.ndarray:
    """Anti-aliasing coverage (uint8, 0..255) -> grey-ramp palette indices (0 where uncovered)."""
    level = (alpha.astype(np.uint16) * TEXT_LEVELS + 127) // 255  # 0 .. TEXT_LEVELS
    return np.where(level > 0, TEXT_BASE - 1 + level, BACKGROUND).astype(np.uint8)


@dataclasses.dataclass(frozen=True)
class Shader:
    """Maps density to palette indices with one span for the whole film (no flicker).

    ``span`` is the density that gets the top colour; ``scale`` is ``"log"`` (from ``floor``,
    the faintest density, to ``span``: ``log(c / floor) / log(span / floor)``) or ``"linear"``
    (``c / span``).
    """

    span: float
    scale: str = "log"
    floor: float = FLOOR

    @functools.cached_property
    def table(self) -> tuple:
        """The exact lookup table of :func:`layerfilm._shade_kernels.shade_table`, made once."""
        return shade_table(self.span, self.floor, self.scale == "log", DENSITY_BASE, DENSITY_LEVELS)

    def index(self, density) -> np.ndarray:
        """Palette index of each density (> 0) in ``density``, by the formula the kernel
        reproduces (for legends and tests)."""
        return DENSITY_BASE + shade_levels(density, self.span, self.floor, self.scale == "log",
                                           DENSITY_LEVELS)

    def __call__(self, counts: np.ndarray, frame: np.ndarray, boxes: np.ndarray | None = None) -> None:
        """Write indices where ``counts > 0`` into ``frame`` and reset ``counts`` to 0; only
        inside ``boxes`` ((M, 4) int64 ``[x0, y0, x1, y1)``, e.g. the panels' rects) when given,
        which must then hold every density."""
        if boxes is None:
            boxes = np.array([[0, 0, counts.shape[1], counts.shape[0]]], dtype=np.int64)
        shade_kernel(counts, counts.view(np.uint32), self.table, frame, boxes)
