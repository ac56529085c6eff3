"""The numba kernels of the colour span's pass -- an upper bound on a group of frames' densest
pixel per panel, so only the panels a bound cannot rule out are splatted -- each beside its
numpy twin (the rules of :mod:`layerfilm._kernels` apply; the footprint and the pinning are
:mod:`layerfilm._draw_kernels`' own).
"""

from __future__ import annotations

import numpy as np

from ._draw_kernels import PHASES, footprint_radius, gaussian, splat_centre, unpinned_centre
from ._kernels import ngjit

# The colour span is the densest pixel of every frame.  Most panels of most frames are far
# below it, and a cheap upper bound shows which: for a group of frames, each point's box (the
# least and greatest pixel position it takes in those frames, pinned as the splat pins it)
# bounds the weight it can give any pixel by the footprint at the box's nearest edge.  The
# splat interpolates its footprint between sub-pixel phases 1 / PHASES apart, and the
# Gaussian falls away from the centre, so that weight is at most the Gaussian at that
# distance less 1 / PHASES: :func:`falloff_table` holds it at every multiple of 1 / PHASES.


MOVE = 8  # pixels a point may move within a group of frames (along x and y) to be bounded


def falloff_table(sigma: float) -> np.ndarray:
    """``(PHASES * (R + 2) + 1,)`` float64: exp(-d^2 / 2 sigma^2) at d = k / PHASES (R as in
    :func:`~layerfilm._draw_kernels.footprint_table`), by the same
    :func:`~layerfilm._draw_kernels.gaussian` as its rows."""
    return gaussian(np.arange(PHASES * (footprint_radius(sigma) + 2) + 1) / PHASES, sigma)


@ngjit
def _boxes(stack, g, s0, s1, xf, box, odd):
    """``box[:, k]`` = the least and greatest x, then y, where the splat puts the centre of
    point ``s0 + k`` in the frames ``stack[:g]`` (``xf``: the panel's row of ``xform``;
    inf / -inf where it is never drawn).  Points inside their box in every frame are done in
    one branch-free pass over the frames that the compiler vectorises (no pinning: the centre
    is ``u + o``); the rest (pinned or not finite in some frame) again, frame by frame, by
    :func:`~layerfilm._draw_kernels.splat_centre` itself."""
    sx, ox, sy, oy, hw, hh = xf[0], xf[1], xf[2], xf[3], xf[4], xf[5]
    n = s1 - s0
    x_lo, x_hi, y_lo, y_hi = box[0], box[1], box[2], box[3]
    for k in range(n):
        x_lo[k], x_hi[k], y_lo[k], y_hi[k] = np.inf, -np.inf, np.inf, -np.inf
        odd[k] = False
    for f in range(g):
        coords = stack[f].reshape(-1)[2 * s0:2 * s1]  # x, y, x, y, ...: unit-stride loads
        for k in range(n):
            inside, fx, fy = unpinned_centre(coords[2 * k], coords[2 * k + 1], sx, ox, sy, oy, hw, hh)
            a, b = (fx, fx) if inside else (np.inf, -np.inf)
            c, d = (fy, fy) if inside else (np.inf, -np.inf)
            x_lo[k] = a if a < x_lo[k] else x_lo[k]
            x_hi[k] = b if b > x_hi[k] else x_hi[k]
            y_lo[k] = c if c < y_lo[k] else y_lo[k]
            y_hi[k] = d if d > y_hi[k] else y_hi[k]
            odd[k] |= ~inside
    for k in range(n):
        if odd[k]:
            amin, amax, bmin, bmax = np.inf, -np.inf, np.inf, -np.inf
            for f in range(g):
                drawn, fx, fy = splat_centre(stack[f, s0 + k, 0], stack[f, s0 + k, 1], sx, ox, sy, oy, hw, hh)
                if drawn:
                    amin, amax = min(amin, fx), max(amax, fx)
                    bmin, bmax = min(bmin, fy), max(bmax, fy)
            x_lo[k], x_hi[k], y_lo[k], y_hi[k] = amin, amax, bmin, bmax


@ngjit
def _edge_weights(w, c0, c1, lo, hi, falloff, base, last):
    """``w[X - c0]`` for the pixel columns (or rows) ``c0 <= X < c1``: the most a point
    anywhere in ``[lo, hi]`` gives there (see :func:`falloff_table`), by selects, not
    branches."""
    for X in range(c0, c1):
        c = X + 0.5  # the pixel's centre; k / PHASES <= its distance to the box - 1 / PHASES
        before, after = lo - c, c - hi
        d = (before if before > after else after) * PHASES - 1.0 - 1e-6
        k = int(d) if d > 0.0 else 0
        w[X - c0] = falloff[base + (k if k < last else last)]


@ngjit
def bound_kernel(stack, g, starts, xform, rect, falloff, offset, radius, image, peaks):
    """peaks[l] = the largest pixel of panel l in ``image`` after every point of the panel
    adds, at each pixel its footprint could reach in any of the frames ``stack[:g]``, the most
    it could give there: at least the densest pixel of panel l in any of those frames (up to
    float32 rounding: see :func:`bound_margin`), or infinity where a point's box spans more
    than :data:`MOVE` pixels beyond its footprint's square (too costly a bound, and too loose).

    stack: (G, N, 2) float32 positions, g <= G of them used; starts, xform, rect, radius: as
    :func:`~layerfilm._draw_kernels.splat_kernel`'s; falloff: every panel's
    :func:`falloff_table` one after another, panel l's from ``offset[l]``; image: float32,
    zero, left zero, at least as many values as the largest panel's rect has pixels (each
    panel's bounds are summed there, its pixel (x, y) at ``(y - y0) w + (x - x0)``: a buffer
    that stays in cache, where the frame's own rows were a page apart); peaks: (L,) float32.
    """
    most, points = 1, 1
    for l in range(rect.shape[0]):
        most = max(most, rect[l, 2] - rect[l, 0], rect[l, 3] - rect[l, 1])
        points = max(points, starts[l + 1] - starts[l])
    col_w, row_w = np.empty(most), np.empty(most)
    box, odd = np.empty((4, points)), np.empty(points, np.bool_)
    flat = image.reshape(-1)
    for l in range(starts.shape[0] - 1):
        x0, y0, x1, y1 = rect[l, 0], rect[l, 1], rect[l, 2], rect[l, 3]
        width = x1 - x0
        row_step = np.uint64(width)
        R = radius[l]
        base = offset[l]
        last = offset[l + 1] - base - 1
        reach = (2 * R + 1 + MOVE) * (2 * R + 1 + MOVE)
        lo_x, lo_y, hi_x, hi_y = x1, y1, x0, y0
        top = np.float32(0.0)
        _boxes(stack, g, starts[l], starts[l + 1], xform[l], box, odd)
        for k in range(starts[l + 1] - starts[l]):
            amin, amax, bmin, bmax = box[0, k], box[1, k], box[2, k], box[3, k]
            if amin > amax:  # not finite in any of the frames
                continue
            # The columns and rows the splat's (2R + 1)-square reaches from anywhere in the box.
            cx0, cx1 = max(int(np.floor(amin)) - R, x0), min(int(np.floor(amax)) + R + 1, x1)
            cy0, cy1 = max(int(np.floor(bmin)) - R, y0), min(int(np.floor(bmax)) + R + 1, y1)
            if cx0 >= cx1 or cy0 >= cy1:
                continue
            if (cx1 - cx0) * (cy1 - cy0) > reach:  # moving too far to be worth bounding
                top = np.float32(np.inf)
                break
            _edge_weights(col_w, cx0, cx1, amin, amax, falloff, base, last)
            _edge_weights(row_w, cy0, cy1, bmin, bmax, falloff, base, last)
            lo_x, hi_x = min(lo_x, cx0), max(hi_x, cx1)
            lo_y, hi_y = min(lo_y, cy0), max(hi_y, cy1)
            at = np.uint64((cy0 - y0) * width + cx0 - x0)
            nx = np.uint64(cx1 - cx0)
            for jy in range(np.uint64(cy1 - cy0)):
                wy = row_w[jy]
                for jx in range(nx):
                    flat[at + jx] += np.float32(col_w[jx] * wy)
                at += row_step
        for y in range(lo_y, hi_y):  # the panel's largest, and the buffer left zero
            row = np.uint64((y - y0) * width)
            for x in range(row + np.uint64(lo_x - x0), row + np.uint64(hi_x - x0)):
                top = max(top, flat[x])
                flat[x] = 0.0
        peaks[l] = top


def bound_numpy(stack, g, starts, xform, rect, falloff, offset, radius, shape):
    """The numpy twin of :func:`bound_kernel`: returns ``peaks`` (L,) float32."""
    peaks = np.zeros(len(starts) - 1, np.float32)
    for l in range(len(starts) - 1):
        (sx, ox, sy, oy, hw, hh), (x0, y0, x1, y1), R = xform[l], rect[l], int(radius[l])
        F = falloff[offset[l]:offset[l + 1]]
        p = stack[:g, starts[l]:starts[l + 1]].astype(np.float64)
        u, v = p[..., 0] * sx, p[..., 1] * sy  # (g, n)
        ok = np.isfinite(u) & np.isfinite(v)
        with np.errstate(invalid="ignore"):
            r = np.maximum(np.maximum(np.abs(u) / hw, np.abs(v) / hh), 1.0)
        fx = np.where(ok, u / np.where(ok, r, 1.0) + ox, np.nan)
        fy = np.where(ok, v / np.where(ok, r, 1.0) + oy, np.nan)
        image = np.zeros(shape, np.float32)
        reach = (2 * R + 1 + MOVE) ** 2
        for i in np.flatnonzero(ok.any(axis=0)):
            box = []
            for q, lo, hi in ((fx[:, i], x0, x1), (fy[:, i], y0, y1)):
                a, b = np.nanmin(q), np.nanmax(q)
                cols = np.arange(max(int(np.floor(a)) - R, lo), min(int(np.floor(b)) + R + 1, hi))
                d = np.maximum(a - (cols + 0.5), (cols + 0.5) - b) * PHASES - 1.0 - 1e-6
                k = np.where(d > 0, np.minimum(np.where(d > 0, d, 0).astype(np.int64), len(F) - 1), 0)
                box.append((cols, F[k]))
            (xs, wx), (ys, wy) = box
            if len(xs) * len(ys) > reach:
                image[y0, x0] = np.inf
                break
            if len(xs) and len(ys):
                image[ys[0]:ys[-1] + 1, xs[0]:xs[-1] + 1] += (wy[:, None] * wx[None, :]).astype(np.float32)
        peaks[l] = image.max()
    return peaks


def bound_margin(points: np.ndarray) -> np.ndarray:
    """(L,) float64: a factor that makes :func:`bound_kernel`'s peaks for panels of ``points``
    dots true upper bounds on what the splat deposits.  Each of a pixel's float32 sums (the
    splat's and the bound's) is within (1 + 2^-24)^(n + 1) of its exact sum of n deposits, and
    each deposit is within 2^-24 (float32) plus a few float64 ulps (the interpolation) of its
    exact value: a factor of 1 + 4 (n + 2) 2^-24 covers both."""
    return 1.0 + 4.0 * (np.asarray(points, dtype=np.float64) + 2.0) * 2.0 ** -24
