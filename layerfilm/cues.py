"""Per-panel cues that follow the film: who moves, when, which layers settled, which rebel.

:class:`PanelCues` draws, for every panel,

* its **border**, brighter the faster the layer is changing in the interval the dots are
  moving through (relative change per 100 steps, log scale over two decades up to the film's
  fastest change, one scale for every panel), green while the layer is a rebel;
* an **activity line** under the panel: the layer's rate of change over the whole run on that
  scale, one level per checkpoint interval, bright up to a cursor at the current step, green
  with a green bar beneath it where it is a rebel (from the first frame on, so every rebel
  interval of the film is in view), with a cyan tick at its settling step once the film has
  passed it;
* a **mark** beside its label: ``settled 4,400`` (cyan) from the frame of its settling step on,
  ``rebel +3.8`` (green) while it is a rebel -- both when both hold --, else its number of
  dots; and, left in the same row, ``142 pinned`` when the film draws (frame, dot) pairs
  pinned to the panel's edge.

The numbers come from :class:`layerfilm.drift.Drift` (the same settling step and rebel score
as ``layerfilm stats``).
"""

from __future__ import annotations

import functools
import threading

import numpy as np

from . import shade
from .grid import Grid
from .text import baseline_in, draw_text, text_width
from .overlays import CURSOR, CURVE_AHEAD, CURVE_PAST, current_interval, polyline

DECADES = 2.0
BORDER_DIM = shade.TEXT_BASE + 2


def activity(rate: np.ndarray) -> np.ndarray:
    """(L, K) 0..1: each rate on the log scale over :data:`DECADES` up to the largest; 0 where
    the rate is zero or undefined."""
    rate = np.asarray(rate, dtype=np.float64)
    ok = np.isfinite(rate) & (rate > 0)
    out = np.zeros(rate.shape)
    if ok.any():
        out[ok] = np.clip(1 + np.log10(rate[ok] / rate[ok].max()) / DECADES, 0, 1)
    return out


def _first_fit(options: list[str], px: int, width: int) -> str:
    return next((t for t in options if text_width(t, px) <= width), "")


def pinned_texts(n: int) -> list[str]:
    """How a panel says that ``n`` (frame, dot) pairs are drawn pinned to its edge, longest
    first (none when there are none)."""
    return [f"{n:,} pinned", f"↦{n:,}", "↦"] if n else []


# Mark states kept drawn: each --jobs chunk (its own thread) sits in its own interval, so this
# is well above any sensible job count, yet bounded (a state is a few kB to ~100 kB of pixels).
MARK_STATES = 64

class PanelCues:
    """The cues described in the module docstring.

    times/steps: (K,) keyframe frame times and training steps; rate, rebel: (L, K) relative
    change per 100 steps and rebel score (column 0 unused); settle: (L,) settling steps (NaN:
    never); rebel_z: the |score| that makes a rebel; points: (L,) dots per panel; announce:
    say each panel's settling step before it comes (``--order settle``); pinned: (L,) (frame,
    dot) pairs drawn pinned to each panel's edge.  With ``rate`` None only each panel's number
    of dots (and what is pinned) is shown.
    """

    def __init__(self, grid: Grid, times: np.ndarray, steps: np.ndarray, points: np.ndarray,
                 rate: np.ndarray | None = None, settle: np.ndarray | None = None,
                 rebel: np.ndarray | None = None, rebel_z: float = 3.0, announce: bool = False,
                 pinned: np.ndarray | None = None):
        self.grid, self.times = grid, np.asarray(times, dtype=np.float64)
        self.steps = np.asarray(steps, dtype=np.float64)
        self.points, self.announce = np.asarray(points), announce
        self.pinned, self.marks_at = self._pinned_notes(pinned)
        self.live = rate is not None
        if not self.live:
            return
        L, K = rate.shape
        self.level = activity(rate)
        self.border = (BORDER_DIM + np.round(self.level * (shade.TEXT_LEVELS - 3))).astype(np.uint8)
        self.border[:, 0] = BORDER_DIM
        self.rebel = np.abs(np.nan_to_num(rebel, nan=0.0)) >= rebel_z
        self.rebel[:, 0] = False
        self.score = np.nan_to_num(rebel, nan=0.0)
        self.settle = np.asarray(settle, dtype=np.float64)
        self.border[self.rebel] = shade.REBEL
        self.lines = [self._line(l) for l in range(L)]
        self._flatten()
        W, H = grid.size
        self._scratch = np.zeros((H, W), dtype=np.uint8)  # marks are drawn here, box by box
        self._scratch_lock = threading.Lock()
        self._marks = functools.lru_cache(maxsize=MARK_STATES)(self._mark_layer)
        self._panel_marks: dict = {}  # (panel, dim, options) -> its mark as (indices, values)
        self._ring_colours = (-1, None)  # (interval, each ring pixel's colour in it): per interval
        self.lines_at = np.flatnonzero(self.has_line)
        self.settle_at = np.where(np.isfinite(self.settle), self.settle, np.inf)

    def __getstate__(self) -> dict:
        # Films travel to cluster workers: the lock and the memo are made anew there.
        state = dict(self.__dict__)
        del state["_scratch_lock"], state["_marks"]
        state["_panel_marks"] = {}
        return state

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        self._scratch_lock = threading.Lock()
        self._marks = functools.lru_cache(maxsize=MARK_STATES)(self._mark_layer)

    def _flatten(self) -> None:
        """Everything drawn per frame as flat frame indices, so a frame costs a few vectorised
        assignments whatever the number of panels: each panel's border pixels, its activity
        line's pixels (with their frame column and colour), and its box's rows."""
        lay, W = self.grid, self.grid.size[0]
        idx, owner = [], []
        for l, (x0, y0, x1, y1) in enumerate(lay.rects):
            xs, ys = np.arange(x0 - 1, x1 + 1), np.arange(y0 - 1, y1 + 1)
            ring = np.concatenate([(y0 - 1) * W + xs, y1 * W + xs, ys * W + x0 - 1, ys * W + x1])
            idx.append(ring)
            owner.append(np.full(len(ring), l))
        self.ring, self.ring_owner = np.concatenate(idx), np.concatenate(owner)
        idx, owner, cols, vals = [], [], [], []
        self.has_line = np.array([line is not None for line in self.lines])
        for l, line in enumerate(self.lines):
            if line is None:
                continue
            mask, _, past = line
            x0, y0 = int(lay.spark[l][0]), int(lay.spark[l][1])
            ys, xs = np.nonzero(mask)
            idx.append((ys + y0) * W + xs + x0)
            cols.append(xs + x0)
            vals.append(past[ys, xs])
            owner.append(np.full(len(ys), l))
        empty = np.zeros(0, dtype=np.int64)
        self.line_idx = np.concatenate(idx) if idx else empty
        self.line_col = np.concatenate(cols) if cols else empty
        self.line_val = np.concatenate(vals).astype(np.uint8) if vals else empty.astype(np.uint8)
        self.line_owner = np.concatenate(owner) if owner else empty
        spark = lay.spark[self.has_line] if self.has_line.any() else np.zeros((0, 4), dtype=np.int64)
        h = int(spark[0, 3] - spark[0, 1]) if len(spark) else 0
        self.line_rows = (spark[:, 1:2] + np.arange(h)[None, :]) * W  # (lines, h) row offsets
        self.line_settle_x = np.array([int(round(float(self.x_of(l, self.settle[l]))))
                                       if np.isfinite(self.settle[l]) else -1
                                       for l in np.flatnonzero(self.has_line)], dtype=np.int64)

    def x_of(self, l: int, step) -> np.ndarray:
        x0, _, x1, _ = self.grid.spark[l]
        s0, s1 = self.steps[0], max(self.steps[-1], self.steps[0] + 1)
        return x0 + (np.asarray(step, dtype=np.float64) - s0) / (s1 - s0) * (x1 - x0 - 1)

    def _pinned_notes(self, pinned: np.ndarray | None) -> tuple[list[str], np.ndarray]:
        """Each panel's pinned note (the longest that leaves the mark a settled step's room)
        and the box left to its marks, right of the note."""
        lay, pf = self.grid, self.grid.panel_font
        notes, boxes = [], np.array(lay.mark, dtype=np.int64).reshape(-1, 4)
        for l, (x0, y0, x1, y1) in enumerate(boxes):
            n = 0 if pinned is None else int(pinned[l])
            room = x1 - x0 - text_width("■ 8,888", pf) - 2 * max(2, pf // 4) if pf else -1
            note = _first_fit(pinned_texts(n), pf, room) if x1 > x0 and room > 0 else ""
            notes.append(note)
            if note:
                boxes[l, 0] = x0 + text_width(note, pf) + 2 * max(2, pf // 4)
        return notes, boxes

    def _line(self, l: int):
        """Panel ``l``'s activity line: (mask, ahead, past) images of its box, or None."""
        x0, y0, x1, y1 = (int(v) for v in self.grid.spark[l])
        if x1 <= x0:
            return None
        w, h = x1 - x0, y1 - y0
        at = self.x_of(l, self.steps) - x0  # each keyframe's column
        y = (1 - self.level[l, 1:]) * (h - 1)
        xs = np.stack([at[:-1], at[1:]], axis=1).ravel()  # each interval's ends, in turn
        ys = np.repeat(y, 2)
        rebel_cols = np.zeros(w, dtype=bool)
        for k in np.flatnonzero(self.rebel[l, 1:]) + 1:
            rebel_cols[int(round(at[k - 1])):int(round(at[k])) + 1] = True
        mask = polyline(xs, ys, w, h)
        # Rebel intervals are green from the first frame on, the line and a bar beneath it, so
        # the film shows when a layer breaks from its neighbours before the cursor gets there.
        bar = np.zeros((h, w), dtype=bool)
        bar[max(0, h - max(2, h // 8)):, :] = rebel_cols[None, :]
        green = (mask | bar) & rebel_cols[None, :]
        mask = mask | bar
        ahead = np.where(green, shade.REBEL, np.where(mask, CURVE_AHEAD, shade.BACKGROUND))
        past = np.where(green, shade.REBEL, np.where(mask, CURVE_PAST, shade.BACKGROUND))
        return mask, ahead.astype(np.uint8), past.astype(np.uint8)

    def draw_static(self, bg: np.ndarray) -> None:
        lay = self.grid
        for l, box in enumerate(lay.mark):
            if self.pinned[l]:
                x0, y0, x1, y1 = (int(v) for v in box)
                draw_text(bg, self.pinned[l], lay.panel_font, x0, baseline_in(tuple(box), lay.panel_font),
                          clip=(x0, y0, int(self.marks_at[l][0]), y1))
            if not self.live:
                self._mark(bg, l, self._dots(l))
                continue
            line = self.lines[l]
            if line is not None:
                x0, y0, x1, y1 = (int(v) for v in lay.spark[l])
                bg[y0:y1, x0:x1] = line[1]

    def _dots(self, l: int) -> list[list[tuple[int | None, str]]]:
        """Panel ``l``'s number of dots, the mark before anything else is to be said."""
        n_dots = int(self.points[l])
        return [[(None, f"{n_dots:,} dots")], [(None, f"{n_dots:,}")]]

    def _mark(self, frame: np.ndarray, l: int, options: list[list[tuple[int | None, str]]],
              dim: bool = True) -> None:
        """The first of ``options`` that fits, right-aligned in panel ``l``'s mark box: each
        option a list of ``(accent, text)`` pieces, an accent (palette index, or None) drawn
        as a small square before its text."""
        x0, y0, x1, y1 = (int(v) for v in self.marks_at[l])
        pf = self.grid.panel_font
        if x1 <= x0 or not pf:
            return
        square, gap = max(3, round(pf * 0.55)), max(2, pf // 4)

        def width(pieces) -> int:
            return (sum((square + gap if accent is not None else 0) + text_width(text, pf)
                        for accent, text in pieces) + 2 * gap * (len(pieces) - 1))

        pieces = next((o for o in options if width(o) <= x1 - x0), None)
        if pieces is None or not any(accent is not None or text for accent, text in pieces):
            return
        base = baseline_in((x0, y0, x1, y1), pf)
        left = x1 - width(pieces)
        for accent, text in pieces:
            if accent is not None:
                frame[base - square:base, left:left + square] = accent
                left += square + gap
            draw_text(frame, text, pf, left, base, dim=dim, clip=(x0, y0, x1, y1))
            left += text_width(text, pf) + 2 * gap

    def _mark_layer(self, k: int, settled: tuple[bool, ...]) -> tuple[np.ndarray, np.ndarray]:
        """The marks of every panel in interval ``k`` with these panels settled, as (flat
        indices, palette indices) -- drawn once per state, not per frame, and each panel's
        mark once per text (most panels say the same thing in most intervals)."""
        parts = []
        for l in range(len(self.grid.rects)):
            if self.rebel[l, k] or settled[l]:
                options, dim = self._accents(l, k, settled[l]), False
            elif self.announce:
                s = self.settle[l]
                options, dim = [[(None, t)] for t in (
                    [f"settles {int(s):,}", f"{int(s):,}"] if np.isfinite(s)
                    else ["still moving", "moving"])], True
            else:
                options, dim = self._dots(l), True
            key = (l, dim, tuple(tuple(o) for o in options))
            drawn = self._panel_marks.get(key)
            if drawn is None:
                drawn = self._panel_marks[key] = self._draw_mark(l, options, dim)
            parts.append(drawn)
        if not parts:
            return np.zeros(0, np.int64), np.zeros(0, np.uint8)
        return np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])

    def _draw_mark(self, l: int, options: list, dim: bool) -> tuple[np.ndarray, np.ndarray]:
        """Panel ``l``'s mark (:meth:`_mark`) as (flat indices, palette indices)."""
        x0, y0, x1, y1 = (int(v) for v in self.grid.mark[l])
        if x1 <= x0 or y1 <= y0:
            return np.zeros(0, np.int64), np.zeros(0, np.uint8)
        with self._scratch_lock:
            scratch = self._scratch
            self._mark(scratch, l, options, dim=dim)
            box = scratch[y0:y1, x0:x1]
            ys, xs = np.nonzero(box)
            values = box[ys, xs].copy()
            box[...] = 0
        return (ys + y0) * scratch.shape[1] + xs + x0, values

    def _accents(self, l: int, k: int, settled: bool) -> list[list[tuple[int, str]]]:
        """Panel ``l``'s settled and rebel marks in interval ``k``, longest first: both when
        both hold (a rebel that has settled is still named settled, so no other layer seems
        the first to settle), shortening to the accent squares alone."""
        parts = []
        if settled:
            s = int(self.settle[l])
            parts.append((shade.SETTLED, [f"settled {s:,}", f"{s:,}", ""]))
        if self.rebel[l, k]:
            parts.append((shade.REBEL, [f"rebel {self.score[l, k]:+.1f}", "rebel", ""]))
        # Every combination, the most said first (both long ... both bare).
        options = [[]]
        for accent, texts in parts:
            options = [o + [(accent, t)] for o in options for t in texts]
        return sorted(options, key=lambda o: -sum(len(t) for _, t in o))

    def draw(self, frame: np.ndarray, time: float, step: float) -> None:
        if not self.live:
            return
        flat = frame.reshape(-1)
        k = current_interval(self.times, time)
        at, colours = self._ring_colours  # one tuple: FrameMakers in threads share these cues
        if at != k:
            colours = self.border[self.ring_owner, k]
            self._ring_colours = (k, colours)
        flat[self.ring] = colours
        settled = step >= self.settle_at
        if len(self.line_idx):
            lines = self.lines_at
            x0, x1 = self.grid.spark[lines, 0], self.grid.spark[lines, 2]
            s0, s1 = self.steps[0], max(self.steps[-1], self.steps[0] + 1)
            cx = np.clip(np.round(x0 + (step - s0) / (s1 - s0) * (x1 - x0 - 1)).astype(np.int64),
                         x0, x1 - 1)
            cursor = np.full(len(self.has_line), -1, dtype=np.int64)
            cursor[lines] = cx
            past = self.line_col <= cursor[self.line_owner]
            flat[self.line_idx[past]] = self.line_val[past]
            tick = settled[lines] & (self.line_settle_x >= 0)
            flat[(self.line_rows[tick] + self.line_settle_x[tick, None]).ravel()] = shade.SETTLED
            flat[(self.line_rows + cx[:, None]).ravel()] = CURSOR
        idx, val = self._marks(k, tuple(bool(v) for v in settled))
        flat[idx] = val
