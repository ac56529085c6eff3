"""Positions -> per-panel density counts (numba splatting of small Gaussian footprints)."""

from __future__ import annotations

import concurrent.futures

import numpy as np

from . import interpolate
from ._draw_kernels import CUTOFF, footprint_table, splat_kernel, take_max
from .cluster import threads

FWHM = 2.0 * np.sqrt(2.0 * np.log(2.0))  # a Gaussian's full width at half maximum, in sigmas
# A dot's size (its full width at half maximum, in pixels) is this share of the side of the
# square each point would have if a panel's points shared its area evenly, within the bounds.
DOT_SHARE = 0.22
DOT_MIN = 1.6


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


class Rasterizer:
    """Splats all panels' points into one ``(H, W)`` float32 count image.

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
        self.counts = np.zeros((h, w), dtype=np.float32)
        # Per panel, the box holding every pixel the last call drew into (set by the kernel).
        self.touched = self.rects.copy()

    @property
    def footprint(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """``(table, offset, radius)``: the splat kernel's footprint arguments."""
        return self.table, self.offset, self.radius

    @property
    def limits(self) -> np.ndarray:
        """(L, 2) the data half-ranges along x and y inside which dots are drawn where they are."""
        return self.xform[:, 4:6] / self.xform[:, :1]

    def __call__(self, xy: np.ndarray) -> np.ndarray:
        """Add ``xy`` (N, 2) float32 into the count buffer and return it (owned by the caller
        until it is reset, e.g. by :class:`layerfilm.shade.Shader`).  With the buffer all zero
        beforehand, :attr:`touched` then holds every pixel with a count: only those boxes need
        shading (and resetting)."""
        splat_kernel(xy, self.starts, self.xform, self.rects, *self.footprint, self.counts, self.touched)
        return self.counts

    def span(self, P: np.ndarray, times: np.ndarray) -> float:
        """The highest density of any pixel in any frame of the film: the keyframes ``P``
        (K, N, 2) at frame ``times`` (K,) and every frame between them, placed as the film's
        :class:`~layerfilm.interpolate.Interpolator` places them -- the film's colour span,
        fixed before the first frame (at least 1, a lone dot's centre).  Keyframes alone are
        not enough: dots converging between two keyframes pile up denser than at either."""
        # Only the boxes each frame drew into are searched and cleared.
        n_frames = interpolate.frame_count(times)

        def densest(part: range) -> float:
            counts, touched, top = np.zeros_like(self.counts), self.rects.copy(), 0.0
            at = interpolate.Interpolator(P, times).at  # each thread its own buffers
            for f in part:
                splat_kernel(at(f), self.starts, self.xform, self.rects,
                             *self.footprint, counts, touched)
                top = max(top, float(take_max(counts, touched)))
            return top

        n = threads()
        with concurrent.futures.ThreadPoolExecutor(n) as pool:
            tops = list(pool.map(densest, [range(i, n_frames, n) for i in range(n)]))
        return max([1.0, *tops])
