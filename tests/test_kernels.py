"""Every numba kernel against its numpy twin, plus the properties that matter on screen."""

import numpy as np
import pytest

from layerfilm import _draw_kernels as D
from layerfilm import _shade_kernels as SH
from layerfilm import _kernels as K
from layerfilm import _plane_kernels as PK
from layerfilm import _read_kernels as RK
from layerfilm import _span_kernels as S
from layerfilm.interpolate import Interpolator, frame_count, keyframe_times
from layerfilm.raster import Rasterizer
from layerfilm.shade import (CMAP_LOW, DENSITY_BASE, DENSITY_LEVELS, REBEL, SETTLED, TEXT_BASE, TEXT_LEVELS,
                             UNUSED, Shader, palette)


@pytest.fixture
def track():
    rng = np.random.default_rng(0)
    P = rng.normal(size=(6, 40, 2)).astype(np.float32)
    times = np.array([0.0, 3.0, 5.0, 11.0, 12.0, 20.0])  # uneven on purpose
    return P, times


def test_hermite_kernel_equals_numpy_twin(track):
    P, times = track
    out = np.empty((40, 2), np.float32)
    for t in np.linspace(0, 20, 57):
        k = min(int(np.searchsorted(times, t, side="right")) - 1, len(times) - 2)
        K.hermite_at(P, times, k, t, out)
        np.testing.assert_allclose(out, K.hermite_numpy(P, times, k, t), rtol=1e-6, atol=1e-6)


def test_hermite_of_a_panels_columns_is_the_films_to_the_bit(track):
    """The colour span's exact splats interpolate one panel's points (``P[:, a:b]``, a
    strided view): the very bits the film's frames get from the whole array."""
    P, times = track
    whole, part = np.empty((40, 2), np.float32), np.empty((17, 2), np.float32)
    for t in np.linspace(0, 20, 57):
        k = min(int(np.searchsorted(times, t, side="right")) - 1, len(times) - 2)
        K.hermite_at(P, times, k, t, whole)
        K.hermite_at(P[:, 11:28], times, k, t, part)
        assert np.array_equal(part.view(np.uint32), whole[11:28].view(np.uint32))
    with pytest.raises(ValueError):  # never written into a copy of ``out``
        K.hermite_at(P, times, 0, 1.0, np.empty((2, 40), np.float32).T)


def test_passes_exactly_through_every_keyframe(track):
    P, times = track
    interp = Interpolator(P, times)
    for k, t in enumerate(times):
        np.testing.assert_array_equal(interp.at(t), P[k])  # bit-exact, not approximately


def test_velocity_is_continuous_at_keyframes(track):
    P, times = track
    h = 1e-4
    for k in range(1, len(times) - 1):
        t = times[k]
        # One-sided derivatives from inside each neighbouring segment (float64 twin: no rounding noise).
        left = (K.hermite_numpy(P, times, k - 1, t) - K.hermite_numpy(P, times, k - 1, t - h)) / h
        right = (K.hermite_numpy(P, times, k, t + h) - K.hermite_numpy(P, times, k, t)) / h
        np.testing.assert_allclose(left, right, atol=5e-3)
        # ... and the shared tangent is the Catmull-Rom finite difference.
        m = (P[k + 1].astype(np.float64) - P[k - 1]) / (times[k + 1] - times[k - 1])
        np.testing.assert_allclose(right, m, atol=5e-3)
    # Piecewise-linear motion would fail this: check the test can fail.
    lin = lambda t, k: P[k] + (P[k + 1] - P[k]) * (t - times[k]) / (times[k + 1] - times[k])
    left = (lin(times[1], 0) - lin(times[1] - h, 0)) / h
    right = (lin(times[1] + h, 1) - lin(times[1], 1)) / h
    assert np.abs(left - right).max() > 0.1


def test_frame_times():
    times = keyframe_times(4, 25)
    assert list(times) == [0, 25, 50, 75] and frame_count(times) == 76


def _panels():
    rects = np.array([[2, 3, 42, 43], [50, 3, 90, 43]], np.int64)
    starts = np.array([0, 300, 500], np.int64)
    return rects, starts


@pytest.mark.parametrize("sigma", [[0.6, 0.6], [0.8, 0.41], [1.3, 2.7], [4.0, 0.9]])
def test_splat_kernel_equals_numpy_twin(sigma):
    rng = np.random.default_rng(1)
    rects, starts = _panels()
    r = Rasterizer((100, 50), rects, np.array([10.0, 20.0]), np.array(sigma), starts)
    xy = (rng.normal(size=(500, 2)) * 1.2).astype(np.float32)  # some fall outside their panel
    xy[5] = np.nan
    xy[6] = [np.inf, 0]
    xy[10:20] = np.arange(-5, 5)[:, None] / np.float32(10)  # on (just past) pixel corners
    a, b = np.zeros((50, 100), np.float32), np.zeros((50, 100), np.float32)
    touched = np.full((2, 4), -1, np.int64)
    D.splat_kernel(xy, starts, r.xform, rects, *r.footprint, a, touched)
    D.splat_numpy(xy, starts, r.xform, rects, *r.footprint, b)
    np.testing.assert_array_equal(a, b)  # same deposits in the same order: the same bits
    assert a[:, :2].sum() == 0 and a[:3].sum() == 0 and a[:, 42:50].sum() == 0  # nothing outside panels
    for (x0, y0, x1, y1), (r0, s0, r1, s1) in zip(touched, rects):  # every count inside its box
        assert r0 <= x0 < x1 <= r1 and s0 <= y0 < y1 <= s1
        inside = np.zeros(a.shape, bool)
        inside[y0:y1, x0:x1] = True
        panel = np.zeros(a.shape, bool)
        panel[s0:s1, r0:r1] = True
        assert not a[panel & ~inside].any()
        ys, xs = np.nonzero(a[y0:y1, x0:x1])  # and the box is no larger than the footprints
        assert ys.min() <= 1 and xs.min() <= 1 and ys.max() >= y1 - y0 - 2 and xs.max() >= x1 - x0 - 2


def test_splat_kernel_pins_exactly_as_the_twin_at_the_edge_of_the_box():
    # The kernel tells a point inside its box by comparisons, the twin by dividing: points on
    # the edge, one float32 step either side of it and far beyond, and a panel too small to
    # have a box at all (its half-width minus the pad is 0), must land on the same pixels.
    rects = np.array([[2, 3, 42, 43], [50, 3, 54, 43]], np.int64)
    edge = np.float32(18 / 8)  # half-width 20 - pad 2, at 8 pixels per unit: exact in float32
    xs = np.array([edge, np.nextafter(edge, np.float32(0)), np.nextafter(edge, np.float32(9)), 9.0],
                  np.float32)
    first = [(sx * x, sy * y) for x in (0.0, *xs) for y in (0.0, *xs) for sx in (1, -1) for sy in (1, -1)]
    second = [(sx * x, sy * y) for x in xs for y in (0.0, *xs) for sx in (1, -1) for sy in (1, -1)]
    xy = np.array(first + second, np.float32)  # (0 / 0 in the box-less panel: the twin's NaN)
    starts = np.array([0, len(first), len(first) + len(second)], np.int64)
    r = Rasterizer((100, 50), rects, np.array([8.0, 8.0]), np.array([0.6, 0.6]), starts)
    assert r.xform[0, 4] * r.xform[0, 0] ** -1 == edge and r.xform[1, 4] == 0.0
    a, b = np.zeros((50, 100), np.float32), np.zeros((50, 100), np.float32)
    D.splat_kernel(xy, starts, r.xform, rects, *r.footprint, a, np.zeros((2, 4), np.int64))
    with np.errstate(divide="ignore", invalid="ignore"):  # the box of width 0
        D.splat_numpy(xy, starts, r.xform, rects, *r.footprint, b)
    np.testing.assert_array_equal(a, b)
    assert a[:, 2:42].any() and a[:, 50:54].any()


def test_splat_kernel_small_dots_placed_at_once_as_one_by_one():
    # The smallest dots (R = 2) are placed a panel at a time, every point's square in one
    # branch-free pass: points pinned onto a box far inside the panel (a hand-made xform, so
    # that a pinned point's own square would still fit the rect), points on pixel corners,
    # not finite ones and squares across the rect's edge must land as the twin puts them, and
    # each panel's touched box must be exactly the squares drawn.
    rng = np.random.default_rng(7)
    rects = np.array([[2, 3, 42, 43], [50, 3, 90, 43]], np.int64)
    starts = np.array([0, 300, 500], np.int64)
    r = Rasterizer((100, 50), rects, np.array([10.0, 10.0]), np.array([0.6, 0.6]), starts)
    assert (r.radius == 2).all()
    xform = r.xform.copy()
    xform[0, 4:] = 6.0  # panel 0: a box of +-6 px inside a 40 px rect: pinning moves dots
    xy = (rng.normal(size=(500, 2)) * 0.5).astype(np.float32)
    xy[7], xy[8], xy[9] = np.nan, [0.1, np.inf], [1.78, -1.9]  # 1.78: a square over panel 1's edge
    xy[310:320] = np.arange(-5, 5)[:, None] / np.float32(10)  # on pixel corners
    a, b = np.zeros((50, 100), np.float32), np.zeros((50, 100), np.float32)
    touched = np.full((2, 4), -1, np.int64)
    D.splat_kernel(xy, starts, xform, rects, *r.footprint, a, touched)
    D.splat_numpy(xy, starts, xform, rects, *r.footprint, b)
    np.testing.assert_array_equal(a, b)
    for l in range(2):
        (sx, ox, sy, oy, hw, hh), (x0, y0, x1, y1) = xform[l], rects[l]
        p = xy[starts[l]:starts[l + 1]].astype(np.float64)
        u, v = p[:, 0] * sx, p[:, 1] * sy
        ok = np.isfinite(u) & np.isfinite(v)
        scale = np.maximum(np.maximum(np.abs(u[ok]) / hw, np.abs(v[ok]) / hh), 1.0)
        cx = np.floor(u[ok] / scale + ox).astype(np.int64) - 2
        cy = np.floor(v[ok] / scale + oy).astype(np.int64) - 2
        want = [max(cx.min(), x0), max(cy.min(), y0), min(cx.max() + 5, x1), min(cy.max() + 5, y1)]
        assert touched[l].tolist() == want
    assert (np.abs(xy[:300] * 10) > 6).any(axis=1).sum() > 20  # pinned dots were there


def _crowd(seed, K=5, N=400):
    """Keyframes of two panels whose dots gather into tight clumps and part again (dense
    pixels between keyframes), a few far outside their panel (pinned), one not finite."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(8, 2)) * 0.8
    home = centres[rng.integers(0, 8, N)]
    P = np.stack([home + rng.normal(size=(N, 2)) * (0.02 if k % 2 else 0.6) for k in range(K)])
    P[:, :4] *= 9.0  # beyond the panel: pinned onto its edge
    P[2, 7] = np.nan
    return P.astype(np.float32), np.array([0.0, 6.0, 9.0, 17.0, 20.0])[:K]


@pytest.mark.parametrize("sigma", [[0.68, 0.68], [1.3, 2.7]])
def test_bound_kernel_equals_numpy_twin_and_bounds_every_frame_it_covers(sigma):
    # The bound for a group of frames is at least the densest pixel of each panel in each of
    # those frames, measured by the numpy twins of the interpolation and the splat.
    P, times = _crowd(2)
    rects = np.array([[2, 3, 62, 53], [70, 3, 130, 53]], np.int64)
    starts = np.array([0, 250, 400], np.int64)
    r = Rasterizer((140, 60), rects, np.array([14.0, 9.0]), np.array(sigma), starts)
    margin = S.bound_margin(np.diff(starts))
    G, tight, moved = 5, [], 0
    stack = np.empty((G, 400, 2), np.float32)
    image, peaks = np.zeros((60, 140), np.float32), np.empty(2, np.float32)
    for a in range(0, frame_count(times), G):
        frames = range(a, min(a + G, frame_count(times)))
        for j, f in enumerate(frames):
            k = min(int(np.searchsorted(times, f, side="right")) - 1, len(times) - 2)
            stack[j] = K.hermite_numpy(P, times, k, float(f))
        S.bound_kernel(stack, len(frames), starts, r.xform, rects, r.falloff, r.falloff_offset,
                       r.radius, image, peaks)
        twin = S.bound_numpy(stack, len(frames), starts, r.xform, rects, r.falloff, r.falloff_offset,
                             r.radius, image.shape)
        np.testing.assert_array_equal(peaks, twin)
        assert not image.any()  # left zero for the next group
        for l in range(2):
            densest = 0.0
            for j in range(len(frames)):
                counts = np.zeros_like(image)
                D.splat_numpy(stack[j], starts[l:l + 2], r.xform[l:l + 1], rects[l:l + 1], r.table, r.steps,
                              r.offset[l:l + 1], r.radius[l:l + 1], counts)
                densest = max(densest, float(counts.max()))
            if np.isinf(peaks[l]):
                moved += 1
                continue
            assert peaks[l] * margin[l] >= densest, (a, l)
            tight.append(peaks[l] / densest)
    assert tight and np.median(tight) < 2.0  # a bound, but a close one
    assert moved >= 1  # the groups where dots race from clump to clump are left to the splat


def test_colour_span_is_the_densest_pixel_of_every_frame_exactly():
    # The span's pass splats only the (group, panel) pairs whose bound could beat what it has
    # found: the result is the plain maximum over every frame, to the bit.
    P, times = _crowd(3)
    rects = np.array([[2 + 34 * i, 3 + 30 * j, 32 + 34 * i, 31 + 30 * j] for j in range(2) for i in range(4)],
                     np.int64)
    starts = np.arange(0, 401, 50, dtype=np.int64)
    r = Rasterizer((140, 64), rects, np.full(8, 7.0), np.full(8, 0.68), starts)
    want = 1.0
    for f in range(frame_count(times)):
        k = min(int(np.searchsorted(times, f, side="right")) - 1, len(times) - 2)
        counts = np.zeros((64, 140), np.float32)
        D.splat_numpy(K.hermite_numpy(P, times, k, float(f)), starts, r.xform, rects, *r.footprint, counts)
        want = max(want, float(counts.max()))
    assert want > 3.0
    assert r.span(P, times) == want


def test_bound_counts_dots_pinned_or_missing_in_some_frames():
    # Points inside their box in every frame are boxed in one vectorised pass, the rest
    # (pinned onto the box's edge, or not finite, in some frame) frame by frame: a pile of
    # pinned dots is the densest pixel here, and must be under the bound.
    rng = np.random.default_rng(3)
    P = (rng.normal(size=(60, 2)) * 0.5 + rng.normal(size=(4, 60, 2)) * 0.05).astype(np.float32)
    P[:, :30] = [40.0, 0.5]  # far beyond the right edge: pinned onto one spot, 30 deep
    P[:, 30:34] = [2.7, -0.5]  # by the box's edge (2.8): inside, then pinned in between
    P[1:3, 30:34] = [2.95, -0.5]
    P[2, 40:45] = np.nan  # missing at one keyframe
    times = np.array([0.0, 3.0, 6.0, 9.0])
    rects = np.array([[2, 3, 62, 53]], np.int64)
    starts = np.array([0, 60], np.int64)
    r = Rasterizer((70, 60), rects, np.array([10.0]), np.array([0.68]), starts)
    stack = np.stack([K.hermite_numpy(P, times, min(f // 3, 2), float(f)) for f in range(8)])
    image, peaks = np.zeros((60, 70), np.float32), np.empty(1, np.float32)
    S.bound_kernel(stack, 8, starts, r.xform, rects, r.falloff, r.falloff_offset, r.radius, image, peaks)
    twin = S.bound_numpy(stack, 8, starts, r.xform, rects, r.falloff, r.falloff_offset, r.radius, image.shape)
    np.testing.assert_array_equal(peaks, twin)
    densest = 0.0
    for j in range(8):
        counts = np.zeros_like(image)
        D.splat_numpy(stack[j], starts, r.xform, rects, r.table, r.steps, r.offset, r.radius, counts)
        densest = max(densest, float(counts.max()))
    assert densest > 20  # the pinned pile (30 dots on one spot)
    assert np.isfinite(peaks[0]) and peaks[0] * S.bound_margin(np.diff(starts))[0] >= densest


def test_colour_span_looks_past_a_high_bound_to_the_densest_pixel():
    # Panel 1's six dots, 2 px apart, each move 7 px within a group of frames: their boxes
    # overlap, so its bound is the highest, but no two meet (densest about 1); panel 0's two
    # dots sit still on one spot (densest about 2).  The densest pixel is behind a lower bound.
    times, scale = np.array([0.0, 8.0, 16.0]), 7.0
    still = np.broadcast_to(np.array([0.5, -0.5]) / scale, (3, 2, 2))  # on a pixel centre
    row = np.stack([np.stack([(2.0 * np.arange(6) + 0.875 * t - 12) / scale, np.zeros(6)], axis=1)
                    for t in times])
    P = np.concatenate([still, row], axis=1).astype(np.float32)
    rects = np.array([[2, 2, 32, 32], [40, 2, 70, 32]], np.int64)
    starts = np.array([0, 2, 8], np.int64)
    r = Rasterizer((72, 34), rects, np.full(2, scale), np.full(2, 0.68), starts)
    stack = np.stack([K.hermite_numpy(P, times, 0, float(f)) for f in range(8)])
    peaks = np.empty(2, np.float32)
    S.bound_kernel(stack, 8, starts, r.xform, rects, r.falloff, r.falloff_offset, r.radius,
                   np.zeros((34, 72), np.float32), peaks)
    densest = []
    for l in range(2):
        top = 0.0
        for f in range(frame_count(times)):
            counts = np.zeros((34, 72), np.float32)
            k = min(f // 8, 1)
            D.splat_numpy(K.hermite_numpy(P, times, k, float(f)), starts[l:l + 2], r.xform[l:l + 1],
                          rects[l:l + 1], r.table, r.steps, r.offset[l:l + 1], r.radius[l:l + 1], counts)
            top = max(top, float(counts.max()))
        densest.append(top)
    assert peaks[1] > peaks[0] and densest[1] < 1.2 < 1.5 < densest[0]
    assert r.span(P, times) == densest[0]


def test_splat_kernel_marks_a_panel_with_nothing_drawn_as_empty():
    rects, starts = _panels()
    r = Rasterizer((100, 50), rects, np.array([10.0, 20.0]), np.array([1.0, 1.0]), starts)
    xy = np.zeros((500, 2), np.float32)
    xy[300:] = np.nan  # panel 1: no finite dot
    counts = r(xy)
    (a0, b0, a1, b1), (c0, d0, c1, d1) = r.touched
    assert a1 > a0 and b1 > b0 and c1 == c0  # panel 1's box is empty
    assert counts[:, 50:].sum() == 0


def test_splat_footprint_against_an_independent_gaussian():
    """A lone dot is exp(-d^2 / 2 sigma^2) at every pixel centre within 2.5 sigma of it (1 at its
    centre), at the place the transform says; overlapping dots add up."""
    rects, starts = _panels()
    sigma = np.array([1.5, 2.0])
    r = Rasterizer((100, 50), rects, np.array([10.0, 20.0]), sigma, starts)
    xy = np.zeros((500, 2), np.float32)
    xy[:300] = [0.53, 0.31]  # panel 0: 10 px/unit about its centre (22, 23) -> (27.3, 19.9)
    xy[300:] = [-0.25, 0.0]  # panel 1: 20 px/unit about (70, 23) -> (65.0, 23.0)
    counts = r(xy)
    yy, xx = np.mgrid[0:50, 0:100] + 0.5
    for (cx, cy), n, s, (x0, y0, x1, y1) in (((27.3, 23 - 3.1), 300, 1.5, rects[0]),
                                              ((65.0, 23.0), 200, 2.0, rects[1])):
        d2 = (xx - cx) ** 2 + (yy - cy) ** 2
        want = np.where(d2 <= (2.5 * s) ** 2, n * np.exp(-d2 / (2 * s * s)), 0.0)
        inside = np.zeros_like(want, dtype=bool)
        inside[y0:y1, x0:x1] = True
        # The footprint is interpolated between 65 sub-pixel rows: within 7e-5 of exact per dot.
        np.testing.assert_allclose(counts[inside], want[inside], rtol=0, atol=n * 7e-5)
    assert counts[22:24, 64:66].max() == pytest.approx(200 * np.exp(-0.5 / 8), rel=1e-5)


def test_dots_beyond_the_range_are_pinned_to_the_edge():
    rects, starts = _panels()
    r = Rasterizer((100, 50), rects, np.array([10.0, 20.0]), np.array([1.0, 1.0]), starts)
    hw, hh = r.xform[0, 4], r.xform[0, 5]  # the drawing box: the rect less the edge pad
    xy = np.zeros((500, 2), np.float32)
    xy[:300] = [5.0, 2.5]  # 50 px right and 25 px up of the centre: far outside panel 0
    xy[300:] = [0.0, 0.0]
    counts = r(xy)
    # Pinned along its direction onto the box: x = 22 + hw, y = 23 - hw / 2.
    left = counts[:, :45]
    y, x = np.unravel_index(np.argmax(left), left.shape)
    assert abs(x + 0.5 - (22 + hw)) <= 0.5 and abs(y + 0.5 - (23 - hw / 2)) <= 0.5
    assert counts[:, :45].sum() > 300 * 5.5  # all of them drawn (about 2 pi sigma^2 each), none dropped
    np.testing.assert_allclose(r.limits[0], [hw / 10, hh / 10])


@pytest.mark.parametrize("log", [True, False])
@pytest.mark.parametrize("span", [1.0, 7.3, 99.0, 1234.5])
def test_shade_kernel_equals_numpy_twin_and_resets(log, span):
    rng = np.random.default_rng(2)
    shader = Shader(span=span, scale="log" if log else "linear")
    lo, hi, shift, first, base, top, start_level, boundary = shader.table
    # Random densities over the whole range, plus every colour boundary and the float32 just
    # below it: where a table that is off by one ulp would show.
    edges = boundary[np.isfinite(boundary)]
    values = np.concatenate([
        rng.exponential(span / 4, 4000), rng.uniform(0, 3 * span, 4000), 10.0 ** rng.uniform(-8, 1, 2000),
        edges, np.nextafter(edges, np.float32(0)), [lo, hi, np.nextafter(lo, np.float32(0))],
    ]).astype(np.float32)
    counts = np.where(rng.random(values.size) < 0.1, 0, values).astype(np.float32)
    counts = np.pad(counts, (0, (-counts.size) % 100)).reshape(-1, 100)
    a, b = np.zeros(counts.shape, np.uint8), np.zeros(counts.shape, np.uint8)
    ca, cb = counts.copy(), counts.copy()
    shader(ca, a)
    SH.shade_numpy(cb, span, shader.floor, log, DENSITY_BASE, DENSITY_LEVELS, b)
    np.testing.assert_array_equal(a, b)
    assert not ca.any()
    assert (a[counts > 0] >= DENSITY_BASE).all() and (a[counts == 0] == 0).all()
    assert a.max() == DENSITY_BASE + DENSITY_LEVELS - 1  # counts above the span clip to the top
    assert a.max() < SETTLED


def test_log_scale_against_independent_formula():
    """log(c / floor) / log(span / floor), floor = a footprint's edge weight exp(-2.5**2 / 2):
    a lone dot's centre (1) sits a third of the way up a span of 99, not at the bottom."""
    counts = np.array([[0, 0.01, 0.05, 0.5, 1, 4, 9, 99, 500]], np.float32)
    frame = np.zeros_like(counts, dtype=np.uint8)
    c = np.maximum(counts[0, 1:].astype(np.float64), np.exp(-2.5 ** 2 / 2))
    Shader(span=99.0, scale="log")(counts, frame)
    floor = np.exp(-2.5 ** 2 / 2)
    v = np.minimum(np.log(c / floor) / np.log(99 / floor), 1.0)
    assert list(frame[0]) == [0] + list(DENSITY_BASE + np.floor(v * (DENSITY_LEVELS - 1) + 0.5).astype(int))
    one = (frame[0, 4] - DENSITY_BASE) / (DENSITY_LEVELS - 1)
    assert 0.35 < one < 0.45  # a lone dot: well above the faint end
    assert frame[0, 1] == DENSITY_BASE  # below the floor: the faintest colour


def test_palette_layout():
    pal = palette("viridis")
    assert pal.shape == (256, 3) and pal.dtype == np.uint8
    assert (pal[0] == 0).all()
    grey = pal[TEXT_BASE:TEXT_BASE + TEXT_LEVELS]
    assert (grey[:, 0] == grey[:, 1]).all() and (np.diff(grey[:, 0].astype(int)) > 0).all()
    assert tuple(grey[-1]) == (255, 255, 255)
    import matplotlib

    np.testing.assert_allclose(pal[DENSITY_BASE + DENSITY_LEVELS - 1] / 255,
                               matplotlib.colormaps["viridis"](1.0)[:3], atol=1 / 255)
    assert tuple(pal[SETTLED]) == (63, 208, 255) and tuple(pal[REBEL]) == (92, 255, 122)
    assert (pal[UNUSED] == 0).all()


@pytest.mark.parametrize("cmap", ["inferno", "viridis", "magma", "gray", "turbo", "cividis"])
def test_density_colours_are_distinct_and_follow_the_colormap(cmap):
    """Every one of the 237 density levels has its own colour (inferno sampled at its nearest
    table entries repeats 59 of 239), each within 3/255 per channel of the colormap interpolated
    linearly by numpy, in order along it."""
    import matplotlib

    cm = matplotlib.colormaps[cmap]
    dens = palette(cmap)[DENSITY_BASE:DENSITY_BASE + DENSITY_LEVELS].astype(int)
    assert len({tuple(c) for c in dens}) == DENSITY_LEVELS
    table = cm(np.linspace(0, 1, cm.N))[:, :3]
    x = np.linspace(CMAP_LOW, 1, DENSITY_LEVELS) * (cm.N - 1)
    want = np.stack([np.interp(x, np.arange(cm.N), table[:, c]) for c in range(3)], axis=1) * 255
    assert np.abs(dens - want).max() <= 3.5


def test_palette_rgb_kernel_equals_numpy_twin():
    rng = np.random.default_rng(3)
    frame = rng.integers(0, 256, (37, 53)).astype(np.uint8)
    pal = rng.integers(0, 256, (256, 3)).astype(np.uint8)
    a, b = np.empty((37, 53, 3), np.uint8), np.empty((37, 53, 3), np.uint8)
    K.palette_rgb_kernel(frame, pal, a)
    K.palette_rgb_numpy(frame, pal, b)
    np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(a, pal[frame])


@pytest.mark.parametrize("size", [(53, 37), (64, 8), (5, 3)])  # odd sizes: the tail under 8 pixels
def test_rgb_frames_converts_only_what_changed_and_equals_the_palette_lookup(size):
    """Film writers convert only the pixels that changed since the last frame: every frame
    of a sequence (unchanged, a few pixels, the tail, everything) still reads palette[frame]."""
    from layerfilm.encode.ffmpeg import RGBFrames

    rng = np.random.default_rng(4)
    w, h = size
    pal = rng.integers(0, 256, (256, 3)).astype(np.uint8)
    rgb = RGBFrames(size, pal)
    frame = rng.integers(0, 256, (h, w)).astype(np.uint8)
    for change in ["none", "few", "last", "all", "first", "none"]:
        if change == "few":
            frame[rng.integers(0, h, 5), rng.integers(0, w, 5)] += 1
        elif change == "last":
            frame[-1, -1] += 7
        elif change == "first":
            frame[0, 0] += 3
        elif change == "all":
            frame = rng.integers(0, 256, (h, w)).astype(np.uint8)
        np.testing.assert_array_equal(rgb(frame), pal[frame])


def test_shade_kernel_in_boxes_shades_only_there():
    """The composer shades only the panels' rects (nothing is deposited elsewhere): inside
    them the indices are the whole-frame kernel's, outside nothing is read or written."""
    rng = np.random.default_rng(6)
    shader = Shader(span=30.0)
    counts = np.where(rng.random((50, 70)) < 0.5, rng.exponential(5, (50, 70)), 0).astype(np.float32)
    boxes = np.array([[0, 0, 30, 20], [40, 10, 70, 50]], np.int64)
    inside = np.zeros(counts.shape, bool)
    for x0, y0, x1, y1 in boxes:
        inside[y0:y1, x0:x1] = True
    whole, part = np.full(counts.shape, 9, np.uint8), np.full(counts.shape, 9, np.uint8)
    c = counts.copy()
    shader(counts.copy(), whole)
    shader(c, part, boxes)
    np.testing.assert_array_equal(part[inside], whole[inside])
    assert (part[~inside] == 9).all() and np.array_equal(c[~inside], counts[~inside]) and not c[inside].any()



@pytest.mark.parametrize("sigma", [[0.6, 0.6, 0.6], [0.8, 1.3, 4.0], [2.7, 0.41, 0.6]])
def test_splat_shade_kernel_is_the_splat_then_the_shading(sigma):
    """A frame's splat and shading fused panel by panel, through a buffer of one panel's rect,
    give the whole-frame splat's boxes and the shading's indices pixel for pixel: points
    inside, pinned to the edge, on pixel corners, not finite, squares across a rect's edge,
    panels of different widths and one with nothing drawn; the buffer is all zero after, and
    nothing outside the touched boxes is written."""
    rng = np.random.default_rng(8)
    rects = np.array([[2, 3, 42, 43], [50, 5, 97, 30], [60, 33, 70, 48]], np.int64)
    starts = np.array([0, 300, 500, 500], np.int64)
    r = Rasterizer((100, 50), rects, np.array([10.0, 9.0, 3.0]), np.array(sigma), starts)
    xy = (rng.normal(size=(500, 2)) * 1.3).astype(np.float32)  # some pinned to the edge
    xy[5], xy[6], xy[7] = np.nan, [np.inf, 0], [1.78, -1.9]
    xy[310:320] = np.arange(-5, 5)[:, None] / np.float32(10)  # on pixel corners
    xy[20:40] = xy[40]  # a pile-up: densities up the whole scale
    shader = Shader(span=12.0)
    counts, whole = np.zeros((50, 100), np.float32), np.full((50, 100), 7, np.uint8)
    touched = np.full((3, 4), -1, np.int64)
    D.splat_kernel(xy, starts, r.xform, rects, *r.footprint, counts, touched)
    assert counts.max() > 1.0
    densest = [counts[y0:y1, x0:x1].max() for x0, y0, x1, y1 in rects]
    shader(counts, whole, touched)
    fused, box = np.full((50, 100), 7, np.uint8), np.full((3, 4), -1, np.int64)
    buffer, peaks = np.zeros(40 * 40, np.float32), np.full(3, -1, np.float32)  # rects <= 40 x 40
    SH.splat_shade_kernel(xy, starts, r.xform, rects, *r.footprint, buffer, buffer.view(np.uint32),
                          box, shader.table, fused, peaks)
    np.testing.assert_array_equal(box, touched)
    np.testing.assert_array_equal(fused, whole)
    np.testing.assert_array_equal(peaks, densest)  # each panel's densest pixel, to the bit
    assert (fused != 7).sum() > 1000 and not buffer.any()
    assert box[2, 0] == box[2, 2]  # the empty panel's box is empty
    # The Rasterizer's own: the same frame, the same boxes, frame after frame.
    again = np.full((50, 100), 7, np.uint8)
    for _ in range(2):
        r.shade_into(xy, shader.table, again)
        np.testing.assert_array_equal(again, whole)
        np.testing.assert_array_equal(r.touched, touched)


@pytest.mark.parametrize("transposed", [False, True])
def test_half_to_float_is_exact_for_every_bit_pattern(transposed):
    bits = np.arange(65536, dtype=np.uint16).reshape(512, 128)  # normals, subnormals, ±0, ±Inf, NaNs
    src = bits.T if transposed else bits  # strided input, as a column read makes
    out = np.empty(src.shape, np.float32)
    RK.half_to_float_kernel(src, out)
    ref = RK.half_to_float_numpy(src)
    nan = np.isnan(ref)
    assert nan.sum() == 2 * 1023 and np.isnan(out[nan]).all()
    np.testing.assert_array_equal(out.view(np.uint32)[~nan], ref.view(np.uint32)[~nan])


@pytest.mark.parametrize("axis", [0, 1])
def test_widen_kernel_gives_half_to_float_bits_for_every_pattern(axis):
    # The widen kernel converts fp16 in place of a table look-up: the same bits as
    # half_to_float_kernel for all 65,536 patterns (NaN payloads too), drawn as rows or columns.
    bits = np.arange(65536, dtype=np.uint16).reshape(512, 128)
    ref = np.empty(bits.shape, np.float32)
    RK.half_to_float_kernel(bits, ref)
    src = bits if axis == 0 else np.ascontiguousarray(bits.T)
    out = np.empty(bits.shape, np.float32)
    RK.widen_bits_kernel(src, np.arange(512, dtype=np.int64), axis, True, out)
    np.testing.assert_array_equal(out.view(np.uint32), ref.view(np.uint32))


@pytest.mark.parametrize("kind", ["F16", "BF16", "F32", "F64"])
@pytest.mark.parametrize("axis", [0, 1])
def test_widen_kernels_gather_widen_and_transpose_like_numpy(kind, axis):
    # Drawn rows, or drawn columns of a tensor read whole (blocks of 8 source rows: 53 rows
    # end in a part block), as float32 rows: against numpy's fancy index + conversion.
    rng = np.random.default_rng(3)
    w = rng.standard_normal((53, 37)) * 10.0 ** rng.integers(-9, 9, (53, 37))
    w[0, :6] = w[:6, 0] = [np.inf, -np.inf, np.nan, -0.0, 1e-7, -3e-8]  # fp16 subnormals too
    if kind == "F16":
        with np.errstate(over="ignore"):  # values past fp16's range become ±Inf, as stored
            src, view = w.astype(np.float16).view(np.uint16), "bits"
    elif kind == "BF16":
        src, view = (w.astype(np.float32).view(np.uint32) >> 16).astype(np.uint16), "bits"
    else:
        src, view = w.astype(np.float32 if kind == "F32" else np.float64), "float"
    index = np.sort(rng.choice(src.shape[axis], 19, replace=False)).astype(np.int64)
    index[0] = 0  # the row or column holding the special values
    ref = RK.widen_numpy(src, index, axis, kind)
    nan = np.isnan(ref)
    # Contiguous, and a view with gaps between values (the kernels' other loops).
    for stored in (src, np.repeat(src, 2, axis=1)[:, ::2]):
        out = np.full((19, src.shape[1 - axis]), 7.0, np.float32)
        if view == "bits":
            RK.widen_bits_kernel(stored, index, axis, kind == "F16", out)
        else:
            RK.widen_float_kernel(stored, index, axis, out)
        assert out.shape == ref.shape and np.isnan(out[0]).sum() == np.isnan(ref[0]).sum() == 1
        assert np.isnan(out[nan]).all()
        np.testing.assert_array_equal(out.view(np.uint32)[~nan], ref.view(np.uint32)[~nan])


@pytest.mark.parametrize("passes", [0, 1, 4])
def test_tracked_pca_kernel_matches_numpy(passes):
    rng = np.random.default_rng(passes)
    n, d, p = 500, 96, 8
    X = (rng.normal(size=(n, d)) * np.r_[6.0, 3.0, 0.9 ** np.arange(d - 2)] + 2.0).astype(np.float32)
    start = np.ascontiguousarray(np.linalg.qr(rng.normal(size=(d, p)))[0].T, dtype=np.float32)
    scores, basis, ritz = np.empty((n, 2), np.float32), np.empty((p, d), np.float32), np.empty(p + 2)
    K.tracked_pca_kernel(X, start, passes, scores, basis, ritz)
    ref_scores, ref_basis, ref_ritz = K.tracked_pca_numpy(X, start, passes)
    # Ritz values, the start block's top-two variance and the total variance.
    np.testing.assert_allclose(ritz, ref_ritz, rtol=2e-4)
    Xc = X.astype(np.float64) - X.mean(axis=0, dtype=np.float64)
    w = np.linalg.eigvalsh(start.astype(np.float64) @ Xc.T @ Xc @ start.T.astype(np.float64))
    np.testing.assert_allclose(ritz[p], w[-2:].sum(), rtol=2e-4)
    np.testing.assert_allclose(ritz[p + 1], (Xc ** 2).sum(), rtol=1e-5)
    for c in range(2):  # the same axes up to sign
        sign = np.sign(scores[:, c] @ ref_scores[:, c])
        np.testing.assert_allclose(scores[:, c] * sign, ref_scores[:, c], atol=2e-5 * np.abs(ref_scores).max())
        np.testing.assert_allclose(np.abs(basis[c] @ ref_basis[c]), 1.0, atol=1e-5)
    np.testing.assert_allclose(basis @ basis.T, np.eye(p), atol=1e-5)
    assert abs(scores.mean(axis=0)).max() < 1e-4 * np.abs(scores).max()  # centred


def test_block_lanczos_kernel_matches_numpy():
    # The check of a tracked plane: centring, products with the covariance (float64 and
    # float32 sums) and Lanczos off a block, continued in two calls as the stages do.
    rng = np.random.default_rng(4)
    n, d, p, steps = 400, 90, 8, 12
    X = (rng.normal(size=(n, d)) * 0.95 ** np.arange(d) + 3.0).astype(np.float32)
    V = np.linalg.qr(rng.normal(size=(d, p)))[0].T.copy()
    start = rng.normal(size=d)
    alpha_ref, beta_ref, CV_ref = PK.block_lanczos_numpy(X, V, start, steps)
    Xc = np.empty_like(X)
    PK.centre_kernel(X, Xc)
    np.testing.assert_allclose(Xc, X - X.mean(axis=0, dtype=np.float64), atol=1e-5)
    CV = np.empty((p, d))
    PK.covariance_apply(Xc, V, CV)
    np.testing.assert_allclose(CV, CV_ref, rtol=1e-5, atol=1e-5 * np.abs(CV_ref).max())
    L, alpha, beta = np.zeros((steps + 1, d)), np.zeros(steps), np.zeros(steps)
    q = start - V.T @ (V @ start)
    L[0] = q / np.linalg.norm(q)
    assert PK.block_lanczos_kernel(Xc, V, L, alpha, beta, 0, 5) == 5
    assert PK.block_lanczos_kernel(Xc, V, L, alpha, beta, 5, steps) == steps
    np.testing.assert_allclose(alpha, alpha_ref, rtol=1e-5)
    np.testing.assert_allclose(beta, beta_ref, rtol=1e-5)
    np.testing.assert_allclose(L @ L.T, np.eye(steps + 1), atol=1e-9)  # fully reorthogonalised
    assert np.abs(L @ V.T).max() < 1e-9  # and off the block


def test_block_lanczos_kernel_finds_the_largest_variance_off_the_block():
    # Rank 3 off a random plane: a few steps give its top eigenvalue (numpy, exact); an
    # all-zero layer stops at the first step, the space being invariant.
    rng = np.random.default_rng(5)
    n, d = 300, 70
    X = (rng.normal(size=(n, 3)) @ rng.normal(size=(3, d))).astype(np.float32)
    V = np.linalg.qr(rng.normal(size=(d, 2)))[0].T.copy()
    Xc64 = X.astype(np.float64) - X.mean(axis=0, dtype=np.float64)
    P = np.eye(d) - V.T @ V
    want = np.linalg.eigvalsh(P @ Xc64.T @ Xc64 @ P)[-1]
    for X, steps, top in ((X, 6, want), (np.zeros((n, d), np.float32), 1, 0.0)):
        Xc = np.empty_like(X)
        PK.centre_kernel(X, Xc)
        L, alpha, beta = np.zeros((7, d)), np.zeros(6), np.zeros(6)
        q = rng.normal(size=d)
        q -= V.T @ (V @ q)
        L[0] = q / np.linalg.norm(q)
        done = PK.block_lanczos_kernel(Xc, V, L, alpha, beta, 0, 6)
        assert done == steps
        T = np.diag(alpha[:done]) + np.diag(beta[:done - 1], 1) + np.diag(beta[:done - 1], -1)
        assert abs(np.linalg.eigvalsh(T)[-1] - top) <= 1e-5 * want


def test_tracked_pca_kernel_keeps_full_rank_on_degenerate_layers():
    # An all-zero layer (zero-initialised weights) and a rank-1 one: the block must stay
    # orthonormal so that later keyframes, once the weights move, can still find their axes.
    n, d, p = 200, 80, 8
    for X in (np.zeros((n, d), np.float32),
              np.outer(np.arange(n), np.ones(d)).astype(np.float32)):
        start = np.ascontiguousarray(np.eye(p, d), dtype=np.float32)
        scores, basis, ritz = np.empty((n, 2), np.float32), np.empty((p, d), np.float32), np.empty(p + 2)
        K.tracked_pca_kernel(X, start, 3, scores, basis, ritz)
        assert np.isfinite(scores).all()
        np.testing.assert_allclose(basis @ basis.T, np.eye(p), atol=1e-5)


@pytest.mark.parametrize("reflect", [False, True])
def test_align_kernel_matches_the_svd_procrustes(reflect):
    from layerfilm.project import align

    rng = np.random.default_rng(11)
    for _ in range(20):
        B = (rng.normal(size=(300, 2)) * [3, 1]).astype(np.float32)
        theta = rng.uniform(0, 2 * np.pi)
        R = np.array([[np.cos(theta), -np.sin(theta)], [np.sin(theta), np.cos(theta)]])
        if reflect:
            R = R @ np.diag([1.0, -1.0])
        A = (B @ R.T + 0.3 * rng.normal(size=B.shape) + [2.0, -1.0]).astype(np.float32)
        out = np.empty_like(A)
        K.align_kernel(A, B, out)
        np.testing.assert_allclose(out, align(A, B), atol=1e-4 * np.abs(B).max())
    out = np.empty_like(A)
    K.align_kernel(A, A[:0], out)  # no previous keyframe: centring only
    np.testing.assert_allclose(out, A - A.mean(axis=0), atol=1e-5)


@pytest.mark.parametrize("transposed", [False, True])
def test_sq_norms_kernel_equals_numpy_twin(transposed):
    rng = np.random.default_rng(4)
    W = rng.normal(size=(37, 23)).astype(np.float32)
    prev = (W + 0.1 * rng.normal(size=W.shape)).astype(np.float32)
    if transposed:  # a column view, as read for --points cols
        W, prev = np.asfortranarray(W).T.T, prev
    out = np.empty(2)
    K.sq_norms_kernel(W, prev, out)
    np.testing.assert_allclose(out, K.sq_norms_numpy(W, prev), rtol=1e-12)
    np.testing.assert_allclose(out[1], np.linalg.norm(W.astype(np.float64) - prev) ** 2, rtol=1e-12)
    K.sq_norms_kernel(W, np.zeros((0, 0), np.float32), out)
    assert out[0] == pytest.approx(K.sq_norms_numpy(W, None)[0], rel=1e-12) and np.isnan(out[1])


@pytest.mark.parametrize("sigma", [0.68, 1.3, 4.0, 20.0])
def test_footprint_table_interpolates_the_gaussian_closely(sigma):
    """Linear interpolation between the table's sub-pixel rows stays within 7e-5 of the
    exact exp(-d^2 / 2 sigma^2) at every tap, for the smallest dots and the largest."""
    T = D.footprint_table(sigma)
    R = (T.shape[1] - 1) // 2
    for t in np.linspace(0, 1, 997, endpoint=False):
        s = t * D.PHASES
        p = min(int(s), D.PHASES - 1)
        got = T[p] + (s - p) * (T[p + 1] - T[p])
        d = np.arange(2 * R + 1) - R + 0.5 - t
        np.testing.assert_allclose(got, np.exp(-d * d / (2 * sigma * sigma)), rtol=0, atol=7e-5)


def test_curve_extremes_kernel_equals_numpy_twin(track):
    P, times = track
    P = P.copy()
    P[2, 3] = np.nan
    P[:, 5] = P[0, 5]  # a point that never moves: a constant cubic
    out = np.empty((len(times) - 1,) + P.shape[1:])
    D.curve_extremes_kernel(P, times, 0, len(times) - 1, out)
    want = D.curve_extremes_numpy(P, times)
    np.testing.assert_allclose(out, want, rtol=1e-12, equal_nan=True)
    assert np.isnan(out[1:3, 3]).all() and np.isfinite(out[:, 4]).all()


def test_curve_extremes_kernel_skips_only_curves_inside_their_ends():
    # Random walks: most segments stay within their ends' reach (the solve is skipped), some
    # overshoot between keyframes (the exact extreme beyond both ends is found).
    rng = np.random.default_rng(11)
    P = (np.cumsum(rng.normal(size=(40, 300, 2)), axis=0) + rng.normal(size=(1, 300, 2)) * 3).astype(np.float32)
    times = np.cumsum(rng.uniform(1, 6, 40))
    out = np.empty((39, 300, 2))
    D.curve_extremes_kernel(P, times, 0, 39, out)
    want = D.curve_extremes_numpy(P, times)
    np.testing.assert_allclose(out, want, rtol=1e-12)
    ends = np.maximum(np.abs(P[:-1]), np.abs(P[1:]))
    beyond = want > ends * (1 + 1e-6)
    assert 0.05 < beyond.mean() < 0.95  # both kinds of segment are there


def test_top2_at_most_decides_as_numpys_cholesky():
    # The certificate calls LAPACK's Cholesky directly: its verdict is np.linalg.cholesky's,
    # also for bounds a hair either side of the top eigenvalues.
    rng = np.random.default_rng(5)
    X = rng.standard_normal((300, 40)).astype(np.float32) * np.linspace(3, 0.1, 40, dtype=np.float32)
    C = X.T @ X
    w, V = np.linalg.eigh(C.astype(np.float64))
    q = V[:, -1].astype(np.float32)

    def definite(A):
        try:
            np.linalg.cholesky(A)
        except np.linalg.LinAlgError:
            return False
        return True

    q64, verdicts = q.astype(np.float64), set()
    for g1, g2 in rng.uniform(0.999, 1.001, (200, 2)):
        b1, b2 = w[-1] * g1, w[-2] * g2
        A1 = -C.astype(np.float64) + b1 * np.eye(40)
        A2 = w[-1] * q64[:, None] * q64[None, :] - C.astype(np.float64) + b2 * np.eye(40)
        expect = definite(A1) and definite(A2)
        assert PK.top2_at_most(C, q, w[-1], b1, b2) == expect
        verdicts.add(expect)
    assert verdicts == {True, False}


def test_trace_kernel_is_numpys_float64_trace_bit_for_bit():
    # The covariance's total variance feeds the tracked planes' shares (and so the films):
    # the kernel must add the diagonal as numpy does -- pairwise, in buffers of 8,192 --
    # at every size, including the unrolled block's edges and past one buffer.
    rng = np.random.default_rng(8)
    sizes = list(range(1, 140)) + [255, 256, 257, 1000, 8191, 8192, 8193, 9000]
    for m in sizes:
        if m <= 1000:
            M = rng.normal(size=(m, m)).astype(np.float32) * np.float32(10.0 ** rng.uniform(-3, 3))
        else:  # only the diagonal matters: a diagonal matrix of spread magnitudes
            M = np.diag((rng.normal(size=m) * 10.0 ** rng.uniform(-4, 4, size=m)).astype(np.float32))
        want = np.trace(M, dtype=np.float64)
        got = PK.trace_kernel(M)
        assert np.float64(got).tobytes() == want.tobytes(), m
    assert PK.trace_kernel(np.zeros((0, 0), np.float32)) == 0.0


def test_all_finite_is_isfinite_all():
    rng = np.random.default_rng(9)
    X = rng.normal(size=(300, 70)).astype(np.float32)
    assert K.all_finite(X) and K.all_finite(X.astype(np.float64)) and K.all_finite(X[:0])
    for bad in (np.nan, np.inf, -np.inf):
        for i, j in ((0, 0), (299, 69), (150, 33)):
            for Y in (X.copy(), X.astype(np.float64)):
                Y[i, j] = bad
                assert not K.all_finite(Y)
                assert not K.all_finite(Y[:, ::-1])  # strided too
    big = np.full((2, 3), np.finfo(np.float32).max, np.float32)
    assert K.all_finite(big) == bool(np.isfinite(big).all())
