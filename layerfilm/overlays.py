"""Overlays: optional parts of the frame drawn with the film's palette, each following the
:class:`~layerfilm.compose.Overlay` protocol (``draw_static`` once, ``draw`` per frame).

* :class:`LossStrip` -- the training loss under the panels with a cursor that follows the film;
* :class:`DriftBars` -- a bar under each panel, as long as the layer's current rate of change.
"""

from __future__ import annotations

import numpy as np

from . import shade
from .compose import Layout, draw_text, text_mask

CURVE_PAST = shade.DENSITY_BASE + shade.DENSITY_LEVELS * 3 // 4  # a bright colormap colour
CURVE_AHEAD = shade.TEXT_BASE + 5  # dim grey
CURSOR = shade.TEXT_BASE + shade.TEXT_LEVELS - 1  # white


def strip_height(size: tuple[int, int]) -> int:
    """Pixel rows of the loss strip for a frame of ``size``."""
    w, h = size
    return max(24, round(h * 0.13))


def polyline(xs: np.ndarray, ys: np.ndarray, w: int, h: int) -> np.ndarray:
    """``(h, w)`` bool mask of the polyline through pixel coordinates ``(xs, ys)`` (one
    sample per pixel along every segment, so a noisy curve keeps its spikes)."""
    mask = np.zeros((h, w), dtype=bool)
    if len(xs) == 1:
        px, py = xs, ys
    else:
        dx, dy = np.diff(xs), np.diff(ys)
        n = np.ceil(np.maximum(np.abs(dx), np.abs(dy))).astype(np.int64) + 1
        seg = np.repeat(np.arange(len(dx)), n)
        t = (np.arange(n.sum()) - np.repeat(np.cumsum(n) - n, n)) / np.repeat(np.maximum(n - 1, 1), n)
        px, py = xs[seg] + t * dx[seg], ys[seg] + t * dy[seg]
    px = np.clip(np.round(px).astype(np.int64), 0, w - 1)
    py = np.clip(np.round(py).astype(np.int64), 0, h - 1)
    mask[py, px] = True
    return mask


class LossStrip:
    """The training loss under the panels (log scale when positive), brighter up to a cursor
    that follows the film's step.

    rect: ``(x0, y0, x1, y1)`` of the strip; steps: the loss curve's (n,) steps and values;
    span: the film's first and last step (the strip's x range); font: label size in pixels.
    """

    def __init__(self, rect: tuple[int, int, int, int], steps: np.ndarray, values: np.ndarray,
                 span: tuple[float, float], font: int):
        x0, y0, x1, y1 = rect
        self.font = font
        label_w = text_mask("loss (log)", font)[0].shape[1] + font // 2
        self.plot = (x0 + label_w, y0 + 1, x1, y1 - 1)  # the curve's box
        px0, py0, px1, py1 = self.plot
        w, h = px1 - px0, py1 - py0
        s0, s1 = span
        inside = (steps >= s0) & (steps <= s1) & np.isfinite(values)
        steps, values = steps[inside].astype(np.float64), values[inside].astype(np.float64)
        self.log = bool(len(values)) and bool((values > 0).all())
        y = np.log10(values) if self.log else values
        lo, hi = (float(y.min()), float(y.max())) if len(y) else (0.0, 1.0)
        if hi <= lo:
            lo, hi = lo - 0.5, hi + 0.5
        self.range = (lo, hi)
        self.span = (float(s0), float(s1 if s1 > s0 else s0 + 1))
        mask = np.zeros((h, w), dtype=bool)
        if len(steps):
            xs = self.x_of(steps) - px0
            ys = (hi - y) / (hi - lo) * (h - 1)
            mask = polyline(xs, ys, w, h)
        self.ahead = np.where(mask, CURVE_AHEAD, shade.BACKGROUND).astype(np.uint8)
        self.past = np.where(mask, CURVE_PAST, shade.BACKGROUND).astype(np.uint8)
        self.mask = mask

    @classmethod
    def below_panels(cls, layout: Layout, steps: np.ndarray, values: np.ndarray,
                     span: tuple[float, float]) -> "LossStrip":
        """The strip in the :func:`strip_height` rows that ``layout`` keeps free at the bottom."""
        w, h = layout.size
        margin, pad = max(4, layout.font // 2), max(3, layout.label_font // 3)
        rect = (margin, h - strip_height(layout.size) + pad, w - margin, h - pad)
        return cls(rect, steps, values, span, layout.label_font)

    def x_of(self, step) -> np.ndarray:
        """Frame column(s) of training step(s)."""
        px0, _, px1, _ = self.plot
        s0, s1 = self.span
        return px0 + (np.asarray(step, dtype=np.float64) - s0) / (s1 - s0) * (px1 - px0 - 1)

    def draw_static(self, bg: np.ndarray) -> None:
        px0, py0, px1, py1 = self.plot
        bg[py0:py1, px0:px1] = self.ahead
        bg[py1, px0:px1] = shade.TEXT_BASE + 2  # base line
        lo, hi = self.range
        top, bottom = (10 ** hi, 10 ** lo) if self.log else (hi, lo)
        gap = self.font // 3
        draw_text(bg, f"{top:.3g}", self.font, px0 - gap, py0 + self.font, align="right", dim=True)
        draw_text(bg, f"{bottom:.3g}", self.font, px0 - gap, py1, align="right", dim=True)
        label = "loss (log)" if self.log else "loss"
        draw_text(bg, label, self.font, px0 - gap, (py0 + py1 + self.font) // 2, align="right")

    def draw(self, frame: np.ndarray, time: float, step: float) -> None:
        px0, py0, px1, py1 = self.plot
        cx = int(round(float(self.x_of(step))))
        cx = min(max(cx, px0), px1 - 1)
        region = frame[py0:py1, px0:cx + 1]
        np.copyto(region, self.past[:, :cx + 1 - px0], where=self.mask[:, :cx + 1 - px0])
        frame[py0:py1 + 1, cx] = CURSOR


class DriftBars:
    """A bar along the bottom edge of each panel, as long as the layer's relative change per
    100 steps over the interval the dots are moving through (log scale over two decades up to
    the film's largest change, the same scale for every panel and frame).

    Frames after keyframe k-1 up to and including keyframe k show the change from k-1 to k
    (the change *into* k); the first keyframe's frame shows none.

    rects: (L, 4) panel rects; rate: (L, K) relative change per 100 steps into each keyframe
    (column 0 unused); times: (K,) keyframe frame times.
    """

    COLOUR = shade.DENSITY_BASE + shade.DENSITY_LEVELS - 1
    DECADES = 2.0

    def __init__(self, rects: np.ndarray, rate: np.ndarray, times: np.ndarray):
        self.rects = np.asarray(rects)
        self.times = np.asarray(times, dtype=np.float64)
        self.lengths = drift_lengths(rate, self.rects[:, 2] - self.rects[:, 0], self.DECADES)

    def draw_static(self, bg: np.ndarray) -> None:
        pass

    def draw(self, frame: np.ndarray, time: float, step: float) -> None:
        k = current_interval(self.times, time)
        if k == 0:
            return
        for (x0, y0, x1, y1), n in zip(self.rects, self.lengths[:, k]):
            frame[y1:y1 + 2, x0:x0 + n] = self.COLOUR


def current_interval(times: np.ndarray, time: float) -> int:
    """The keyframe ``k`` whose incoming interval ``(times[k-1], times[k]]`` holds ``time``
    (0 at or before the first keyframe, the last one after it)."""
    return min(int(np.searchsorted(times, time, side="left")), len(times) - 1)


def drift_lengths(rate: np.ndarray, sides: np.ndarray, decades: float = 3.0) -> np.ndarray:
    """(L, K) int64 bar lengths in pixels: ``rate`` on a log scale from ``top / 10**decades``
    (length 1) to the film's largest rate ``top`` (the panel's full ``side``); 0 where the
    rate is zero or undefined."""
    rate = np.asarray(rate, dtype=np.float64)
    ok = np.isfinite(rate) & (rate > 0)
    if not ok.any():
        return np.zeros(rate.shape, dtype=np.int64)
    top = rate[ok].max()
    level = np.zeros(rate.shape)
    level[ok] = np.clip(1 + np.log10(rate[ok] / top) / decades, 0, 1)
    lengths = np.round(level * np.asarray(sides)[:, None]).astype(np.int64)
    return np.where(ok, np.maximum(lengths, 1), 0)
