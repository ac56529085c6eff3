"""The numba kernels that draw frames -- splatting and how far the curves reach (shading:
:mod:`layerfilm._shade_kernels`) -- each beside a plain-numpy twin that tests compare it to
(see :mod:`layerfilm._kernels` for the rules they follow: inputs trusted, single-threaded,
compiled code cached on disk).
"""

from __future__ import annotations

import numpy as np

from ._kernels import ngjit

# --- rasterisation ---------------------------------------------------------------------------
# Each point is a small Gaussian footprint, accumulated: its weight is 1 at its centre and
# exp(-d^2 / (2 sigma^2)) at a pixel centre d pixels away, cut off beyond CUTOFF sigma.  So the
# count image reads "how many dots overlap here", a lone dot peaks at 1 wherever it sits, and a
# dot moving by a fraction of a pixel moves smoothly.  ``xform`` maps a panel's data coordinates
# to frame pixels: px = x * sx + ox, py = y * sy + oy; a point whose centre falls outside the
# panel's drawing box (``hw`` x ``hh`` pixels around (ox, oy)) is pinned onto the box's edge,
# towards where it is, so no dot silently vanishes; ``rect`` clips deposits to the interior.
#
# The footprint is separable, w = f(dx) f(dy), and f at the pixel centres around a point
# depends only on where in its pixel the point is.  Each panel gets a table of f for PHASES + 1
# sub-pixel positions (:func:`footprint_table`); a point's factors are interpolated linearly
# between the two nearest rows (within 7e-5 of the exact Gaussian for the smallest dots, far
# less for larger ones) -- no exponential per point.

CUTOFF = 2.5
PHASES = 64
FLOOR = float(np.exp(-CUTOFF * CUTOFF / 2.0))  # the footprint's weight at its cut-off


def gaussian(d: np.ndarray, sigma: float) -> np.ndarray:
    """exp(-d^2 / 2 sigma^2), the footprint's profile: one expression for every table made
    from it, so equal distances give equal bits."""
    return np.exp(-d * d / (2.0 * sigma * sigma))


def footprint_radius(sigma: float) -> int:
    """R: a footprint reaches R pixels either side of the pixel its centre is in."""
    return min(int(np.ceil(CUTOFF * sigma)), 63)


def footprint_table(sigma: float) -> np.ndarray:
    """``(PHASES + 1, 2R + 1)`` float64: row p holds exp(-d^2 / 2 sigma^2) at the 2R + 1 pixel
    centres around a point p / PHASES of the way through its pixel (R = ceil(CUTOFF sigma), at
    most 63: :func:`footprint_radius`)."""
    R = footprint_radius(sigma)
    t = np.arange(PHASES + 1) / PHASES
    return gaussian(np.arange(2 * R + 1)[None, :] - R + 0.5 - t[:, None], sigma)


def footprint_steps(table: np.ndarray) -> np.ndarray:
    """A :func:`footprint_table`'s differences from each row to the next (the last row 0), in
    its shape: :func:`splat_kernel` reads them instead of forming each per point (the same
    float64 subtraction, made once)."""
    steps = np.zeros_like(table)
    steps[:-1] = table[1:] - table[:-1]
    return steps


@ngjit
def unpinned_centre(x, y, sx, ox, sy, oy, hw, hh):
    """``(inside, px, py)``: whether a point at data ``(x, y)`` lies inside its panel's box
    (False when not finite), and where the splat puts its centre if so -- no branch, so the
    loops that place a panel's points at once (:func:`_place_fives`, the span's bound)
    vectorise; :func:`splat_centre` handles the rest."""
    u, v = x * sx, y * sy
    return (abs(u) <= hw) & (abs(v) <= hh), u + ox, v + oy


@ngjit
def splat_centre(x, y, sx, ox, sy, oy, hw, hh):
    """``(drawn, px, py)``: where the splat puts the centre of a point at data ``(x, y)`` (see
    :func:`splat_kernel`'s ``xform``), pinned onto its panel's box; not drawn if not finite."""
    u, v = x * sx, y * sy
    if not (np.isfinite(u) and np.isfinite(v)):
        return False, 0.0, 0.0
    if not (abs(u) <= hw and abs(v) <= hh):  # divide only for a point beyond the box
        r = max(abs(u) / hw, abs(v) / hh)
        if r > 1.0:
            u /= r
            v /= r
    return True, u + ox, v + oy


@ngjit
def _five(table, steps, r, t):
    """A 5-wide footprint's factors at phase row ``r``, ``t`` of the way to the next row."""
    u = np.uint64(1)
    return (table[r] + t * steps[r], table[r + u] + t * steps[r + u],
            table[r + 2 * u] + t * steps[r + 2 * u], table[r + 3 * u] + t * steps[r + 3 * u],
            table[r + 4 * u] + t * steps[r + 4 * u])


@ngjit
def _tap(flat, at, w):
    """One deposit of :func:`splat_kernel`: ``w`` where it reaches the cut-off, else +0.0."""
    flat[at] += np.float32(w if w >= FLOOR else 0.0)


@ngjit
def _row3(flat, at, wy, e):
    """The middle three deposits of a row of a 5 x 5 footprint (factors ``e`` times ``wy``)
    from ``flat[at]``: its top and bottom rows, whose corners lie beyond the cut-off."""
    u = np.uint64(1)
    _tap(flat, at + u, e[1] * wy)
    _tap(flat, at + 2 * u, e[2] * wy)
    _tap(flat, at + 3 * u, e[3] * wy)


@ngjit
def _row5(flat, at, wy, e):
    """A whole row of a 5 x 5 footprint's deposits from ``flat[at]``."""
    _tap(flat, at, e[0] * wy)
    _row3(flat, at, wy, e)
    _tap(flat, at + np.uint64(4), e[4] * wy)


@ngjit
def _place_fives(xy, s0, s1, xf, rect, width, org, at, frac, phase, fast):
    """Where the splat puts the 5 x 5 footprints of points ``s0 .. s1-1`` of a panel (R = 2;
    ``xf``, ``rect``: its rows of :func:`splat_kernel`'s ``xform`` and ``rect``): for point
    ``s0 + k`` drawn inside its box (no pinning) with its whole square inside the rect,
    ``fast[k]``, the square's first pixel ``at[k]`` (flat index) and per axis its phase row
    ``phase[a][k]`` and the fraction ``frac[a][k]`` towards the next; the others are left to
    the kernel's own loop (``width``, ``org``: pixel (x, y) is ``y * width + x - org`` of the
    buffer deposited into).  Returns the box ``[x0, y0, x1, y1)`` these squares cover.

    One loop over the points with no branch (selects instead), which the compiler vectorises:
    the arithmetic of :func:`splat_kernel`'s per-point code, value for value (1.0 of its
    3.4 ms on a 1080p bench frame; the deposits stay point by point, in order)."""
    sx, ox, sy, oy, hw, hh = xf[0], xf[1], xf[2], xf[3], xf[4], xf[5]
    x0, y0, x1, y1 = rect[0], rect[1], rect[2], rect[3]
    coords = xy.reshape(-1)[2 * s0:2 * s1]  # x, y, x, y, ...: unit-stride loads
    tx_, ty_ = frac
    px_, py_ = phase
    lo_x, lo_y, hi_x, hi_y = x1, y1, x0, y0
    for k in range(s1 - s0):
        # Not inside (pinned, or not finite): left to the kernel's loop.
        inside, fx, fy = unpinned_centre(coords[2 * k], coords[2 * k + 1], sx, ox, sy, oy, hw, hh)
        ix, iy = np.floor(fx), np.floor(fy)
        tx = (fx - ix) * PHASES if inside else 0.0  # nothing outside reaches a conversion
        ty = (fy - iy) * PHASES if inside else 0.0
        px, py = np.int64(tx), np.int64(ty)
        px = px if px < PHASES - 1 else PHASES - 1
        py = py if py < PHASES - 1 else PHASES - 1
        tx_[k], ty_[k] = tx - px, ty - py
        px_[k], py_[k] = px, py
        cx = np.int64(ix if inside else 0.0) - 2
        cy = np.int64(iy if inside else 0.0) - 2
        ok = inside & (x0 <= cx) & (cx + 5 <= x1) & (y0 <= cy) & (cy + 5 <= y1)
        fast[k] = ok
        at[k] = cy * width + cx - org if ok else 0
        lx, ly = (cx, cy) if ok else (x1, y1)
        hx, hy = (cx + 5, cy + 5) if ok else (x0, y0)
        lo_x = lx if lx < lo_x else lo_x
        lo_y = ly if ly < lo_y else lo_y
        hi_x = hx if hx > hi_x else hi_x
        hi_y = hy if hy > hi_y else hi_y
    return lo_x, lo_y, hi_x, hi_y


@ngjit
def splat_kernel(xy, starts, xform, rect, table, steps, offset, radius, counts, touched):
    """Add every point of every panel into ``counts``.

    xy: (N, 2) float32; starts: (L+1,) int64 offsets of each panel's points;
    xform: (L, 6) float64 [sx, ox, sy, oy, hw, hh]; rect: (L, 4) int64 [x0, y0, x1, y1)
    half-open; table: every panel's :func:`footprint_table` flattened, one after another,
    panel l's from ``offset[l]``; steps: the same for their :func:`footprint_steps`; radius:
    (L,) int64 its R; counts: (H, W) float32, added to in place.  Weights below
    :data:`FLOOR` (beyond the cut-off circle) are not deposited.  touched: (L, 4) int64, set
    to the box ``[x0, y0, x1, y1)`` inside each panel's rect that holds every pixel this call
    added to (empty, x0 == x1, when none): what shading and the colour span's pass need to
    look at.

    Written for speed with the exact sums of the plain loop: indices are unsigned (numba
    checks a signed index for wrap-around at every access), each tap of the footprint's
    square inside the rect adds its weight or +0.0 (which leaves a non-negative float32 as it
    is) rather than branching on the cut-off, which the CPU cannot predict, and a point inside
    its box is recognised by two comparisons, not two divisions (for ``a >= 0`` and ``b > 0``
    the rounded ``a / b`` exceeds 1 exactly when ``a > b``; with ``b`` zero or negative,
    ``a <= b`` leaves only 0 / 0, which pins nothing either).  The smallest dots (R = 2,
    :data:`~layerfilm.raster.DOT_MIN`: every panel of many points) are placed first, all of a
    panel's at once (:func:`_place_fives`), then deposited in order.
    """
    flat = counts.reshape(-1)
    scratch = splat_scratch(starts)
    for l in range(starts.shape[0] - 1):
        box = splat_panel(xy, l, starts, xform, rect, table, steps, offset, radius, flat,
                           counts.shape[1], 0, scratch)
        touched[l, 0], touched[l, 1], touched[l, 2], touched[l, 3] = box


@ngjit
def splat_scratch(starts):
    """What :func:`splat_panel` works in: footprint factors and, per point of the largest
    panel, :func:`_place_fives`'s placements."""
    most = 0
    for l in range(starts.shape[0] - 1):
        most = max(most, starts[l + 1] - starts[l])
    return (np.empty(127), np.empty(127), np.empty(most, np.int64), np.empty(most, np.bool_),
            (np.empty(most), np.empty(most)), (np.empty(most, np.int64), np.empty(most, np.int64)))


@ngjit
def splat_panel(xy, l, starts, xform, rect, table, steps, offset, radius, flat, width, org, scratch):
    """Panel ``l``'s points of :func:`splat_kernel` added into ``flat``, where pixel (x, y) is
    ``y * width + x - org`` (the frame's counts: ``width`` W, ``org`` 0; or a buffer of the
    panel's rect alone; ``scratch``: :func:`splat_scratch`'s); returns the box
    ``[x0, y0, x1, y1)`` of the pixels added to."""
    ex, ey, first, fast, frac, phase = scratch
    row_step = np.uint64(width)
    sx, ox, sy, oy, hw, hh = xform[l, 0], xform[l, 1], xform[l, 2], xform[l, 3], xform[l, 4], xform[l, 5]
    x0, y0, x1, y1 = rect[l, 0], rect[l, 1], rect[l, 2], rect[l, 3]
    R = radius[l]
    n = 2 * R + 1
    un = np.uint64(n)
    base = offset[l]
    lo_x, lo_y, hi_x, hi_y = x1, y1, x0, y0
    s0 = starts[l]
    fives = n == 5
    if fives:
        lo_x, lo_y, hi_x, hi_y = _place_fives(xy, s0, starts[l + 1], xform[l], rect[l], width, org,
                                              first, frac, phase, fast)
    for i in range(s0, starts[l + 1]):
        k = i - s0
        if fives and fast[k]:
            # The factors kept in registers, the rows unrolled, the square's corners left
            # out: R = 2 means sigma <= 0.8, so the cut-off circle (2.5 sigma <= 2 px)
            # never reaches a corner's centre (>= 2.12 px off; there the weight is below
            # 0.7 FLOOR, its table error 7e-5): they add +0.0.
            e = _five(table, steps, np.uint64(base + phase[0][k] * 5), frac[0][k])
            g = _five(table, steps, np.uint64(base + phase[1][k] * 5), frac[1][k])
            a = np.uint64(first[k])
            _row3(flat, a, g[0], e)
            _row5(flat, a + row_step, g[1], e)
            _row5(flat, a + 2 * row_step, g[2], e)
            _row5(flat, a + 3 * row_step, g[3], e)
            _row3(flat, a + 4 * row_step, g[4], e)
            continue
        drawn, fx, fy = splat_centre(xy[i, 0], xy[i, 1], sx, ox, sy, oy, hw, hh)
        if not drawn:
            continue
        ix, iy = np.floor(fx), np.floor(fy)
        tx, ty = (fx - ix) * PHASES, (fy - iy) * PHASES
        px, py = min(int(tx), PHASES - 1), min(int(ty), PHASES - 1)
        tx -= px
        ty -= py
        rx, ry = np.uint64(base + px * n), np.uint64(base + py * n)
        cx, cy = int(ix) - R, int(iy) - R
        for j in range(un):
            ex[j] = table[rx + j] + tx * steps[rx + j]
            ey[j] = table[ry + j] + ty * steps[ry + j]
        ax, bx, ay, by = max(0, x0 - cx), min(n, x1 - cx), max(0, y0 - cy), min(n, y1 - cy)
        if ax >= bx or ay >= by:
            continue
        lo_x, hi_x = min(lo_x, cx + ax), max(hi_x, cx + bx)
        lo_y, hi_y = min(lo_y, cy + ay), max(hi_y, cy + by)
        at = np.uint64((cy + ay) * width + cx - org)
        jx0, jx1 = np.uint64(ax), np.uint64(bx)
        for jy in range(np.uint64(ay), np.uint64(by)):
            wy = ey[jy]
            for jx in range(jx0, jx1):
                w = ex[jx] * wy
                flat[at + jx] += np.float32(w if w >= FLOOR else 0.0)
            at += row_step
    if lo_x >= hi_x:  # nothing drawn
        lo_x, lo_y, hi_x, hi_y = x0, y0, x0, y0
    return lo_x, lo_y, hi_x, hi_y


def splat_numpy(xy, starts, xform, rect, table, steps, offset, radius, counts):
    """The numpy twin of :func:`splat_kernel` (same arguments, same in-place result; it forms
    the rows' differences itself rather than reading ``steps``)."""
    for l in range(len(starts) - 1):
        (sx, ox, sy, oy, hw, hh), (x0, y0, x1, y1), R = xform[l], rect[l], int(radius[l])
        n = 2 * R + 1
        T = table[offset[l]:offset[l] + (PHASES + 1) * n].reshape(PHASES + 1, n)
        p = xy[starts[l]:starts[l + 1]].astype(np.float64)
        u, v = p[:, 0] * sx, p[:, 1] * sy
        ok = np.isfinite(u) & np.isfinite(v)
        u, v = u[ok], v[ok]
        r = np.maximum(np.maximum(np.abs(u) / hw, np.abs(v) / hh), 1.0)  # pinned onto the box
        fx, fy = u / r + ox, v / r + oy
        factors = []
        for f in (fx, fy):
            i = np.floor(f)
            t = (f - i) * PHASES
            ph = np.minimum(t.astype(np.int64), PHASES - 1)
            t = (t - ph)[:, None]
            factors.append((i.astype(np.int64) - R, T[ph] + t * (T[ph + 1] - T[ph])))
        (cx, ex), (cy, ey) = factors
        # Deposits in the kernel's order: point by point, row by row, column by column.
        j = np.arange(n)
        xx = np.broadcast_to((cx[:, None] + j)[:, None, :], (len(fx), n, n))
        yy = np.broadcast_to((cy[:, None] + j)[:, :, None], xx.shape)
        w = ex[:, None, :] * ey[:, :, None]
        keep = (xx >= x0) & (xx < x1) & (yy >= y0) & (yy < y1) & (w >= FLOOR)
        np.add.at(counts, (yy[keep], xx[keep]), w[keep].astype(np.float32))


# --- how far the curves reach ----------------------------------------------------------------
# Between keyframes k and k+1 a coordinate follows the cubic ((a s + b) s + c) s + d of the
# Hermite interpolation (see _kernels.hermite_kernel); its largest |value| on [0, 1] is at an
# end or where its derivative 3a s^2 + 2b s + c vanishes -- looked for only where the curve's
# Bezier hull reaches beyond its ends.

@ngjit
def curve_extremes_kernel(P, times, k0, k1, out):
    """out[k, i, c] = max over s in [0, 1] of |coordinate c of point i| on segment k, for the
    segments k0 <= k < k1.

    P: (K, N, 2) float32 keyframe positions; times: (K,) float64; out: (K-1, N, 2) float64
    (NaN for a point that is not finite).
    """
    K = P.shape[0]
    for k in range(k0, k1):
        km = k - 1 if k > 0 else k
        kp = k + 2 if k + 2 < K else k + 1
        h = times[k + 1] - times[k]
        g0 = h / (times[k + 1] - times[km])
        g1 = h / (times[kp] - times[k])
        for i in range(P.shape[1]):
            for c in range(2):
                p0 = np.float64(P[k, i, c])
                p1 = np.float64(P[k + 1, i, c])
                t0 = (p1 - P[km, i, c]) * g0
                t1 = (P[kp, i, c] - p0) * g1
                best = max(abs(p0), abs(p1))
                # The curve lies in the hull of its Bezier points p0, p0 + t0/3, p1 - t1/3, p1:
                # inner points well inside the ends' reach mean the ends are the extremes.
                if max(abs(p0 + t0 / 3), abs(p1 - t1 / 3)) < best * (1.0 - 1e-9):
                    out[k, i, c] = best
                    continue
                a = 2 * p0 + t0 - 2 * p1 + t1
                b = -3 * p0 - 2 * t0 + 3 * p1 - t1
                qa, qb = 3 * a, 2 * b
                if qa != 0.0:
                    disc = qb * qb - 4 * qa * t0
                    if disc >= 0.0:
                        root = np.sqrt(disc)
                        for s in ((-qb + root) / (2 * qa), (-qb - root) / (2 * qa)):
                            if 0.0 < s < 1.0:
                                best = max(best, abs(((a * s + b) * s + t0) * s + p0))
                elif qb != 0.0:
                    s = -t0 / qb
                    if 0.0 < s < 1.0:
                        best = max(best, abs(((a * s + b) * s + t0) * s + p0))
                out[k, i, c] = best if np.isfinite(p0) and np.isfinite(p1) else np.nan


def curve_extremes_numpy(P, times):
    """The numpy twin of :func:`curve_extremes_kernel`; returns ``(K-1, N, 2)`` float64."""
    K = len(times)
    out = np.empty((K - 1,) + P.shape[1:])
    with np.errstate(all="ignore"):
        for k in range(K - 1):
            km, kp = max(k - 1, 0), min(k + 2, K - 1)
            h = times[k + 1] - times[k]
            p0, p1 = P[k].astype(np.float64), P[k + 1].astype(np.float64)
            t0 = (p1 - P[km]) * (h / (times[k + 1] - times[km]))
            t1 = (P[kp] - p0) * (h / (times[kp] - times[k]))
            a, b = 2 * p0 + t0 - 2 * p1 + t1, -3 * p0 - 2 * t0 + 3 * p1 - t1
            best = np.maximum(np.abs(p0), np.abs(p1))
            qa, qb = 3 * a, 2 * b
            root = np.sqrt(np.maximum(qb * qb - 4 * qa * t0, 0.0))
            real = qb * qb - 4 * qa * t0 >= 0
            for s in ((-qb + root) / (2 * qa), (-qb - root) / (2 * qa), -t0 / qb):
                inside = np.isfinite(s) & (s > 0) & (s < 1) & real
                value = np.abs(((a * s + b) * s + t0) * s + p0)
                best = np.where(inside & (value > best), value, best)
            out[k] = np.where(np.isfinite(p0) & np.isfinite(p1), best, np.nan)
    return out
