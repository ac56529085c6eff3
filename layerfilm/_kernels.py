"""The numba kernels, each beside a plain-numpy twin that tests compare it to.

Kernels trust their inputs (validation happened in ``config.py``) and run
single-threaded on purpose: ffmpeg needs the other cores, and ``parallel=True``
kernels fighting the encoder cost more than they win.  ``cache=True`` keeps the
compiled code on disk so a second run starts fast.
"""

from __future__ import annotations

import numba
import numpy as np

ngjit = numba.njit(cache=True, nogil=True, fastmath=False, error_model="numpy")


# --- interpolation ---------------------------------------------------------------------------
# Cubic Hermite through the keyframes with Catmull-Rom (finite-difference) tangents on a
# non-uniform time axis: positions pass exactly through every keyframe and the tangent at a
# keyframe is shared by the two segments that meet there, so velocity is continuous (no pulse).

@ngjit
def hermite_kernel(P, times, k, t, out):
    """Positions at time ``t`` in segment ``k`` (``times[k] <= t <= times[k+1]``).

    P: (K, N, 2) float32 keyframe positions; times: (K,) float64; out: (N, 2) float32.
    """
    K = P.shape[0]
    t0 = times[k]
    t1 = times[k + 1]
    h = t1 - t0
    s = (t - t0) / h
    s2 = s * s
    s3 = s2 * s
    h00 = 2.0 * s3 - 3.0 * s2 + 1.0
    h10 = s3 - 2.0 * s2 + s
    h01 = -2.0 * s3 + 3.0 * s2
    h11 = s3 - s2
    # Tangent weights: m_k = (P[k+1] - P[k-1]) / (t[k+1] - t[k-1]), one-sided at the ends.
    km = k - 1 if k > 0 else k
    kp = k + 2 if k + 2 < K else k + 1
    a0 = h10 * h / (times[k + 1] - times[km])
    a1 = h11 * h / (times[kp] - times[k])
    for i in range(P.shape[1]):
        for c in range(2):
            p0 = P[k, i, c]
            p1 = P[k + 1, i, c]
            m0 = (p1 - P[km, i, c]) * a0
            m1 = (P[kp, i, c] - p0) * a1
            out[i, c] = h00 * p0 + m0 + h01 * p1 + m1


def hermite_numpy(P, times, k, t):
    """The numpy twin of :func:`hermite_kernel`; returns ``(N, 2)`` float32."""
    P = P.astype(np.float64)
    K = len(times)
    km, kp = max(k - 1, 0), min(k + 2, K - 1)
    h = times[k + 1] - times[k]
    s = (t - times[k]) / h
    m0 = (P[k + 1] - P[km]) / (times[k + 1] - times[km])
    m1 = (P[kp] - P[k]) / (times[kp] - times[k])
    h00, h10 = 2 * s**3 - 3 * s**2 + 1, s**3 - 2 * s**2 + s
    h01, h11 = -2 * s**3 + 3 * s**2, s**3 - s**2
    return (h00 * P[k] + h10 * h * m0 + h01 * P[k + 1] + h11 * h * m1).astype(np.float32)


# --- rasterisation ---------------------------------------------------------------------------
# Each point is splatted bilinearly onto the 2x2 pixels around it (weight 1 in total), so a
# point moving by a fraction of a pixel moves smoothly instead of jumping.  ``xform`` maps a
# panel's data coordinates to frame pixels: px = x * sx + ox, py = y * sy + oy, and ``rect``
# clips deposits to the panel's interior.

@ngjit
def splat_kernel(xy, starts, xform, rect, counts):
    """Add every point of every panel into ``counts``.

    xy: (N, 2) float32; starts: (L+1,) int64 offsets of each panel's points;
    xform: (L, 4) float64 [sx, ox, sy, oy]; rect: (L, 4) int64 [x0, y0, x1, y1) half-open;
    counts: (H, W) float32, added to in place.
    """
    for l in range(starts.shape[0] - 1):
        sx = xform[l, 0]
        ox = xform[l, 1]
        sy = xform[l, 2]
        oy = xform[l, 3]
        x0 = rect[l, 0]
        y0 = rect[l, 1]
        x1 = rect[l, 2]
        y1 = rect[l, 3]
        for i in range(starts[l], starts[l + 1]):
            fx = xy[i, 0] * sx + ox - 0.5
            fy = xy[i, 1] * sy + oy - 0.5
            if not (fx > x0 - 1.0 and fx < x1 and fy > y0 - 1.0 and fy < y1):
                continue  # also drops NaN
            ix = int(np.floor(fx))
            iy = int(np.floor(fy))
            wx = np.float32(fx - ix)
            wy = np.float32(fy - iy)
            for dy in range(2):
                yy = iy + dy
                if yy < y0 or yy >= y1:
                    continue
                wyy = wy if dy == 1 else np.float32(1.0) - wy
                for dx in range(2):
                    xx = ix + dx
                    if xx < x0 or xx >= x1:
                        continue
                    wxx = wx if dx == 1 else np.float32(1.0) - wx
                    counts[yy, xx] += wxx * wyy


def splat_numpy(xy, starts, xform, rect, counts):
    """The numpy twin of :func:`splat_kernel` (same arguments, same in-place result)."""
    for l in range(len(starts) - 1):
        sx, ox, sy, oy = xform[l]
        x0, y0, x1, y1 = rect[l]
        p = xy[starts[l]:starts[l + 1]].astype(np.float64)
        fx, fy = p[:, 0] * sx + ox - 0.5, p[:, 1] * sy + oy - 0.5
        ok = (fx > x0 - 1) & (fx < x1) & (fy > y0 - 1) & (fy < y1)
        fx, fy = fx[ok], fy[ok]
        ix, iy = np.floor(fx).astype(np.int64), np.floor(fy).astype(np.int64)
        wx = (fx - ix).astype(np.float32)
        wy = (fy - iy).astype(np.float32)
        for dy, wyy in ((0, 1 - wy), (1, wy)):
            for dx, wxx in ((0, 1 - wx), (1, wx)):
                xx, yy = ix + dx, iy + dy
                inside = (xx >= x0) & (xx < x1) & (yy >= y0) & (yy < y1)
                np.add.at(counts, (yy[inside], xx[inside]), (wxx * wyy)[inside])


# --- shading ---------------------------------------------------------------------------------
# Density -> palette index.  Index ``base`` + j (j = 0 .. levels-1) holds colour j of the
# colormap; pixels with no density keep the background frame's index.

@ngjit
def shade_kernel(counts, span_scaled, log_scale, base, levels, frame):
    """Write palette indices for every pixel with density into ``frame`` and zero ``counts``.

    counts: (H, W) float32 (reset to 0 on return, ready for the next frame);
    span_scaled: log1p(span) or span; frame: (H, W) uint8, written in place.
    """
    top = levels - 1
    for y in range(counts.shape[0]):
        for x in range(counts.shape[1]):
            c = np.float64(counts[y, x])
            if c > 0.0:
                v = np.log1p(c) / span_scaled if log_scale else c / span_scaled
                j = int(v * top + 0.5)
                if j > top:
                    j = top
                frame[y, x] = base + j
                counts[y, x] = 0.0


def shade_numpy(counts, span_scaled, log_scale, base, levels, frame):
    """The numpy twin of :func:`shade_kernel`."""
    c = counts.astype(np.float64)
    hit = c > 0
    v = (np.log1p(c[hit]) if log_scale else c[hit]) / span_scaled
    j = np.minimum(np.floor(v * (levels - 1) + 0.5), levels - 1).astype(np.int64)
    frame[hit] = (base + j).astype(np.uint8)
    counts[...] = 0


# --- palette lookup --------------------------------------------------------------------------

@ngjit
def palette_rgb_kernel(frame, palette, out):
    """``out[y, x] = palette[frame[y, x]]``: (H, W) uint8 indices -> (H, W, 3) uint8 RGB."""
    for y in range(frame.shape[0]):
        for x in range(frame.shape[1]):
            i = frame[y, x]
            out[y, x, 0] = palette[i, 0]
            out[y, x, 1] = palette[i, 1]
            out[y, x, 2] = palette[i, 2]


def palette_rgb_numpy(frame, palette, out):
    """The numpy twin of :func:`palette_rgb_kernel`."""
    np.take(palette, frame, axis=0, out=out)


# --- fp16 -> fp32 ------------------------------------------------------------------------------
# numpy converts half floats one value at a time in software (~3.4 ns each here); most training
# checkpoints are fp16.  This is the exact bit-level conversion, in three loops the compiler
# vectorises: shift sign-less bits into place, rescale by 2**112 (which also turns fp16
# subnormals into the right float32 normals), then restore Inf/NaN exponents and the sign.

_TWO_POW_112 = np.float32(2.0 ** 112)


@ngjit
def half_to_float_kernel(src, out):
    """src: (a, b) uint16 bit patterns of IEEE binary16, any strides; out: (a, b) float32, C order."""
    a, b = src.shape
    flat = out.reshape(a * b)
    bits = flat.view(np.uint32)
    for i in range(a):
        for j in range(b):
            bits[i * b + j] = (np.uint32(src[i, j]) & np.uint32(0x7FFF)) << np.uint32(13)
    for i in range(a * b):
        flat[i] *= _TWO_POW_112
    for i in range(a):
        for j in range(b):
            h = np.uint32(src[i, j])
            v = bits[i * b + j] | ((h & np.uint32(0x8000)) << np.uint32(16))
            if (h & np.uint32(0x7C00)) == np.uint32(0x7C00):
                v |= np.uint32(0x7F800000)
            bits[i * b + j] = v


def half_to_float_numpy(src):
    """The numpy twin of :func:`half_to_float_kernel`."""
    return np.asarray(src).view(np.float16).astype(np.float32)
