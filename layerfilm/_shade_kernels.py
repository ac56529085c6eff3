"""The numba kernels that shade frames -- densities to palette indices, and the splat and the
shading fused panel by panel -- beside their plain-numpy twins (split from
:mod:`layerfilm._draw_kernels`, whose conventions they follow).
"""

from __future__ import annotations

import numpy as np

from ._draw_kernels import splat_panel, splat_scratch
from ._kernels import ngjit

# --- shading ---------------------------------------------------------------------------------
# Density -> palette index.  Index ``base`` + j (j = 0 .. levels-1) holds colour j of the
# colormap; pixels with no density keep the background frame's index.  On the log scale
# level j is the nearest to (levels - 1) * log(c / floor) / log(span / floor), clipped to the
# scale: ``floor`` is the faintest density drawn (a footprint's edge), so a lone dot (density 1
# at its centre) sits well up the colormap and only the film's densest pixel reaches the top.

@ngjit
def shade_kernel(counts, bits, lut, frame, boxes):
    """Write palette indices for every pixel with density inside ``boxes`` into ``frame`` and
    zero ``counts`` there.

    counts: (H, W) float32 (reset to 0 on return, ready for the next frame); bits: the same
    memory viewed as uint32; lut: a :class:`ShadeTable`'s arrays (see :func:`shade_table`);
    frame: (H, W) uint8, written in place; boxes: (M, 4) int64 ``[x0, y0, x1, y1)`` regions
    that hold every density (the panels' rects: nothing is deposited outside them).  Gives
    exactly :func:`shade_numpy`'s indices without a logarithm per pixel: a float's bit pattern
    orders positive floats, so its top bits pick a bin of the table, and each bin holds at
    most one colour boundary.
    """
    c_flat, b_flat, f_flat = counts.reshape(-1), bits.reshape(-1), frame.reshape(-1)
    width = counts.shape[1]
    for m in range(boxes.shape[0]):
        _shade_box(c_flat, b_flat, width, 0, lut, f_flat, width, boxes[m, 0], boxes[m, 1], boxes[m, 2], boxes[m, 3])


@ngjit
def _shade_box(c_flat, b_flat, c_width, c_org, lut, f_flat, f_width, x0, y0, x1, y1):
    """:func:`shade_kernel` in the box ``[x0, y0, x1, y1)``, whose pixel (x, y) is
    ``y * c_width + x - c_org`` of the densities and ``y * f_width + x`` of the frame;
    returns the largest density there."""
    lo, hi, shift, first, base, top, start_level, boundary = lut
    most = np.float32(0.0)
    n = np.uint64(x1 - x0)
    for y in range(y0, y1):
        c_at, f_at = np.uint64(y * c_width + x0 - c_org), np.uint64(y * f_width + x0)
        for i in range(n):
            x = c_at + i
            c = c_flat[x]
            if c > 0.0:
                most = max(most, c)
                if c < lo:
                    j = 0
                elif c >= hi:
                    j = top
                else:
                    k = np.uint64((b_flat[x] >> shift) - first)
                    j = start_level[k] + (1 if c >= boundary[k] else 0)
                f_flat[f_at + i] = base + j
                c_flat[x] = 0.0
    return most


@ngjit
def splat_shade_kernel(xy, starts, xform, rect, table, steps, offset, radius, counts, bits, touched, lut, frame,
                       peaks):
    """:func:`splat_kernel` then :func:`shade_kernel` over ``touched``, panel by panel through
    ``counts``, a float32 buffer (all zero, and zero again on return; ``bits``: the same
    memory as uint32) at least as long as the largest panel's rect: each panel's densities
    are deposited and shaded while they are in the nearest caches, where a frame's count
    image (8 MB at 1080p) went out to memory between the two passes.  The same sums, in the
    same order, so the same indices.  peaks: (L,) float32, set to each panel's densest pixel
    (what the colour span's pass wants of a panel's exact splat: one kernel, compiled once,
    for both)."""
    scratch = splat_scratch(starts)
    f_flat, f_width = frame.reshape(-1), frame.shape[1]
    for l in range(starts.shape[0] - 1):
        x0, y0, x1 = rect[l, 0], rect[l, 1], rect[l, 2]
        w, org = x1 - x0, y0 * (x1 - x0) + x0
        box = splat_panel(xy, l, starts, xform, rect, table, steps, offset, radius, counts, w, org, scratch)
        touched[l, 0], touched[l, 1], touched[l, 2], touched[l, 3] = box
        peaks[l] = _shade_box(counts, bits, w, org, lut, f_flat, f_width, box[0], box[1], box[2], box[3])


def shade_levels(c, span, floor, log_scale, levels):
    """Colour level (0 .. levels-1, int64) of densities ``c`` (float64): the formula that
    :func:`shade_kernel`'s table reproduces exactly."""
    c = np.asarray(c, dtype=np.float64)
    v = np.log(np.maximum(c, floor) / floor) / np.log(span / floor) if log_scale else c / span
    return np.minimum(np.floor(v * (levels - 1) + 0.5), levels - 1).astype(np.int64)


def shade_table(span, floor, log_scale, base, levels):
    """The lookup table :func:`shade_kernel` uses in place of :func:`shade_levels`.

    For every level j its boundary -- the smallest float32 density that :func:`shade_levels`
    gives level j or more -- is found by bisection on float32 bit patterns; the densities
    between the first and the last boundary are then binned by the top bits of their bit
    pattern, each bin storing its level at the start and the boundary inside it, if any.
    Returns ``(lo, hi, shift, first, base, top, start_level, boundary)``.
    """
    top = levels - 1

    def level(c32):
        return shade_levels(c32.astype(np.float64), span, floor, log_scale, levels)

    # Smallest positive float32 (as bits) reaching each level 1..top, all levels at once.
    want = np.arange(1, top + 1)
    lo_b = np.zeros(top, np.int64)
    hi_b = np.full(top, np.float32(np.finfo(np.float32).max).view(np.uint32), np.int64)
    while (hi_b - lo_b > 1).any():
        mid = (lo_b + hi_b) // 2
        ok = level(mid.astype(np.uint32).view(np.float32)) >= want
        hi_b = np.where(ok, mid, hi_b)
        lo_b = np.where(ok, lo_b, mid)
    edges = hi_b  # bits of the boundaries, non-decreasing
    for shift in range(13, -1, -1):  # bins fine enough that none holds two boundaries
        b = edges >> shift
        if (np.diff(b) > 0).all():
            break
    first, last = int(b[0]), int(b[-1])
    starts = ((np.arange(first, last + 1, dtype=np.int64)) << shift).astype(np.uint32)
    start_level = level(starts.view(np.float32)).astype(np.int64)
    # The one boundary a bin can hold is that of the level after the bin's first one.
    as_float = edges.astype(np.uint32).view(np.float32)  # as_float[j - 1]: level j's boundary
    nxt = np.minimum(start_level + 1, top)
    inside = (start_level < top) & ((edges[nxt - 1] >> shift) == np.arange(first, last + 1))
    boundary = np.where(inside, as_float[nxt - 1], np.float32(np.inf)).astype(np.float32)
    return (np.float32(as_float[0]), np.float32(as_float[-1]), np.uint32(shift), np.uint32(first),
            np.uint8(base), np.int64(top), start_level, boundary)


def shade_numpy(counts, span, floor, log_scale, base, levels, frame):
    """The numpy twin of :func:`shade_kernel`."""
    c = counts.astype(np.float64)
    hit = c > 0
    frame[hit] = (base + shade_levels(c[hit], span, floor, log_scale, levels)).astype(np.uint8)
    counts[...] = 0


