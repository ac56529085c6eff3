"""Positions -> per-panel density counts (numba splatting of small Gaussian footprints)."""

from __future__ import annotations

import concurrent.futures
import threading

import numpy as np

from . import interpolate
from ._draw_kernels import CUTOFF, FLOOR, footprint_steps, footprint_table, splat_kernel
from ._shade_kernels import shade_table, splat_shade_kernel
from ._kernels import hermite_at
from ._span_kernels import bound_kernel, bound_margin, falloff_table
from .cluster import threads

FWHM = 2.0 * np.sqrt(2.0 * np.log(2.0))  # a Gaussian's full width at half maximum, in sigmas
# A dot's size (its full width at half maximum, in pixels) is this share of the side of the
# square each point would have if a panel's points shared its area evenly, within the bounds.
DOT_SHARE = 0.22
DOT_MIN = 1.6
GROUP = 8  # frames bounded together in the colour span's pass (Rasterizer.span)


def dot_sizes(rects: np.ndarray, points: np.ndarray, point_size: float | None = None) -> np.ndarray:
    """(L,) float64 dot size in pixels (full width at half maximum of its footprint) for panels
    ``rects`` (L, 4) holding ``points`` (L,) dots: ``DOT_SHARE * sqrt(area / points)``, at least
    ``DOT_MIN`` and at most a sixtieth of the panel's shorter side (so it stays a dot), or
    ``point_size`` for every panel when given."""
    w = (rects[:, 2] - rects[:, 0]).astype(np.float64)
    h = (rects[:, 3] - rects[:, 1]).astype(np.float64)
    if point_size is not None:
        return np.full(len(rects), float(point_size))
    size = DOT_SHARE * np.sqrt(w * h / np.maximum(np.asarray(points, dtype=np.float64), 1))
    return np.clip(size, DOT_MIN, np.maximum(DOT_MIN, np.minimum(w, h) / 60))


def edge_pad(sigma: np.ndarray) -> np.ndarray:
    """(L,) float64 pixels kept between a panel's edge and the farthest dot centre, so that a
    dot at the edge of the range shows its bright core whole."""
    return np.ceil(np.asarray(sigma) * CUTOFF * 0.6) + 1.0


_ANY_TABLE = shade_table(1.0, FLOOR, False, 0, 2)  # a shading the span's exact splats ignore


class Rasterizer:
    """Splats all panels' points: shaded into a frame a panel at a time (:meth:`shade_into`,
    what films use), or into one ``(H, W)`` float32 count image (``__call__``).

    rects: (L, 4) int64 ``[x0, y0, x1, y1)`` of each panel's interior in the frame; scale: (L,)
    pixels per data unit (the same along x and y), data (0, 0) at the rect's centre; sigma:
    (L,) footprint in pixels; starts: (L+1,) offsets of each panel's points in the flat
    ``(N, 2)`` positions.  A point beyond the rect shrunk by :func:`edge_pad` is drawn pinned
    onto that edge.
    """

    def __init__(self, size: tuple[int, int], rects: np.ndarray, scale: np.ndarray,
                 sigma: np.ndarray, starts: np.ndarray):
        w, h = size
        self.rects = np.ascontiguousarray(rects, dtype=np.int64)
        self.starts = np.ascontiguousarray(starts, dtype=np.int64)
        self.sigma = np.ascontiguousarray(sigma, dtype=np.float64)
        x0, y0, x1, y1 = self.rects.T.astype(np.float64)
        s = np.asarray(scale, dtype=np.float64)
        pad = edge_pad(self.sigma)
        # y grows upwards in data, downwards in pixels.
        self.xform = np.ascontiguousarray(np.stack(
            [s, (x0 + x1) / 2.0, -s, (y0 + y1) / 2.0, (x1 - x0) / 2.0 - pad, (y1 - y0) / 2.0 - pad],
            axis=1))
        tables = [footprint_table(g) for g in self.sigma]
        self.radius = np.array([(t.shape[1] - 1) // 2 for t in tables], dtype=np.int64)
        self.offset = np.concatenate([[0], np.cumsum([t.size for t in tables])]).astype(np.int64)
        self.table = np.concatenate([t.ravel() for t in tables]) if tables else np.zeros(0)
        self.steps = np.concatenate([footprint_steps(t).ravel() for t in tables]) if tables else np.zeros(0)
        falloff = [falloff_table(g) for g in self.sigma]
        self.falloff = np.concatenate(falloff) if falloff else np.zeros(0)
        self.falloff_offset = np.concatenate([[0], np.cumsum([len(f) for f in falloff])]).astype(np.int64)
        self.shape = (h, w)
        self.counts: np.ndarray | None = None  # __call__'s count image, made at its first call
        self._panel: np.ndarray | None = None  # shade_into's buffer, made at its first call
        self._peaks = np.empty(len(self.rects), np.float32)  # each panel's densest, of the last
        # Per panel, the box holding every pixel the last call drew into (set by the kernel).
        self.touched = self.rects.copy()

    @property
    def panel_pixels(self) -> int:
        """Pixels of the largest panel's rect (at least 1): the per-panel buffers' length."""
        w, h = self.rects[:, 2] - self.rects[:, 0], self.rects[:, 3] - self.rects[:, 1]
        return max(int((w * h).max(initial=0)), 1)

    @property
    def footprint(self) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """``(table, steps, offset, radius)``: the splat kernel's footprint arguments."""
        return self.table, self.steps, self.offset, self.radius

    @property
    def limits(self) -> np.ndarray:
        """(L, 2) the data half-ranges along x and y inside which dots are drawn where they are."""
        return self.xform[:, 4:6] / self.xform[:, :1]

    def __call__(self, xy: np.ndarray) -> np.ndarray:
        """Add ``xy`` (N, 2) float32 into the count buffer and return it (owned by the caller
        until it is reset, e.g. by :class:`layerfilm.shade.Shader`).  With the buffer all zero
        beforehand, :attr:`touched` then holds every pixel with a count: only those boxes need
        shading (and resetting)."""
        if self.counts is None:
            self.counts = np.zeros(self.shape, dtype=np.float32)
        splat_kernel(xy, self.starts, self.xform, self.rects, *self.footprint, self.counts, self.touched)
        return self.counts

    def shade_into(self, xy: np.ndarray, table: tuple, frame: np.ndarray) -> None:
        """Splat ``xy`` (N, 2) float32 and write its palette indices into ``frame`` with a
        :class:`~layerfilm.shade.Shader`'s ``table``: what ``__call__`` and the shader give,
        index for index, a panel at a time through a buffer of one panel's rect
        (:func:`~layerfilm._shade_kernels.splat_shade_kernel`), which stays in the nearest
        caches where the frame's count image did not.  Sets :attr:`touched` as ``__call__``."""
        if self._panel is None:
            self._panel = np.zeros(self.panel_pixels, np.float32)
        splat_shade_kernel(xy, self.starts, self.xform, self.rects, *self.footprint, self._panel,
                           self._panel.view(np.uint32), self.touched, table, frame, self._peaks)

    def span(self, P: np.ndarray, times: np.ndarray) -> float:
        """The highest density of any pixel in any frame of the film: the keyframes ``P``
        (K, N, 2) at frame ``times`` (K,) and every frame between them, placed as the film's
        :class:`~layerfilm.interpolate.Interpolator` places them -- the film's colour span,
        fixed before the first frame (at least 1, a lone dot's centre).  Keyframes alone are
        not enough: dots converging between two keyframes pile up denser than at either.

        Exact, without splatting every panel of every frame: each group of :data:`GROUP`
        frames gets an upper bound per panel (:func:`~layerfilm._span_kernels.bound_kernel`,
        about three splats' work for the eight frames), then the (group, panel) pairs are splatted
        exactly, highest bound first, until the next bound is no higher than the densest
        pixel found.  On the bench film (129 panels, 896 frames) 257 of 14,448 pairs are
        splatted: the median bound is half the span, within 1.2x of its panel's densest
        pixel.  A pair whose dots move too far for a bound is splatted (its bound infinite)."""
        n_frames = interpolate.frame_count(times)
        P = np.ascontiguousarray(P, dtype=np.float32)
        times = np.ascontiguousarray(times, dtype=np.float64)
        groups = [(a, min(a + GROUP, n_frames)) for a in range(0, n_frames, GROUP)]
        L = len(self.rects)
        bounds = np.empty((len(groups), L))
        margin = bound_margin(np.diff(self.starts))

        def bound(part: range) -> None:
            stack = np.empty((GROUP,) + P.shape[1:], np.float32)  # each thread its own buffers
            image, peaks = np.zeros(self.panel_pixels, np.float32), np.empty(L, np.float32)
            for g in part:
                a, b = groups[g]
                for j, f in enumerate(range(a, b)):
                    hermite_at(P, times, interpolate.segment(times, f)[0], float(f), stack[j])
                bound_kernel(stack, b - a, self.starts, self.xform, self.rects, self.falloff,
                             self.falloff_offset, self.radius, image, peaks)
                bounds[g] = peaks * margin

        # The pairs in order of their bounds, highest first, taken by both threads in turn:
        # the first few find the densest pixel, and the rest are ruled out by their bounds
        # (where dots race, as at one frame a keyframe, many are not: both threads splat).
        lock, found = threading.Lock(), [1.0]

        def exact(order) -> None:
            # The splat of one panel, through the frames' kernel (its shading into a scratch
            # frame is not looked at): its densest pixel is what counts.
            buffer, touched = np.zeros(self.panel_pixels, np.float32), np.empty((1, 4), np.int64)
            scratch, top = np.zeros(self.shape, np.uint8), np.empty(1, np.float32)
            while True:
                with lock:
                    at = next(order, None)
                    if at is None or not bounds.flat[at] > found[0]:
                        return  # every pair after it is bounded lower still
                g, l = divmod(at, L)
                s, e = self.starts[l], self.starts[l + 1]
                xy, rows = np.empty((e - s, 2), np.float32), P[:, s:e]
                local = np.array([0, e - s], np.int64)
                for f in range(*groups[g]):
                    hermite_at(rows, times, interpolate.segment(times, f)[0], float(f), xy)
                    splat_shade_kernel(xy, local, self.xform[l:l + 1], self.rects[l:l + 1], self.table,
                                       self.steps, self.offset[l:l + 1], self.radius[l:l + 1], buffer,
                                       buffer.view(np.uint32), touched, _ANY_TABLE, scratch, top)
                    with lock:
                        found[0] = max(found[0], float(top[0]))

        n = threads()
        with concurrent.futures.ThreadPoolExecutor(n) as pool:
            list(pool.map(bound, [range(i, len(groups), n) for i in range(n)]))
            order = iter(np.argsort(-bounds, axis=None, kind="stable").tolist())
            list(pool.map(exact, [order] * n))
        return found[0]
