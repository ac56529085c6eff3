"""Panels, labels, the step/loss header -> one palette-indexed frame.

Everything static (panel frames, labels, the title) is drawn once into a
background frame; per frame only the points and the header's step/loss text
change.  Text is rasterised with matplotlib's FreeType binding (no figure, no
canvas), anti-aliased into the palette's grey ramp.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import threading

import numpy as np

from typing import Protocol, Sequence

from . import shade
from .errors import ConfigError


class Overlay(Protocol):
    """An optional part of the frame (loss strip, drift bars, ...).

    ``draw_static(background)`` paints once into the background frame; ``draw(frame, time,
    step)`` paints per frame (cheap slices, no allocation), after the points.
    """

    def draw_static(self, background: np.ndarray) -> None: ...

    def draw(self, frame: np.ndarray, time: float, step: float) -> None: ...


@functools.lru_cache(maxsize=4)
def _font(px: int):
    from matplotlib import font_manager, ft2font

    font = ft2font.FT2Font(font_manager.findfont("DejaVu Sans"))
    font.set_size(px, 72)  # at 72 dpi one point is one pixel
    return font


_FONT_LOCK = threading.Lock()  # one FreeType face is shared by all render threads


@functools.lru_cache(maxsize=512)
def text_mask(text: str, px: int) -> tuple[np.ndarray, int]:
    """Anti-aliased coverage of ``text`` at ``px`` pixels: ``(mask (h, w) uint8, baseline row)``."""
    with _FONT_LOCK:
        font = _font(px)
        font.clear()
        font.set_text(text, 0.0)
        font.draw_glyphs_to_bitmap(antialiased=True)
        mask = np.array(font.get_image(), dtype=np.uint8)
        return mask, mask.shape[0] - int(round(font.get_descent() / 64))


@functools.lru_cache(maxsize=512)
def _text_indices(text: str, px: int, dim: bool) -> tuple[np.ndarray, np.ndarray, int]:
    """``text`` as grey-ramp palette indices, its coverage mask and baseline row (cached, so
    the per-frame header costs only a copy)."""
    mask, base = text_mask(text, px)
    if dim:
        mask = (mask.astype(np.uint16) * 150 // 255).astype(np.uint8)
    return shade.text_index(mask), mask > 0, base


def draw_text(frame: np.ndarray, text: str, px: int, x: int, baseline: int, align: str = "left",
              dim: bool = False) -> None:
    """Draw ``text`` into the index ``frame`` with its baseline at row ``baseline``."""
    idx, covered, base = _text_indices(text, px, dim)
    h, w = idx.shape
    if align == "right":
        x -= w
    y = baseline - base
    # Clip to the frame.
    fy0, fx0 = max(y, 0), max(x, 0)
    fy1, fx1 = min(y + h, frame.shape[0]), min(x + w, frame.shape[1])
    if fy1 <= fy0 or fx1 <= fx0:
        return
    sy, sx = slice(fy0 - y, fy1 - y), slice(fx0 - x, fx1 - x)
    np.copyto(frame[fy0:fy1, fx0:fx1], idx[sy, sx], where=covered[sy, sx])


@dataclasses.dataclass(frozen=True)
class Layout:
    """Where everything sits in a ``size = (W, H)`` frame.

    rects: (L, 4) int64 ``[x0, y0, x1, y1)`` square drawing area of each panel;
    header: height of the top strip; font/label_font: text sizes in pixels.
    """

    size: tuple[int, int]
    rects: np.ndarray
    header: int
    font: int
    label_font: int


def grid_layout(n_panels: int, size: tuple[int, int], footer: int = 0,
                groups: list[int] | None = None) -> Layout:
    """Lay ``n_panels`` square panels on a grid that makes them as large as possible
    (``footer``: pixel rows kept free at the bottom, e.g. for the loss strip).

    ``groups`` (one non-decreasing number per panel) starts each group on a new row, so an
    encoder's and a decoder's blocks sit in separate rows.
    """
    w, h = size
    h -= footer
    groups = list(groups) if groups is not None else [0] * n_panels
    bands = [groups.count(g) for g in sorted(set(groups))] or [n_panels]
    font = max(9, round(min(h / 34, w / 40)))
    label_font = max(8, round(font * 0.75))
    header = round(font * 2.0)
    label_h = round(label_font * 1.5)
    pad = max(3, round(min(w, h) / 150))
    best = None
    for cols in range(1, max(bands) + 1):
        rows = sum(math.ceil(b / cols) for b in bands)
        side = min((w - pad * (cols + 1)) / cols, (h - header - pad * (rows + 1)) / rows - label_h)
        if best is None or side > best[0]:
            best = (side, cols, rows)
    side, cols, rows = best
    side = int(side)
    if side < 8:
        raise ConfigError(f"{n_panels} panels do not fit in a {w}x{h + footer} frame; use a larger "
                          "--size or fewer panels (--tensor, --points embeddings)", field="size")
    cell_h = side + label_h
    used_w = cols * side + (cols - 1) * pad
    used_h = rows * cell_h + (rows - 1) * pad
    left = (w - used_w) // 2
    top = header + (h - header - used_h) // 2
    rects = np.empty((n_panels, 4), dtype=np.int64)
    i = row0 = 0
    for band in bands:
        for j in range(band):
            r, c = divmod(j, cols)
            x0 = left + c * (side + pad)
            y0 = top + (row0 + r) * (cell_h + pad) + label_h
            rects[i] = (x0, y0, x0 + side, y0 + side)
            i += 1
        row0 += math.ceil(band / cols)
    return Layout((w, h + footer), rects, header, font, label_font)


class FrameComposer:
    """Builds each frame: the static background, the shaded points, the header text.

    ``__call__(counts, step, loss, fraction)`` returns an ``(H, W)`` uint8 index
    frame (a buffer reused from frame to frame) and resets ``counts``.
    """

    def __init__(self, layout: Layout, labels: list[str], notes: list[str], title: str,
                 shader: shade.Shader, overlays: Sequence[Overlay] = ()):
        self.layout = layout
        self.overlays = overlays
        self.shader = shader
        w, h = layout.size
        bg = np.full((h, w), shade.BACKGROUND, dtype=np.uint8)
        border = shade.TEXT_BASE + 2  # a dim grey
        for (x0, y0, x1, y1), label, note in zip(layout.rects, labels, notes):
            bg[y0 - 1, x0 - 1:x1 + 1] = border
            bg[y1, x0 - 1:x1 + 1] = border
            bg[y0 - 1:y1 + 1, x0 - 1] = border
            bg[y0 - 1:y1 + 1, x1] = border
            base = y0 - 1 - round(layout.label_font * 0.4)
            draw_text(bg, label, layout.label_font, x0, base)
            draw_text(bg, note, layout.label_font, x1, base, align="right", dim=True)
        self.baseline = round(layout.header * 0.68)
        self.margin = max(4, layout.font // 2)
        # Fixed fields, right-aligned, so digits never shift as the numbers change.
        self.loss_right = w - self.margin
        widest_loss = text_mask("loss 8.888e-08", layout.font)[0].shape[1]
        self.step_right = self.loss_right - widest_loss - layout.font
        draw_text(bg, title, layout.font, self.margin, self.baseline)
        for overlay in overlays:
            overlay.draw_static(bg)
        self.background = bg
        self.frame = bg.copy()

    def __call__(self, counts: np.ndarray, step: int, loss: float | None, fraction: float,
                 time: float = 0.0) -> np.ndarray:
        frame = self.frame
        np.copyto(frame, self.background)
        self.shader(counts, frame)
        w = self.layout.size[0]
        font = self.layout.font
        draw_text(frame, f"step {step:,}", font, self.step_right, self.baseline, align="right")
        if loss is not None:
            draw_text(frame, f"loss {loss:.4g}", font, self.loss_right, self.baseline, align="right")
        # A thin progress line under the header shows where in the run we are.
        y = self.layout.header - 2
        frame[y:y + 1, :int(round(fraction * w))] = shade.TEXT_BASE + 5
        for overlay in self.overlays:
            overlay.draw(frame, time, step)
        return frame
