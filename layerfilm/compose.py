"""The composition of one palette-indexed frame: :class:`FrameComposer` draws the static parts
once into a background frame (panel borders and labels, and each :class:`Overlay`'s static
part); per frame only the shaded points and the overlays' changing parts are drawn.  Where
everything sits is :mod:`.grid`'s, how text is drawn :mod:`.text`'s.
"""

from __future__ import annotations

from typing import Callable, Protocol, Sequence

import numpy as np

from . import shade
from .grid import Grid
from .text import baseline_in, draw_text, fit_text


class Overlay(Protocol):
    """A part of the frame beside the dots (header, loss strip, legend, cues, ...).

    ``draw_static(background)`` paints once into the background frame; ``draw(frame, time,
    step)`` paints per frame (cheap slices, no allocation), after the points.
    """

    def draw_static(self, background: np.ndarray) -> None: ...

    def draw(self, frame: np.ndarray, time: float, step: float) -> None: ...


class FrameComposer:
    """Builds each frame: the static background, the shaded points, the overlays.

    ``__call__(dots, time, step)`` returns an ``(H, W)`` uint8 index frame (a buffer reused
    from frame to frame) in which ``dots(table, frame)`` has written the points' palette
    indices with the shader's ``table`` (e.g. a bound
    :meth:`~layerfilm.raster.Rasterizer.shade_into`).
    """

    BORDER = shade.TEXT_BASE + 2  # a dim grey

    def __init__(self, grid: Grid, labels: list[str], shader: shade.Shader,
                 overlays: Sequence[Overlay] = ()):
        self.grid = grid
        self.overlays = overlays
        self.shader = shader
        w, h = grid.size
        bg = np.full((h, w), shade.BACKGROUND, dtype=np.uint8)
        for l, (x0, y0, x1, y1) in enumerate(grid.rects):
            bg[y0 - 1, x0 - 1:x1 + 1] = bg[y1, x0 - 1:x1 + 1] = self.BORDER
            bg[y0 - 1:y1 + 1, x0 - 1] = bg[y0 - 1:y1 + 1, x1] = self.BORDER
            box = tuple(grid.label[l])
            if grid.panel_font and box[2] > box[0]:
                text = fit_text(labels[l], grid.panel_font, box[2] - box[0])
                draw_text(bg, text, grid.panel_font, box[0], baseline_in(box, grid.panel_font),
                          clip=box)
        for overlay in overlays:
            overlay.draw_static(bg)
        self.background = bg
        self.frame = bg.copy()

    def __call__(self, dots: Callable[[tuple, np.ndarray], None], time: float, step: float) -> np.ndarray:
        frame = self.frame
        np.copyto(frame, self.background)
        dots(self.shader.table, frame)
        for overlay in self.overlays:
            overlay.draw(frame, time, step)
        return frame
