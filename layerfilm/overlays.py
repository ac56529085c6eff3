"""Overlays: the parts of the frame beside the dots, drawn with the film's palette, each
following the :class:`~layerfilm.compose.Overlay` protocol (``draw_static`` once, ``draw`` per
frame) inside the boxes the :class:`~layerfilm.grid.Grid` gave it.

* :class:`Header` -- the title, the step, tokens seen, learning rate and loss, a progress line;
* :class:`LossStrip` -- the training loss under the panels with a cursor that follows the film;
* :class:`DriftBars` -- a bar under each panel, as long as the layer's current rate of change;
* :class:`ScaleBars` -- each panel's scale, a bar of a round length in weight units;
* :class:`Legend` -- what the colours mean: how many dots overlap;
* :class:`Captions` -- a fixed caption and per-checkpoint captions in the footer;
* :class:`TokenLabels` -- ``--label-tokens``: probe tokens' text beside their dots.

The per-panel activity, settled and rebel cues are in :mod:`layerfilm.cues`.
"""

from __future__ import annotations

from typing import Callable

import numpy as np

from . import shade
from .grid import LEGEND_TITLE, NO_BOX, Box, Grid
from .text import baseline_in, draw_text, fit_text, format_value, text_width

CURVE_PAST = shade.DENSITY_BASE + shade.DENSITY_LEVELS * 3 // 4  # a bright colormap colour
CURVE_AHEAD = shade.TEXT_BASE + 5  # dim grey
CURSOR = shade.TEXT_BASE + shade.TEXT_LEVELS - 1  # white
INK = shade.TEXT_BASE + 11  # light grey: scale bars, legend ticks


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


def current_interval(times: np.ndarray, time: float) -> int:
    """The keyframe ``k`` whose incoming interval ``(times[k-1], times[k]]`` holds ``time``
    (0 at or before the first keyframe, the last one after it)."""
    return min(int(np.searchsorted(times, time, side="left")), len(times) - 1)


def format_tokens(n: float) -> str:
    """Tokens as people say them: 930M, 2.18B, 1.5T (three significant digits)."""
    for unit, size in (("T", 1e12), ("B", 1e9), ("M", 1e6), ("K", 1e3)):
        if n >= size:
            return f"{n / size:.3g}{unit}"
    return f"{n:.0f}"


def format_lr(lr: float) -> str:
    return f"{lr:.2g}" if lr >= 0.01 else f"{lr:.1e}"


class Header:
    """The title (static) and, per frame, the header's fields and a thin progress line.

    ``fields``: name -> function of the step giving the field's text (or ``None`` to leave it
    empty), drawn right-aligned in the grid's box for that name (a field without a box is
    not drawn); ``n_frames``: the film's length, for the progress line.
    """

    def __init__(self, grid: Grid, title: str, fields: dict[str, Callable[[float], str | None]],
                 n_frames: int):
        self.grid, self.title, self.n_frames = grid, title, n_frames
        self.fields = [(grid.fields[name], fn) for name, fn in fields.items() if name in grid.fields]
        self.baseline = grid.baseline

    def draw_static(self, bg: np.ndarray) -> None:
        box, font = self.grid.title, self.grid.font
        draw_text(bg, fit_text(self.title, font, box[2] - box[0]), font, box[0], self.baseline,
                  clip=box)

    def draw(self, frame: np.ndarray, time: float, step: float) -> None:
        font = self.grid.font
        for box, fn in self.fields:
            text = fn(step)
            if text:
                draw_text(frame, fit_text(text, font, box[2] - box[0]), font, box[2], self.baseline,
                          align="right", clip=box)
        y = self.grid.header - 2
        frame[y, :int(round(time / max(self.n_frames - 1, 1) * self.grid.size[0]))] = CURVE_AHEAD


class LossStrip:
    """The training loss under the panels (log scale when positive), brighter up to a cursor
    that follows the film's step.

    rect: ``(x0, y0, x1, y1)`` of the strip; steps: the loss curve's (n,) steps and values;
    span: the film's first and last step (the strip's x range); font: label size in pixels.
    """

    def __init__(self, rect: Box, steps: np.ndarray, values: np.ndarray,
                 span: tuple[float, float], font: int):
        x0, y0, x1, y1 = rect
        self.font = font
        label_w = text_width("loss (log)", font) + font // 2
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
            mask = polyline(self.x_of(steps) - px0, (hi - y) / (hi - lo) * (h - 1), w, h)
        self.ahead = np.where(mask, CURVE_AHEAD, shade.BACKGROUND).astype(np.uint8)
        self.past = np.where(mask, CURVE_PAST, shade.BACKGROUND).astype(np.uint8)
        self.mask = mask

    @classmethod
    def below_panels(cls, grid: Grid, steps: np.ndarray, values: np.ndarray,
                     span: tuple[float, float]) -> "LossStrip":
        """The strip in the box ``grid`` keeps for it under the panels."""
        x0, y0, x1, y1 = grid.strip
        pad = max(3, grid.label_font // 3)
        return cls((x0, y0 + pad, x1, y1), steps, values, span, grid.label_font)

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
            frame[y1 + 1:y1 + 3, x0:x0 + n] = self.COLOUR


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


class ScaleBars:
    """Under each panel, a bar ``grid.bar_px[l]`` pixels long with a tick at each end and its
    length in weight units (``grid.bar_value[l]``) beside it: the panel's honest scale; then
    the share of the panel's variance its two axes hold (``grid.variance[l]``), since a
    scale only reads right knowing how much of the cloud the plane shows."""

    def __init__(self, grid: Grid):
        self.grid = grid

    def draw_static(self, bg: np.ndarray) -> None:
        lay, pf = self.grid, self.grid.panel_font
        for l, box in enumerate(lay.scalebar):
            x0, y0, x1, y1 = (int(v) for v in box)
            if x1 <= x0:
                continue
            n = int(lay.bar_px[l])
            y = (y0 + y1) // 2
            bg[y, x0:x0 + n] = INK
            tick = max(1, (y1 - y0) // 4)
            bg[y - tick:y + tick + 1, x0] = bg[y - tick:y + tick + 1, x0 + n - 1] = INK
            room, base = max(3, pf // 2), baseline_in(tuple(box), pf)
            text = format_value(lay.bar_value[l])
            x = x0 + n + room
            draw_text(bg, text, pf, x, base, dim=True, clip=tuple(box))
            if lay.variance and lay.variance[l]:
                draw_text(bg, lay.variance[l], pf, x + text_width(text, pf) + room, base, dim=True,
                          clip=tuple(box))

    def draw(self, frame: np.ndarray, time: float, step: float) -> None:
        pass


def legend_span_text(span: float) -> str:
    return f"{span:,.0f}" if span >= 10 else f"{span:.2g}"


class Legend:
    """What the colours mean, once, in the footer: ``overlapping dots 1 [colours] N`` -- a bar
    whose columns run on the film's log colour scale from one dot (a lone dot's centre) to
    the densest pixel of the film, with a tick at every power of ten between."""

    def __init__(self, grid: Grid, shader: shade.Shader):
        self.grid, self.shader = grid, shader
        x0, y0, x1, y1 = grid.legend
        lf = grid.label_font
        self.base = baseline_in(grid.legend, lf)
        self.top_text = legend_span_text(shader.span)
        right = x1 - text_width(self.top_text, lf)
        room = right - x0 - lf - text_width("1", lf)
        self.title = LEGEND_TITLE if room - text_width(LEGEND_TITLE, lf) - lf >= 2 * lf else ""
        left = x0 + (text_width(self.title, lf) + lf if self.title else 0)
        self.one_x = left
        self.bar = (left + text_width("1", lf) + lf // 2, right - lf // 2)  # columns [a, b)
        bar_h = max(3, round(lf * 0.55))
        self.rows = (self.base - bar_h, self.base)

    def densities(self) -> np.ndarray:
        """The density each column of the bar shows: 1 at its first, the span at its last."""
        a, b = self.bar
        return np.exp(np.linspace(0.0, np.log(self.shader.span), max(b - a, 1)))

    def draw_static(self, bg: np.ndarray) -> None:
        x0, y0, x1, y1 = self.grid.legend
        if x1 <= x0 or self.bar[1] <= self.bar[0]:
            return
        lf = self.grid.label_font
        box = self.grid.legend
        if self.title:
            draw_text(bg, self.title, lf, x0, self.base, dim=True, clip=box)
        draw_text(bg, "1", lf, self.one_x, self.base, clip=box)
        a, b = self.bar
        r0, r1 = self.rows
        bg[r0:r1, a:b] = self.shader.index(self.densities()).astype(np.uint8)[None, :]
        for decade in range(1, int(np.log10(self.shader.span)) + 1):
            x = a + int(round(decade * np.log(10) / np.log(self.shader.span) * (b - a - 1)))
            if a < x < b - 1:
                bg[r1:min(r1 + 2, y1), x] = INK
        draw_text(bg, self.top_text, lf, x1, self.base, align="right", clip=box)

    def draw(self, frame: np.ndarray, time: float, step: float) -> None:
        pass


def wrap(text: str, px: int, width: int, lines: int) -> list[str]:
    """``text`` broken at spaces into at most ``lines`` lines of ``width`` pixels at ``px``
    (the last one shortened with an ellipsis when the text goes on)."""
    words, out = text.split(), []
    while words and len(out) < lines:
        line = words.pop(0)
        while words and text_width(line + " " + words[0], px) <= width:
            line += " " + words.pop(0)
        out.append(line)
    if words:
        out[-1] = out[-1] + " " + " ".join(words)
    return [fit_text(line, px, width) for line in out]


def _caption_lines(text: str, px: int, width: int, lines: int) -> list[str]:
    """A caption's footer lines: each of its own lines shortened to fit (``--prompt``: one per
    prompt), or one text wrapped."""
    if "\n" in text:
        return [fit_text(line, px, width) for line in text.split("\n")[:lines]]
    return wrap(text, px, width, lines)


class Captions:
    """The footer's text: a fixed ``caption`` (static) and per-checkpoint ``captions`` --
    ``(step, text)`` sorted by step, each shown from its step on until the next one's."""

    def __init__(self, grid: Grid, caption: str | None, captions: list[tuple[int, str]]):
        self.grid = grid
        lf = grid.label_font
        self.caption = caption
        self.steps = np.array([s for s, _ in captions], dtype=np.float64)
        boxes = grid.captions
        self.lines = [_caption_lines(t, lf, boxes[0][2] - boxes[0][0], len(boxes)) if boxes else []
                      for _, t in captions]

    def draw_static(self, bg: np.ndarray) -> None:
        box, lf = self.grid.caption, self.grid.label_font
        if self.caption and box != NO_BOX:
            draw_text(bg, fit_text(self.caption, lf, box[2] - box[0]), lf, box[0],
                      baseline_in(box, lf), dim=True, clip=box)

    def draw(self, frame: np.ndarray, time: float, step: float) -> None:
        i = int(np.searchsorted(self.steps, step, side="right")) - 1
        if i < 0:
            return
        lf = self.grid.label_font
        for box, line in zip(self.grid.captions, self.lines[i]):
            draw_text(frame, line, lf, box[0], baseline_in(box, lf), clip=box)


class TokenLabels:
    """``--label-tokens``: chosen probe tokens' text beside their dots, in every panel, each
    following its dot from frame to frame (its interpolated position, pinned to the panel's
    edge as the dot is), with a small white cross on the dot; where dots of one text crowd
    together, the text is drawn once (beside the first) and every one keeps its cross.

    ``P``: (K, n, 2) the keyframe layouts of the labelled dots in every panel, panel after
    panel (``panel``: (n,) which panel each is in); ``times``: (K,) the keyframes' frame times;
    ``texts``: (n,) what each says; ``xform``/``rects``: the rasterizer's (where a dot lands)."""

    def __init__(self, grid: Grid, xform: np.ndarray, P: np.ndarray, times: np.ndarray,
                 panel: np.ndarray, texts: list[str]):
        from .interpolate import Interpolator

        self.rects, self.xform = grid.rects, xform
        self.panel, self.texts = np.asarray(panel, dtype=np.int64), texts
        self.interp = Interpolator(P, times)
        # Legible in a panel of any size: a fifth of its height, at least 8 px, at most the
        # panel titles' size (or 13 px when panels are too small for titles).
        h = (grid.rects[:, 3] - grid.rects[:, 1]).astype(np.int64)
        top = grid.panel_font or 13
        self.px = np.clip(h // 5, 8, max(8, top)).astype(np.int64)

    def draw_static(self, bg: np.ndarray) -> None:
        pass

    def positions(self, time: float) -> np.ndarray:
        """(n, 2) float64 pixel ``(x, y)`` of each labelled dot's centre at frame ``time``."""
        xy = self.interp.at(time).astype(np.float64)
        sx, ox, sy, oy, hw, hh = (self.xform[self.panel, i] for i in range(6))
        u, v = xy[:, 0] * sx, xy[:, 1] * sy
        r = np.maximum(np.maximum(np.abs(u) / hw, np.abs(v) / hh), 1.0)
        return np.stack([u / r + ox, v / r + oy], axis=1)

    def draw(self, frame: np.ndarray, time: float, step: float) -> None:
        said: list[tuple[int, str, int, int, int, int]] = []  # texts drawn: panel, text, box
        for (x, y), l, text in zip(self.positions(time), self.panel, self.texts):
            if not (np.isfinite(x) and np.isfinite(y)):
                continue
            x0, y0, x1, y1 = (int(v) for v in self.rects[l])
            ix, iy, px = int(np.floor(x)), int(np.floor(y)), int(self.px[l])
            arm = max(2, px // 4)
            ys, xs = slice(max(iy, y0), min(iy + 1, y1)), slice(max(ix - arm, x0), min(ix + arm + 1, x1))
            frame[ys, xs] = CURSOR
            ys, xs = slice(max(iy - arm, y0), min(iy + arm + 1, y1)), slice(max(ix, x0), min(ix + 1, x1))
            frame[ys, xs] = CURSOR
            width = text_width(text, px)
            gap = arm + 2
            right = ix + gap + width <= x1
            tx = ix + gap if right else ix - gap
            box = (tx if right else tx - width, iy - px, tx + width if right else tx, iy + px // 2)
            if any(m == l and t == text and box[0] < b[2] and b[0] < box[2] and box[1] < b[3] and b[1] < box[3]
                   for m, t, *b in said):
                continue  # the same text already beside a dot here: said once, crosses on each
            said.append((l, text, *box))
            draw_text(frame, text, px, tx, iy + px // 3, align="left" if right else "right",
                      clip=(x0, y0, x1, y1))
