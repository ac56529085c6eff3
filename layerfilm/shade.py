"""Counts -> colour: a fixed 256-entry palette and one density span per film.

Frames are palette-indexed (``H x W`` uint8).  The palette is laid out as::

    0          background (black)
    1 .. 15    grey ramp from the background to white, for anti-aliased text
    16 .. 254  the colormap, low density to high (239 levels)
    255        never used: GIF encoders spend a free index on "unchanged pixel",
               which makes GIF frames several times smaller

so RGB outputs are ``palette[frame]`` and GIF gets the indices as they are.
"""

from __future__ import annotations

import dataclasses
import functools

import numpy as np

from ._kernels import shade_kernel, shade_table

BACKGROUND = 0
TEXT_BASE, TEXT_LEVELS = 1, 15
DENSITY_BASE, DENSITY_LEVELS = 16, 239
UNUSED = 255
# Where on the colormap the faintest density starts: high enough that a lone dot (its weight
# split over four pixels) stays clearly visible on black, low enough to leave room for density.
CMAP_LOW = 0.3


def palette(cmap: str) -> np.ndarray:
    """The film's palette: ``(256, 3)`` uint8 laid out as in the module docstring."""
    import matplotlib

    pal = np.zeros((256, 3), dtype=np.uint8)
    grey = np.round(np.arange(1, TEXT_LEVELS + 1) * 255 / TEXT_LEVELS).astype(np.uint8)
    pal[TEXT_BASE:TEXT_BASE + TEXT_LEVELS] = grey[:, None]
    colours = matplotlib.colormaps[cmap](np.linspace(CMAP_LOW, 1.0, DENSITY_LEVELS))[:, :3]
    pal[DENSITY_BASE:DENSITY_BASE + DENSITY_LEVELS] = np.round(colours * 255).astype(np.uint8)
    pal[UNUSED] = pal[BACKGROUND]
    return pal


def text_index(alpha: np.ndarray) -> np.ndarray:
    """Anti-aliasing coverage (uint8, 0..255) -> grey-ramp palette indices (0 where uncovered)."""
    level = (alpha.astype(np.uint16) * TEXT_LEVELS + 127) // 255  # 0 .. TEXT_LEVELS
    return np.where(level > 0, TEXT_BASE - 1 + level, BACKGROUND).astype(np.uint8)


@dataclasses.dataclass(frozen=True)
class Shader:
    """Maps density to palette indices with one span for the whole film (no flicker).

    ``span`` is the density that gets the top colour; ``scale`` is ``"log"``
    (``log1p(c) / log1p(span)``) or ``"linear"`` (``c / span``).
    """

    span: float
    scale: str = "log"

    @property
    def scaled_span(self) -> float:
        return float(np.log1p(self.span) if self.scale == "log" else self.span)

    @functools.cached_property
    def table(self) -> tuple:
        """The exact lookup table of :func:`layerfilm._kernels.shade_table`, made once."""
        return shade_table(self.scaled_span, self.scale == "log", DENSITY_BASE, DENSITY_LEVELS)

    def __call__(self, counts: np.ndarray, frame: np.ndarray) -> None:
        """Write indices where ``counts > 0`` into ``frame`` and reset ``counts`` to 0."""
        shade_kernel(counts, counts.view(np.uint32), self.table, frame)
